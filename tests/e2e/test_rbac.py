"""The Roles in k8s/ against what mirror-py really asks of the API server, both ways.

A Role that grants too little breaks a session halfway; one that grants too much is a permission nobody can
justify to a cluster admin. So for each agent mode (and a session without a target) a sandbox user holds
exactly the rules of ``k8s/rbac-<mode>.yaml`` in ``staging`` (the targetless Role in its own ``mirror-py``
namespace only), runs every kind of target, a typo'd name of
every kind (the suggestion path lists) and ``mirror-py ls``, and the API calls the sandbox recorded for that
user must be (a) enough for all of it to work, (b) each allowed by a rule of the Role and (c) together use every
verb and resource the Role grants. The agent's requested privileges per mode are checked against
docs/agent-modes.md too, so the docs cannot promise less than the pods ask for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.sandbox.cluster import ApiCall, Cluster, rule_allows

from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE

MODES = ("exec", "ephemeral", "job", "targetless")
NAMESPACE = "staging"
AGENT_NAMESPACE = "mirror-py"  # where targetless sessions put their pod, and the only place their Role is bound
ROLE_NAMESPACES = {**{mode: NAMESPACE for mode in MODES}, "targetless": AGENT_NAMESPACE}

# Every kind of target the CLI takes, beyond the Deployment, ReplicaSet, Service and Pods of the example.
EXTRA_WORKLOADS = """
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: staging}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - {name: db, image: python:3.12-slim, command: [sleep, infinity]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: staging}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      containers:
        - {name: agent, image: python:3.12-slim, command: [sleep, infinity]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: staging}
spec:
  template:
    metadata: {labels: {app: migrate}}
    spec:
      restartPolicy: Never
      containers:
        - {name: migrate, image: python:3.12-slim, command: [sleep, infinity]}
---
# An image without python3: `--agent-mode auto` falls back to an ephemeral container, which the ephemeral
# Role must cover (it is the Role for auto).
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: staging
  annotations: {sandbox.mirror-py/no-python: "true"}
spec:
  containers:
    - {name: legacy, image: debian:12, command: [sleep, infinity]}
---
apiVersion: v1
kind: Namespace
metadata: {name: mirror-py}
""" + "".join(f"""---
# A target whose spec declares its user {how}: what the ephemeral agent needs to read its environment and files
# depends on it (docs/agent-modes.md, "Capabilities of the ephemeral agent").
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: staging}}
spec:
  securityContext: {pod_security}
  containers:
    - name: app
      image: python:3.12-slim
      command: [sleep, infinity]
      securityContext: {container_security}
      env: [{{name: GREETING, value: hello-{name}}}]
