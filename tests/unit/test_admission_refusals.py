"""Agent pods as admission sees them, and refusals read back into one line that names the policy."""

from __future__ import annotations

import pytest

from mirror_py.config import ConfigError, load_config
from mirror_py.kube import admission, placement
from tests.sandbox import admission as sandbox_admission

TOKEN = "mirror-py-0123456789ab"


def _agent_container(pod_spec: dict) -> dict:
    (container,) = pod_spec["containers"]
    return container


@pytest.mark.parametrize("body", [
    placement.job_body(TOKEN, "staging", "node-1", "python3", "python:3.12-slim",
                       placement.agent_resources("50m", "64Mi", "1", "256Mi"))["spec"]["template"],
    placement.targetless_pod(TOKEN, "mirror-py", "python3", "python:3.12-slim",
                             placement.agent_resources("50m", "64Mi", "1", "256Mi")),
], ids=["job", "targetless"])
def test_agent_pods_opt_out_of_every_mesh_and_declare_resources(body):
    annotations = body["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/inject"] == "false"
    assert annotations["linkerd.io/inject"] == "disabled"
    assert annotations["kuma.io/sidecar-injection"] == "disabled"
    assert body["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mirror-py"
    assert _agent_container(body["spec"])["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                                          "limits": {"cpu": "1", "memory": "256Mi"}}


def test_empty_resource_keys_are_left_out():
    assert placement.agent_resources("", "64Mi", None, "") == {"requests": {"memory": "64Mi"}}
    assert placement.agent_resources() == {}
    assert "resources" not in _agent_container(placement.targetless_pod(TOKEN, "ns", "python3", "img")["spec"])


def test_the_defaults_reach_the_pods():
    agent = load_config(overrides={}).agent
    assert placement.agent_resources(agent.cpu_request, agent.memory_request, agent.cpu_limit,
                                     agent.pod_memory_limit()) == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                                                   "limits": {"cpu": "1", "memory": "256Mi"}}


def test_the_default_memory_limit_follows_the_budget():
    assert load_config(overrides={"agent.memory_budget": "1GiB"}).agent.pod_memory_limit() == "1248Mi"
    assert load_config(overrides={"agent.memory_limit": "2Gi"}).agent.pod_memory_limit() == "2Gi"


@pytest.mark.parametrize("key, value, words", [
    ("agent.cpu_limit", "two", "not a Kubernetes quantity"),
    ("agent.memory_request", "64MB", "not a Kubernetes quantity"),
    ("agent.memory_limit", "48Mi", "leaves no room for agent.memory_budget"),
])
def test_bad_resource_values_are_refused_by_name(key, value, words):
    with pytest.raises(ConfigError, match=words):
        load_config(overrides={key: value})


# --- refusals ------------------------------------------------------------------------------------------------

JOB_POD = {"metadata": {"name": "mirror-py-x-abcde", "namespace": "ns"},
           "spec": placement.job_body(TOKEN, "ns", "n", "python3", "img")["spec"]["template"]["spec"]}
EPHEMERAL = {"name": "mirror-py-1", "image": "img", "securityContext": {"capabilities": {"add": ["NET_ADMIN",
                                                                                                "NET_RAW"]}}}


def _ns(level: str) -> dict:
    return {"metadata": {"name": "ns", "labels": {sandbox_admission.ENFORCE: level}}}


def test_the_sandbox_words_pod_security_as_the_api_server_does():
    assert sandbox_admission.pod_security(_ns("baseline"), JOB_POD) == (
        'violates PodSecurity "baseline:latest": host namespaces (hostPID=true), privileged (container "agent" '
        "must not set securityContext.privileged=true)")
    pod = {"metadata": {"name": "t"}, "spec": {"containers": [{"name": "app"}], "ephemeralContainers": [EPHEMERAL]}}
    assert sandbox_admission.pod_security(_ns("baseline"), pod) == (
        'violates PodSecurity "baseline:latest": non-default capabilities (container "mirror-py-1" must not '
        'include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)')
    assert sandbox_admission.pod_security(_ns("restricted"), pod) == (
        'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (containers "app", '
        '"mirror-py-1" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(containers "app", "mirror-py-1" must set securityContext.capabilities.drop=["ALL"]; container '
        '"mirror-py-1" must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add), '
        'runAsNonRoot != true (pod or containers "app", "mirror-py-1" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or containers "app", "mirror-py-1" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")')
    assert sandbox_admission.pod_security(_ns("privileged"), JOB_POD) == ""


def test_the_sandbox_words_a_quota_as_the_api_server_does():
    quota = {"metadata": {"name": "compute"}, "spec": {"hard": {"limits.cpu": "2", "requests.memory": "1Gi",
                                                                "pods": "10"}}}
    assert sandbox_admission.quota([quota], JOB_POD) == (
        "failed quota: compute: must specify limits.cpu for: agent; requests.memory for: agent")
    declared = placement.job_body(TOKEN, "ns", "n", "python3", "img", placement.agent_resources("1m", "1Mi", "1", ""))
    assert sandbox_admission.quota([quota], {"spec": declared["spec"]["template"]["spec"]}) == ""


@pytest.mark.parametrize("message, kind, names", [
    ('pods "x" is forbidden: violates PodSecurity "restricted:v1.30": runAsNonRoot != true (pod must ...)',
     "targetless", ['Pod Security level "restricted" of namespace ns', 'violates PodSecurity "restricted:v1.30"',
                    "set agent.namespace"]),
    ('pods "t" is forbidden: violates PodSecurity "restricted:latest": unrestricted capabilities (...)',
     "ephemeral", ["restricted", "--agent-mode exec"]),
    ("Error creating: pods \"x\" is forbidden: failed quota: q1: must specify limits.cpu for: agent",
     "job", ["ResourceQuota q1 of namespace ns", "agent.cpu_limit"]),
    ('pods "x" is forbidden: exceeded quota: q2, requested: limits.memory=256Mi, used: limits.memory=1Gi, '
     "limited: limits.memory=1Gi", "targetless", ["ResourceQuota q2", "requested: limits.memory=256Mi",
                                                  "agent.memory_limit"]),
    ('admission webhook "validate.kyverno.svc" denied the request: policy disallow-host-pid',
     "job", ["admission webhook validate.kyverno.svc", "disallow-host-pid", "admins"]),
    ("pods \"x\" is forbidden: ValidatingAdmissionPolicy 'mirror-py-agents' with binding 'b' denied request: "
     "no", "ephemeral", ["ValidatingAdmissionPolicy mirror-py-agents"]),
])
def test_a_refusal_names_the_policy_and_what_to_do(message, kind, names):
    line = admission.refused(message, kind, "ns")
    assert line is not None and "\n" not in line
    assert line.startswith(admission.WHAT[kind] + " was refused by the ")
    for words in names:
        assert words in line, line


def test_a_plain_rbac_refusal_is_not_a_policy():
    assert admission.refused('pods "x" is forbidden: User "bob" cannot create resource "pods"', "job", "ns") is None


def test_the_newest_failed_create_event_is_read():
    events = [{"reason": "SuccessfulCreate", "message": "Created pod"},
              {"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:01Z",
               "message": 'Error creating: pods "a" is forbidden: failed quota: old: must specify limits.cpu'},
              {"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:02Z",
               "message": 'Error creating: pods "a" is forbidden: violates PodSecurity "baseline:latest": x'}]
    assert "Pod Security" in admission.job_refusal(events, "ns")
    assert admission.job_refusal(events[:1], "ns") is None
    unknown = [{"reason": "FailedCreate", "message": "Error creating: something else"}]
    assert admission.job_refusal(unknown, "ns").endswith("could not be created: something else")
