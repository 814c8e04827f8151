"""``mirror-py doctor``: checks what a session needs before the user runs one, and says what to fix."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mirror_py_agent.bootstrap import MIN_PYTHON

from ..errors import MirrorError
from .api import KubeContext, explain

# What a session in each agent mode asks of the API server, as (verb, resource, subresource): the same as the
# Roles in k8s/ (tests/e2e/test_rbac.py records the calls), minus what only reading other workload kinds needs.
_EXEC = [("get", "pods", ""), ("list", "pods", ""), ("get", "pods", "exec"), ("create", "pods", "exec")]
# Permissions a session can do without, and what it does then: the exec websocket is a GET, but with create
# alone exec falls back to SPDY/3.1 as kubectl does (docs/agent-modes.md, "Exec over SPDY/3.1").
OPTIONAL = {("get", "pods", "exec"): "without get on pods/exec, exec goes over SPDY/3.1 instead of the websocket"}
MODE_PERMISSIONS = {
    "exec": _EXEC,
    "ephemeral": [*_EXEC, ("patch", "pods", "ephemeralcontainers")],
    "job": [*_EXEC, ("create", "jobs", ""), ("delete", "jobs", "")],
}
_GROUPS = {"jobs": "batch"}


@dataclass
class Check:
    ok: bool
    what: str
    fix: str = ""


def can_i(kube: KubeContext, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    attributes = {"namespace": namespace, "verb": verb, "resource": resource, "group": _GROUPS.get(resource, "")}
    if subresource:
        attributes["subresource"] = subresource
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attributes}}
    result = kube.request_json("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    return bool((result.get("status") or {}).get("allowed"))


def run_checks(kube: KubeContext, namespace: str, target: str | None, python: str) -> list[Check]:
    checks: list[Check] = []
    try:
        version = kube.get_json("/version")
    except Exception as exc:
        return [Check(False, f"API server {kube.configuration.host}", str(explain(exc, "reaching it")))]
    checks.append(Check(True, f"API server {kube.configuration.host} (context {kube.context}) answers: "
                              f"Kubernetes {version.get('gitVersion')}"))
    minor = int("".join(ch for ch in str(version.get("minor") or "0") if ch.isdigit()) or 0)
    major = int(version.get("major") or 1)
    ephemeral = (major, minor) >= (1, 25)
    checks.append(Check(ephemeral, "ephemeral containers supported (Kubernetes 1.25 or later)",
                        "" if ephemeral else "use --agent-mode exec or job on this cluster"))
    for mode, perms in MODE_PERMISSIONS.items():
        try:
            denied = [perm for perm in perms if not can_i(kube, namespace, *perm)]
        except Exception as exc:
            checks.append(Check(False, f"RBAC for agent mode {mode}", str(explain(exc, "asking the API server"))))
            continue
        missing = [f"{verb} {res}{'/' + sub if sub else ''}" for verb, res, sub in denied if (verb, res, sub)
                   not in OPTIONAL]
        fix = (f"grant {', '.join(missing)} in namespace {namespace} (k8s/rbac-{mode}.yaml)" if missing else "")
        notes = "".join(f" ({OPTIONAL[perm]})" for perm in denied if perm in OPTIONAL)
        checks.append(Check(not missing, f"RBAC for agent mode {mode} in namespace {namespace}{notes}", fix))
    if target:
        checks.append(_check_target(kube, namespace, target, python))
    return checks


def _check_target(kube: KubeContext, namespace: str, target: str, python: str) -> Check:
    from ..transport.k8s_exec import ExecChannel
    from . import targets

    try:
        resolved = targets.resolve(kube, targets.parse(target), namespace)
    except MirrorError as exc:
        return Check(False, f"target {target}", str(exc))
    channel = ExecChannel(kube.configuration, resolved.namespace, resolved.pod, resolved.container,
                          [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                          resolved.describe(), python)
    try:
        code, out, reason = asyncio.run(_run(channel))
    except MirrorError as exc:
        return Check(False, f"target {target}: {resolved.describe()}", str(exc))
    return python_check(f"target {target}: {resolved.describe()}", python, code, out, reason)


#: Seconds the version probe may take: a python that waits for input, or an exec that never ends, is an answer.
PROBE_TIMEOUT = 30.0
_OTHER_PYTHON = "use --agent-mode ephemeral (it brings its own python) or point --agent-python at another interpreter"


def python_check(where: str, python: str, code: int | None, out: str, reason: str | None) -> Check:
    """The verdict on the target's interpreter from its answer to the version probe: present, and at least the
    Python the agent needs (an older one would make every session fail at start-up)."""
    version = out.strip()
    if code != 0 or not version:
        return Check(False, f"{where} has no usable {python}",
                     f"exit code {code}{': ' + reason if reason else ''}; {_OTHER_PYTHON}")
    try:
        found = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return Check(False, f"{where}: {python} answered {version!r}, not a Python version", _OTHER_PYTHON)
    if found < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check(False, f"{where} has {python} {version}, older than the agent's Python {need}",
                     _OTHER_PYTHON)
    return Check(True, f"{where} has {python} {version}")


async def _run(channel: object) -> tuple[int | None, str, str | None]:
    out = bytearray()
    done: asyncio.Future = asyncio.get_running_loop().create_future()

    class Listener:
        def on_bytes(self, data: bytes) -> None:
            out.extend(data)

        def on_stderr(self, data: bytes) -> None:
            pass

        def on_pause(self) -> None:
            pass

        def on_resume(self) -> None:
            pass

        def on_closed(self, exit_code: int | None, reason: str | None) -> None:
            if not done.done():
                done.set_result((exit_code, reason))

    await channel.open(Listener())  # type: ignore[attr-defined]
    # stdin stays open: the probe never reads it, and on a v4 stream (no half-close) closing it would end the
    # whole stream before python has printed. The container's process ending closes the stream.
    try:
        code, reason = await asyncio.wait_for(done, PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        channel.kill()  # type: ignore[attr-defined]
        return None, out.decode("utf-8", "replace"), f"no answer within {PROBE_TIMEOUT:g} s"
    return code, out.decode("utf-8", "replace"), reason