""" for name, how, pod_security, container_security in (
    ("same-user", "for the pod (non-root, user and group)", "{runAsUser: 1000, runAsGroup: 1000}", "{}"),
    ("root-user", "for the container (root, user and group)", "{}", "{runAsUser: 0, runAsGroup: 0}"),
    # a user without a group, on the container: an ephemeral container does not inherit it
    ("other-user", "only in part", "{}", "{runAsUser: 1000}"),
))
# How each pod above declares its user, in the words of the docs' table (every other target declares nothing).
DECLARED = {"same-user": "declared non-root", "root-user": "declared root", "other-user": "undeclared"}
MANIFEST = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text() + EXTRA_WORKLOADS
APP = "import socket; print(socket.gethostname())"
# The target's environment and one of its files (read through /proc/PID/root, which another user's process
# opens only to the same user or to CAP_SYS_PTRACE).
APP_ENV = ("import os, socket; print(socket.gethostname(), os.environ.get('GREETING'), "
           "open('/etc/hostname').read().strip())")


def role_rules(mode: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / f"rbac-{mode}.yaml").read_text()) if d]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == 1, f"k8s/rbac-{mode}.yaml must hold exactly one Role"
    return roles[0]["rules"]


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    """The Role as (API group, resource, verb) triples; wildcards would make "exactly" meaningless."""
    out = set()
    for rule in rules:
        for part in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[part], f"a least-privilege Role has no wildcards: {rule}"
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def call_verbs(call: ApiCall) -> list[str]:
    """The verbs a call is authorized on. The exec websocket is a GET, which needs get and, since Kubernetes
    1.35, create as well (the sandbox checks both, as the API server does)."""
    if call.resource == "pods/exec" and call.method == "GET":
        return ["get", "create"]
    return [call.verb]


def allowed(call: ApiCall, rules: list[dict], namespace: str) -> bool:
    if not call.resource:  # discovery and /version: every authenticated user may (system:discovery)
        return call.path.startswith(("/api", "/apis", "/version"))
    if call.api_group == "authorization.k8s.io" and call.resource == "selfsubjectaccessreviews":
        return True  # system:basic-user, bound to every authenticated user
    return call.namespace == namespace and all(
        any(rule_allows(rule, verb, call.api_group, call.resource, call.name) for rule in rules)
        for verb in call_verbs(call)
    )


@dataclass
class Run:
    what: str
    argv: list[str]
    out: subprocess.CompletedProcess
    expect_pod: str | None = None  # the pod the app must find itself in; None: an error or ls is expected


@dataclass
class ModeRuns:
    mode: str
    user: str
    kubeconfig: str = ""
    runs: list[Run] = field(default_factory=list)
    calls: list[ApiCall] = field(default_factory=list)


def _kubeconfig_for(cluster: Cluster, user: str, token: str, path: Path) -> str:
    """The cluster's kubeconfig with one more user and context, made current: what an admin hands out."""
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"].append({"name": user, "user": {"token": token}})
    config["contexts"].append({"name": user, "context": {"cluster": "sandbox", "user": user,
                                                         "namespace": NAMESPACE}})
    config["current-context"] = user
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


def _mirror(kubeconfig: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig)
    return subprocess.run([*MIRROR_PY, *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(ROOT))


def _scenarios(cluster: Cluster, mode: str) -> list[tuple[str, list[str], str | None]]:
    if mode == "targetless":
        return [("no target", ["exec", "--agent-namespace", AGENT_NAMESPACE, "--", sys.executable, "-c", APP],
                 "mirror-py-")]
    api_pod = cluster.pod_names(NAMESPACE, "api-")[0]
    replica_set = api_pod.rsplit("-", 1)[0]
    pods = {"deploy/api": api_pod, "svc/api": api_pod, f"rs/{replica_set}": api_pod, f"pod/{api_pod}": api_pod,
            "sts/db": "db-0", "ds/node-agent": cluster.pod_names(NAMESPACE, "node-agent-")[0],
            "job/migrate": cluster.pod_names(NAMESPACE, "migrate-")[0]}
    out: list[tuple[str, list[str], str | None]] = [
        (target, ["exec", "--agent-mode", mode, "--target", target, "--", sys.executable, "-c", APP], pod)
        for target, pod in pods.items()
    ]
    if mode == "job":
        # The quota the fixture puts in staging requires limits.cpu: with agent.cpu_limit empty the Job's pod is
        # refused, and the Role must be enough to read why (the Job's FailedCreate events).
        config = cluster.workdir / "no-cpu-limit.toml"
        config.write_text('[agent]\ncpu_limit = ""\n')
        out.append(("refused by a quota", ["exec", "--config", str(config), "--agent-mode", mode, "--target",
                                           "deploy/api", "--", sys.executable, "-c", APP], None))
    if mode == "ephemeral":
        out.append(("auto without python3", ["exec", "--target", "pod/legacy", "--", sys.executable, "-c", APP],
                    "legacy"))
        # Sessions that land on other rows of the capability table: each must work with exactly the row's rights.
        for incoming, pod, more in (("off", "same-user", []), ("off", "root-user", []), ("off", "other-user", []),
                                    ("mirror", "root-user", []), ("steal", "other-user", []),
                                    ("off", api_pod, ["--no-env", "--fs-mode", "local"]),
                                    ("steal", "root-user", ["--no-env", "--fs-mode", "local"])):
            out.append((" ".join(["capabilities:", incoming, pod, *more]),
                        ["exec", "--agent-mode", mode, "--incoming", incoming, *more,
                         *(["--agent-image", STEAL_IMAGE] if incoming == "steal" else []), "--target", f"pod/{pod}",
                         "--", sys.executable, "-c", APP_ENV], pod))
    typos = ["svc/apii", f"rs/{replica_set}x"]  # the kinds `mirror-py ls` does not list
    if mode == "exec":  # the suggestion path is the same in every mode: every kind once is enough
        typos += ["deploy/apii", f"pod/{api_pod}x", "sts/dbb", "ds/node-agnt", "job/migrat"]
    for typo in typos:
        out.append((f"typo {typo}", ["exec", "--agent-mode", mode, "--target", typo, "--", sys.executable, "-c",
                                     APP], None))
    out.append(("ls", ["ls"], None))
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Cluster, dict[str, ModeRuns]]:
    """Every scenario of every mode, each mode as its own user, all side by side (sessions share nothing but
    the cluster, and the calls are told apart by user)."""
    if os.geteuid() != 0:
        pytest.fail("the sandbox cluster builds namespaces and must run as root")
    tmp = tmp_path_factory.mktemp("rbac")
    with Cluster.start(MANIFEST) as cluster:
        # Added once the targets run: it refuses only new pods that declare no CPU limit (see _scenarios).
        cluster.store.put({"apiVersion": "v1", "kind": "ResourceQuota",
                           "metadata": {"name": "cpu-limits", "namespace": NAMESPACE},
                           "spec": {"hard": {"limits.cpu": "100"}}})
        users = {}
        for mode in MODES:
            user = f"rbac-{mode}"
            token = cluster.add_user(user, role_rules(mode), [ROLE_NAMESPACES[mode]])
            users[mode] = ModeRuns(mode, user, _kubeconfig_for(cluster, user, token, tmp / f"{mode}.kubeconfig"))

        jobs = [(mode, *scenario) for mode in MODES for scenario in _scenarios(cluster, mode)]

        def run(job: tuple) -> None:
            mode, what, argv, pod = job
            users[mode].runs.append(Run(what, argv, _mirror(users[mode].kubeconfig, *argv), pod))

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(run, jobs))
        calls = cluster.calls
        for found in users.values():
            found.calls = [c for c in calls if c.user == found.user]
        yield cluster, users


@pytest.mark.parametrize("mode", MODES)
def test_the_role_alone_is_enough(recorded, mode):
    """(a): every target kind works in this mode with only the Role, typos list the names to suggest, and
    ls works (the targetless Role is only for sessions without a target)."""
    _cluster, users = recorded
    for run in users[mode].runs:
        detail = f"{mode}, {run.what}: exit {run.out.returncode}\n{run.out.stderr}"
        if run.what == "refused by a quota":
            assert run.out.returncode != 0, detail
            assert "ResourceQuota cpu-limits of namespace staging" in run.out.stderr, detail
            assert "agent.cpu_limit" in run.out.stderr, detail
        elif run.what.startswith("typo"):
            assert run.out.returncode != 0, detail
            assert "did you mean" in run.out.stderr and "forbidden" not in run.out.stderr, detail
        elif run.what == "ls":
            assert run.out.returncode == 0, detail
            assert "deployment/api" in run.out.stdout and "statefulset/db" in run.out.stdout, run.out.stdout
        else:
            assert run.out.returncode == 0, detail
            assert run.out.stdout.strip().startswith(run.expect_pod), detail + run.out.stdout


@pytest.mark.parametrize("mode", MODES)
def test_every_call_is_allowed_by_the_role(recorded, mode):
    """(b): nothing mirror-py asked for falls outside the Role, and nothing was refused."""
    _cluster, users = recorded
    calls = users[mode].calls
    assert calls, "no API calls recorded for the user"
    rules = role_rules(mode)
    outside = [f"{c.method} {c.path} ({', '.join(call_verbs(c))} {c.api_group or 'core'}/{c.resource}) -> {c.code}"
               for c in calls if not allowed(c, rules, ROLE_NAMESPACES[mode]) or c.code in (401, 403)]
    assert not outside, f"k8s/rbac-{mode}.yaml lacks what mirror-py used:\n" + "\n".join(outside)


@pytest.mark.parametrize("mode", MODES)
def test_every_rule_of_the_role_is_used(recorded, mode):
    """(c): each verb and resource the Role grants was used by some call, so none can be dropped."""
    _cluster, users = recorded
    used = {(c.api_group, c.resource, verb) for c in users[mode].calls for verb in call_verbs(c)}
    unused = sorted(granted(role_rules(mode)) - used)
    assert not unused, f"k8s/rbac-{mode}.yaml grants what no session used: {unused}"


def _docs_row(mode: str) -> str:
    text = (ROOT / "docs" / "agent-modes.md").read_text()
    label = "no `--target`" if mode == "targetless" else f"`{mode}`"
    rows = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"docs/agent-modes.md has no table row for {label}"
    return rows[0]


def _created(cluster: Cluster, resource: str, prefix: str) -> list[dict]:
    return [e.obj for e in cluster.store.history
            if e.type == "ADDED" and e.resource == resource and e.obj["metadata"]["name"].startswith(prefix)]


def test_agent_privileges_are_what_the_docs_say(recorded):
    """Exec adds nothing; the job pod is privileged with hostPID on the target's node; the targetless pod is
    unprivileged and carries no service-account token."""
    cluster, users = recorded
    writes = [c for c in users["exec"].calls if c.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert not writes, "exec mode must change nothing in the cluster"
    assert "no privileges, nothing added" in _docs_row("exec")

    assert "never privileged" in _docs_row("ephemeral")
    jobs = _created(cluster, "jobs", "mirror-py-")
    assert jobs, "no agent job was created"
    for job in jobs:
        spec = job["spec"]["template"]["spec"]
        assert spec["hostPID"] is True and spec["nodeName"]
        assert spec["automountServiceAccountToken"] is False
        assert [c["securityContext"] for c in spec["containers"]] == [{"privileged": True}]
        assert not spec.get("hostNetwork")
    assert "privileged pod with hostPID" in _docs_row("job")

    pods = [p for p in _created(cluster, "pods", "mirror-py-") if "job-name" not in p["metadata"].get("labels", {})]
    assert pods, "no targetless agent pod was created"
    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("hostPID") and not spec.get("hostNetwork")
        assert [c["securityContext"] for c in spec["containers"]] == [{"allowPrivilegeEscalation": False}]
    row = _docs_row("targetless")
    assert "unprivileged pod" in row and "without a service-account token" in row


CAPABILITY_NAMES = re.compile(r"\b(?:NET_[A-Z]+|SYS_[A-Z]+|CAP_[A-Z_]+)\b")
SAME_USER = "the target's user and group"


def capability_table() -> dict[tuple[str, str], tuple[set[str], bool]]:
    """docs/agent-modes.md's table of the ephemeral agent's rights: (incoming, the target's user) -> (capabilities
    added, whether the agent runs as the target's user and group)."""
    text = (ROOT / "docs" / "agent-modes.md").read_text()
    section = text.split("## Capabilities of the ephemeral agent", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["incoming", "the target's user", "capabilities added", "the agent runs as"], header
    table = {}
    for line in lines[2:]:
        incoming, user, caps, runs_as = (cell.strip() for cell in line.strip("|").split("|"))
        key = (incoming.strip("`"), user)
        assert key not in table, f"two rows for {key}"
        assert runs_as in (SAME_USER, "the image's user"), runs_as
        table[key] = (set(CAPABILITY_NAMES.findall(caps)), runs_as == SAME_USER)
    return table


def _argument(argv: list[str], flag: str, default: str) -> str:
    return argv[argv.index(flag) + 1] if flag in argv else default


def test_ephemeral_capabilities_are_the_docs_table(recorded):
    """Each ephemeral agent container the sandbox received (the PATCH, as stored) carries exactly the
    capabilities of its row of the docs' table, runs as the user the row says, and is never privileged; and the
    session worked with just those rights (the sandbox grants no NET_ADMIN or SYS_PTRACE that is not added, and
    runs containers as their declared users, so a row that asks for too little fails it)."""
    cluster, users = recorded
    table = capability_table()
    pods = {p["metadata"]["name"]: p for p in cluster.store.list("pods", NAMESPACE)}
    containers = {c["name"]: (pod, c) for pod in pods.values() for c in pod["spec"].get("ephemeralContainers", [])}
    checked = set()
    for run in users["ephemeral"].runs:
        found = re.search(r"creating ephemeral container (mirror-py-[0-9a-f]+)", run.out.stderr)
        if found is None:
            continue
        assert run.out.returncode == 0, f"{run.what}: {run.out.stderr}"
        pod, container = containers[found.group(1)]
        incoming = _argument(run.argv, "--incoming", "mirror")
        reads = "--no-env" not in run.argv or _argument(run.argv, "--fs-mode", "read") != "local"
        user = DECLARED.get(pod["metadata"]["name"], "undeclared") if reads else "not read"
        caps, same_user = table[(incoming, user)]
        security = container.get("securityContext") or {}
        assert set(security) <= {"capabilities", "runAsUser", "runAsGroup"}, security  # never privileged
        assert set((security.get("capabilities") or {}).get("add") or []) == caps, (run.what, security)
        assert set(security.get("capabilities") or {}) <= {"add"}, security
        declared = {**(pod["spec"].get("securityContext") or {}),
                    **(pod["spec"]["containers"][0].get("securityContext") or {})}
        if same_user:
            assert (security.get("runAsUser"), security.get("runAsGroup")) == (declared["runAsUser"],
                                                                               declared["runAsGroup"]), run.what
        else:
            assert "runAsUser" not in security and "runAsGroup" not in security, (run.what, security)
        if run.what.startswith("capabilities:"):
            words = run.out.stdout.split()
            if reads:
                assert words == [run.expect_pod, f"hello-{run.expect_pod}", run.expect_pod], (run.what, words)
            else:  # the laptop's environment and /etc/hostname
                assert words[:2] == [run.expect_pod, "None"], (run.what, words)
        checked.add((incoming, user))
    # every kind of row the scenarios reach was reached (so a scenario that silently stopped proves nothing)
    assert checked >= {("off", "declared non-root"), ("off", "declared root"), ("off", "undeclared"),
                       ("mirror", "declared root"), ("mirror", "undeclared"), ("steal", "undeclared"),
                       ("off", "not read"), ("steal", "not read")}, checked


@pytest.mark.parametrize("mode", ["exec", "ephemeral", "job"])
def test_doctor_agrees_with_the_role(recorded, mode):
    """`mirror-py doctor` asks the API server (SelfSubjectAccessReview) for what each mode needs: with a mode's
    Role it must report that mode as ready, or it sends users to grant more than the Role."""
    _cluster, users = recorded
    out = _mirror(users[mode].kubeconfig, "doctor")
    lines = [line for line in out.stdout.splitlines() if f"RBAC for agent mode {mode} " in line]
    assert lines and lines[0].startswith("ok "), out.stdout + out.stderr


def test_calls_are_recorded_per_user(recorded):
    """The checks above mean something only if the sandbox attributes calls to the right user."""
    _cluster, users = recorded
    for mode, found in users.items():
        assert {c.user for c in found.calls} == {f"rbac-{mode}"}
