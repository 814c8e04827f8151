"""Where the agent runs on Kubernetes, and what is left behind afterwards (nothing).

- exec: ``python3`` of the target container itself runs the agent. No privileges and nothing added to the pod.
- ephemeral: an ephemeral container (its own image, so the target needs no python3) joins the target pod and
  the target container's process namespace; the agent reads the target's environment and files through
  ``/proc/<pid>``.
- job: a privileged pod with hostPID on the target's node, for clusters where ephemeral containers are off. The
  agent enters the target container's network and UTS namespaces only, never its mount namespace (there the
  privileged agent would run the target's code: its NSS modules, its stdlib, its binaries); it reads files and
  the resolver's files through ``/proc/<pid>/root`` and resolves names with its own stub resolver.
- targetless: a fresh unprivileged pod in the namespace, deleted at the end: cluster DNS and outgoing traffic
  without touching any workload.

Ephemeral, job and targetless containers run a small idle program; the agent is exec'd next to it, and the idle
program exits once the agent and its dead-man helper are gone (ephemeral containers cannot be removed, but they
can stop), after removing any steal rules they could not.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mirror_py_agent import bootstrap, sweep

from .. import start_clock
from ..errors import MirrorError
from ..transport.k8s_exec import ExecChannel
from . import admission, pulls
from .api import KubeContext, explain
from .targets import ResolvedTarget, collection, object_path

progress = logging.getLogger("mirror_py.progress")
log = logging.getLogger("mirror_py.session")

# Keeps an agent container alive while a process with the token in its command line runs (the agent, and its
# dead-man helper, forked from it), then removes the steal rules nobody owns in their network namespaces and
# exits; gives up if none ever starts. Arguments: the token, then optionally the poll interval and the give-up
# time in seconds (tests shorten them). The sweep is mirror_py_agent/sweep.py itself, which stands alone.
_IDLE_WATCH = """
import socket
import sys
import time


def beacon(token):
    # An agent says hello here as it starts (mirror_py_agent/server.py, announce), so that one that came and went
    # between two looks at /proc still counts as seen: without it, a short session left this program waiting for
    # an agent until give_up.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(b"\\0mirror-py-idle-" + token)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


def announced(sock):
    got = False
    while sock is not None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return got
        conn.close()
        got = True
    return got


def watch(token, poll, give_up):
    nets = {}
    seen = False
    hello = beacon(token)
    start = time.monotonic()
    while True:
        seen = announced(hello) or seen
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open("/proc/" + entry + "/cmdline", "rb") as f:
                    if token not in f.read():
                        continue
                found = True
                st = os.stat("/proc/" + entry + "/ns/net")
                if (st.st_dev, st.st_ino) not in nets:
                    nets[st.st_dev, st.st_ino] = os.open("/proc/" + entry + "/ns/net", os.O_RDONLY)
            except OSError:
                pass
        if found:
            seen = True
        elif seen or time.monotonic() - start > give_up:
            return nets
        time.sleep(poll)


def sweep_in(key, fd):
    own = os.stat("/proc/self/ns/net")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if key != (own.st_dev, own.st_ino):
                os.setns(fd, os.CLONE_NEWNET)  # Python 3.12+; older images sweep their own namespace only
            bins = binaries()
            if bins:
                sweep(bins)
                code = 0
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def idle(argv):
    nets = watch(argv[1].encode(), float(argv[2]) if len(argv) > 2 else 1.0,
                 float(argv[3]) if len(argv) > 3 else 300.0)
    for key, fd in nets.items():
        sweep_in(key, fd)


idle(sys.argv)
"""
IDLE = Path(sweep.__file__).read_text(encoding="utf-8") + _IDLE_WATCH
WAITING_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "RunContainerError"}


@dataclass
class Placement:
    """The channel to start the agent on, what to ask it once it is up, and how to clean up."""

    channel: ExecChannel
    mode: str
    # link -> the target's environment; started right behind the agent's hello, before its answer (its requests
    # reach the agent after the hello, and are answered after it)
    after_hello: Callable[[Any], Awaitable[dict]]
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as exc:  # cleanup must never hide the real outcome
                log.warning("cleanup failed: %s", exc)


def _agent_command(python: str, token: str) -> list[str]:
    return [*bootstrap.command(python), token]


async def _own_environment(link: Any) -> dict:
    return await link.request("environ", {"own": True})


def exec_mode(kube: KubeContext, target: ResolvedTarget, python: str, timeout: float) -> Placement:
    channel = ExecChannel(kube.configuration, target.namespace, target.pod, target.container,
                          bootstrap.command(python), target.describe(), python, open_timeout=timeout,
                          warm=kube.warm)
    return Placement(channel, "exec", _own_environment)


def _placed_environment(container_id: str | None, enter: list[str],
                        read_target: bool = True, resolver: str = "libc") -> Callable[[Any], Awaitable[dict]]:
    """``read_target`` False: the session takes neither env nor files from the target, and the agent was given
    no right to read them, so it must not try. ``resolver`` "root": names from the target's resolver files
    through its root (an agent outside the target's mount namespace); "libc": the agent's own glibc."""
    async def after_hello(link: Any) -> dict:
        if not container_id:
            raise MirrorError("the target container has no container ID yet; is it running?")
        placed = await link.request("place", {"container_id": container_id, "enter": enter,
                                              "environ": read_target, "files": read_target,
                                              "resolver": resolver})
        return placed.get("environ") or {}

    return after_hello


# Pods below are the API's JSON (camelCase keys), as KubeContext.request_json returns them.
def _container_id(pod: dict, container: str) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return status.get("containerID")
    return None


#: Capabilities the agent needs for each ``network.incoming.mode``: a packet socket to copy a port's traffic
#: (mirror); iptables rules, which the legacy backend installs through a raw socket, and the forwarding socket's
#: mark (steal).
INCOMING_CAPABILITIES: dict[str, tuple[str, ...]] = {"off": (), "mirror": ("NET_RAW",),
                                                     "steal": ("NET_ADMIN", "NET_RAW")}


@dataclass(frozen=True)
class AgentNeeds:
    """What the session will ask of an agent placed next to the target, which fixes the rights it is given.

    ``incoming`` is ``network.incoming.mode``; ``target_process`` is whether the agent reads the target process's
    environment or files (``/proc/PID/environ``, ``/proc/PID/root``), i.e. env or files are not turned off.
    """

    incoming: str = "mirror"
    target_process: bool = True


def _run_as(pod_spec: dict, container: str) -> tuple[Any, Any, bool]:
    """(uid, gid, holds extra privileges) of a container as its pod spec declares them (None: the image decides).

    The container's securityContext overrides the pod's; added capabilities or privileged mean the target's
    processes may hold capabilities an agent lacks.
    """
    pod_security = pod_spec.get("securityContext") or {}
    spec = next((c for c in pod_spec.get("containers") or [] if c.get("name") == container), {})
    security = spec.get("securityContext") or {}
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
    extra = bool(security.get("privileged") or (security.get("capabilities") or {}).get("add"))
    return uid, gid, extra


def ephemeral_security(pod_spec: dict, container: str, needs: AgentNeeds) -> dict:
    """The securityContext of an ephemeral agent: only the capabilities this session uses.

    Reading another process's ``/proc/PID/environ`` and ``/proc/PID/root`` is a PTRACE_MODE_READ access: the
    kernel allows it to a process of the same user and group whose capabilities include the target's, and
    otherwise only with CAP_SYS_PTRACE. So when the pod spec declares the target's user and group and the target
    holds no added capabilities, the agent runs as that same user and group and needs no SYS_PTRACE; when it does
    not (the image decides, which the API does not tell), SYS_PTRACE is added. Capabilities take effect for root
    only, so an agent that needs network capabilities can share the target's user only when that user is root.
    """
    caps = list(INCOMING_CAPABILITIES[needs.incoming])
    security: dict = {}
    if needs.target_process:
        uid, gid, extra = _run_as(pod_spec, container)
        if isinstance(uid, int) and isinstance(gid, int) and not extra and (uid == 0 or not caps):
            security["runAsUser"], security["runAsGroup"] = uid, gid
        else:
            caps.append("SYS_PTRACE")
    if caps:
        security["capabilities"] = {"add": caps}
    return security


def ephemeral_container(name: str, token: str, image: str, python: str, target_container: str,
                        security: dict) -> dict:
    """The ephemeral agent container as the PATCH adds it (one per session: an ephemeral container can never be
    changed, so a session that needs other rights than an earlier one always gets a container of its own)."""
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [python, "-I", "-c", IDLE, token],
        "targetContainerName": target_container,
        "stdin": False,
        "tty": False,
    }
    if security:
        container["securityContext"] = security
    return container


async def ephemeral_mode(kube: KubeContext, target: ResolvedTarget, python: str, image: str,
                         timeout: float, needs: AgentNeeds | None = None) -> Placement:
    from kubernetes.client.exceptions import ApiException

    token = "mirror-py-" + secrets.token_hex(6)
    name = token
    needs = needs or AgentNeeds()
    target_pod = target.pod_object  # its spec (what the security context is made from) cannot change
    if target_pod is None:
        try:
            target_pod = await asyncio.to_thread(kube.get_json, object_path("pod", target.namespace, target.pod))
        except Exception as exc:
            raise explain(exc, f"reading pod {target.namespace}/{target.pod}") from None
    security = ephemeral_security(target_pod.get("spec") or {}, target.container, needs)
    body = {"spec": {"ephemeralContainers": [ephemeral_container(name, token, image, python, target.container,
                                                                 security)]}}
    progress.info("creating ephemeral container %s (image %s) in pod %s/%s", name, image, target.namespace,
                  target.pod)
    try:
        patched = await asyncio.to_thread(kube.request_json, "PATCH", object_path("pod", target.namespace,
                                                                                target.pod) +
                                          "/ephemeralcontainers", body, "application/strategic-merge-patch+json")
    except ApiException as exc:
        if exc.status == 404:
            raise await _ephemeral_not_found(kube, target) from None
        refusal = _refusal(exc, "ephemeral", target.namespace)
        if refusal:
            raise MirrorError(refusal) from None
        if exc.status == 403:
            raise MirrorError(f"{explain(exc, 'adding the ephemeral agent container')}; agent mode ephemeral needs "
                              f"patch on pods/ephemeralcontainers in namespace {target.namespace} "
                              "(or use --agent-mode exec)") from None
        raise explain(exc, "adding the ephemeral agent container") from None
    except Exception as exc:
        raise explain(exc, "adding the ephemeral agent container") from None
    pod = await _wait(kube, target.namespace, target.pod, lambda p: _ephemeral_state(p, name), timeout,
                      f"ephemeral container {name}", first=patched if isinstance(patched, dict) else None,
                      container_field=pulls.container_field(name, ephemeral=True))
    channel = ExecChannel(kube.configuration, target.namespace, target.pod, name, _agent_command(python, token),
                          f"{target.describe()} via ephemeral container {name}", python, open_timeout=timeout,
                          warm=kube.warm)
    after = _placed_environment(_container_id(pod, target.container), [], needs.target_process)
    return Placement(channel, "ephemeral", _explain_denied(after, security))


async def _ephemeral_not_found(kube: KubeContext, target: ResolvedTarget) -> MirrorError:
    """A 404 on the ephemeral-container patch means either that the subresource does not exist (ephemeral
    containers disabled, an API server older than 1.25) or that the pod itself went away meanwhile (deleted, or
    replaced by a rollout). Only a second look at the pod tells them apart."""
    from kubernetes.client.exceptions import ApiException

    where = f"pod {target.namespace}/{target.pod}"
    try:
        await asyncio.to_thread(kube.get_json, object_path("pod", target.namespace, target.pod))
    except ApiException as exc:
        if exc.status == 404:
            return MirrorError(f"{where} no longer exists (deleted or replaced while the ephemeral agent was being "
                               "added); run again to target its replacement")
    except Exception:  # the second look failed: say what the patch's answer means when the pod is there
        pass
    return MirrorError(f"the cluster refused an ephemeral container for {where} "
                       "(404: ephemeral containers are disabled here); use --agent-mode job")


def _explain_denied(after: Callable[[Any], Awaitable[dict]], security: dict) -> Callable[[Any], Awaitable[dict]]:
    """A refused read of the target's ``/proc/PID`` names the rights the agent was given and what to do: the
    kernel's answer alone ("Permission denied") does not say that the target is another user's process."""
    async def after_hello(link: Any) -> dict:
        try:
            return await after(link)
        except OSError as exc:
            if getattr(exc, "name", None) not in ("EACCES", "EPERM"):
                raise
            given = ("running as the target's declared user" if "runAsUser" in security else
                     "with SYS_PTRACE" if "SYS_PTRACE" in (security.get("capabilities") or {}).get("add", []) else
                     "with no added capability")
            raise MirrorError(f"the ephemeral agent ({given}) may not read the target process's environment and "
                              f"files ({getattr(exc, 'message', exc)}): the process may run as another user than its "
                              "pod spec declares, or have made itself non-dumpable; use --no-env with --fs-mode "
                              "local, or --agent-mode job") from None

    return after_hello


def _ephemeral_state(pod: dict, name: str) -> tuple[str, str]:
    for status in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if status.get("name") == name:
            return _state(status)
    return "waiting", "ContainerCreating"


def _state(status: dict) -> tuple[str, str]:
    state = status.get("state") or {}
    if state.get("running") is not None:
        return "running", ""
    terminated = state.get("terminated")
    if terminated is not None:
        return "terminated", f"{terminated.get('reason') or 'exited'} (exit code {terminated.get('exitCode')})"
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or "ContainerCreating"
    message = waiting.get("message") or ""
    return ("failed" if reason in WAITING_FAILURES else "waiting"), f"{reason}{': ' + message if message else ''}"


POLL_EVERY = 0.3  # seconds between the starts of two reads of a pod whose agent container is starting


async def _wait(kube: KubeContext, namespace: str, pod_name: str, state_of: Callable[[dict], tuple[str, str]],
                timeout: float, what: str, first: dict | None = None, container_field: str = "") -> dict:
    """Polls the pod until ``what`` runs, showing each new waiting reason; fails with the Kubernetes reason.

    ``first``: the pod as a write just returned it, looked at before any read. Reads start POLL_EVERY apart
    (not POLL_EVERY after each answer): at a distance a read's round trip is part of the interval, so the wait
    does not grow by a round trip per poll, and the API server gets no more reads than before.

    ``container_field``: the agent container's field path in events; when the timeout is reached while the
    kubelet is still pulling its image, the wait goes on (see mirror_py/kube/pulls.py)."""
    deadline = time.monotonic() + timeout
    extensions = 0
    shown = ""
    given = first
    asked = time.monotonic()
    while True:
        pod, given = given, None
        if pod is None:
            asked = time.monotonic()
            try:
                pod = await asyncio.to_thread(kube.get_json, object_path("pod", namespace, pod_name))
            except Exception as exc:
                raise explain(exc, f"waiting for {what}") from None
        state, reason = state_of(pod)
        if state == "running":
            progress.info("%s is running", what)
            return pod
        if state in ("failed", "terminated"):
            raise MirrorError(f"{what} did not start: {reason}")
        if reason != shown:
            progress.info("%s: %s", what, reason)
            shown = reason
        if time.monotonic() > deadline:
            image = None
            if container_field and extensions < pulls.PULL_EXTENSIONS:
                image = await _pulling(kube, namespace, pod_name, container_field)
            if image is None:
                waited = timeout * (extensions + 1)
                raise MirrorError(f"{what} did not start within {waited:g} s (last state: {reason}); raise "
                                  "agent.startup_timeout if images pull slowly")
            extensions += 1
            deadline += timeout
            start_clock.extend(timeout)  # the whole start's bound moves with this step's
            progress.warning("%s: still pulling %s after %g s; waiting for the pull (up to %g s in all)", what,
                             image, timeout * extensions, timeout * (pulls.PULL_EXTENSIONS + 1))
        await asyncio.sleep(max(0.0, asked + POLL_EVERY - time.monotonic()))


async def _pulling(kube: KubeContext, namespace: str, pod_name: str, field: str) -> str | None:
    """The image the kubelet is still pulling for the agent container, from the pod's events; None when it is
    not pulling or the events cannot be read (listing events is an optional right)."""
    try:
        events = await asyncio.to_thread(kube.list_items, collection("event", namespace),
                                         fieldSelector=f"involvedObject.kind=Pod,involvedObject.name={pod_name}")
    except Exception as exc:
        log.debug("events of pod %s/%s not read: %r", namespace, pod_name, exc)
        return None
    return pulls.pulling(events, field)


def _pod_container_state(pod: dict, container: str) -> tuple[str, str]:
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return "failed", status.get("reason") or status.get("message") or "the pod failed"
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == container:
            return _state(cs)
    return "waiting", status.get("phase") or "Pending"


#: On agent pods (job and targetless): no service mesh may inject its proxy. A sidecar would take the pod's
#: traffic (the targetless agent's outgoing connections would leave through the mesh's proxy, not as the pod),
#: hold a job pod Running after the agent exits, and ask for more rights than the agent has. Istio reads the
#: label as well as the annotation (the label wins in its newer releases).
MESH_ANNOTATIONS = {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled",
                    "kuma.io/sidecar-injection": "disabled"}
MESH_LABELS = {"sidecar.istio.io/inject": "false"}


def agent_resources(cpu_request: str | None = None, memory_request: str | None = None,
                    cpu_limit: str | None = None, memory_limit: str | None = None) -> dict:
    """The agent container's ``resources`` from the ``agent.*_request``/``*_limit`` keys (empty ones left out).

    Declared because a namespace's ResourceQuota on requests or limits refuses every pod that does not declare
    them, and a LimitRange's defaults may be too small or too large for the agent."""
    out: dict = {}
    for kind, values in (("requests", {"cpu": cpu_request, "memory": memory_request}),
                         ("limits", {"cpu": cpu_limit, "memory": memory_limit})):
        given = {key: value for key, value in values.items() if value}
        if given:
            out[kind] = given
    return out


def _agent_pod_spec(token: str, image: str, python: str, resources: dict | None = None, **extra: Any) -> dict:
    container: dict = {"name": "agent", "image": image, "imagePullPolicy": "IfNotPresent",
                       "command": [python, "-I", "-c", IDLE, token]}
    security = extra.pop("security_context", None)
    if security:
        container["securityContext"] = security
    if resources:
        container["resources"] = resources
    return {"restartPolicy": "Never", "containers": [container], "terminationGracePeriodSeconds": 1, **extra}


def _agent_metadata(**extra: Any) -> dict:
    return {**extra, "labels": {"app.kubernetes.io/managed-by": "mirror-py", **MESH_LABELS},
            "annotations": dict(MESH_ANNOTATIONS)}


def job_body(token: str, namespace: str, node: str | None, python: str, image: str,
             resources: dict | None = None) -> dict:
    """The agent Job as job mode POSTs it (a function of its own so the admission policy can be tested on it)."""
    # The agent never calls the API: a privileged pod has no use for a token that anyone entering it could take.
    spec = _agent_pod_spec(token, image, python, resources, nodeName=node, hostPID=True,
                           automountServiceAccountToken=False, tolerations=[{"operator": "Exists"}],
                           security_context={"privileged": True})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": token, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "mirror-py"}},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 60,
                     "template": {"metadata": _agent_metadata(), "spec": spec}}}


def _refusal(exc: Any, kind: str, namespace: str) -> str | None:
    """A 403 that an admission policy (not RBAC) gave, explained; None for any other error."""
    if getattr(exc, "status", None) != 403:
        return None
    return admission.refused(str(explain(exc, "")), kind, namespace)


async def job_mode(kube: KubeContext, target: ResolvedTarget, python: str, image: str, timeout: float,
                   resources: dict | None = None) -> Placement:
    from kubernetes.client.exceptions import ApiException

    token = "mirror-py-" + secrets.token_hex(6)
    ns = target.namespace
    body = job_body(token, ns, target.node, python, image, resources)
    progress.info("creating agent job %s/%s on node %s (image %s)", ns, token, target.node, image)
    try:
        await asyncio.to_thread(kube.request_json, "POST", collection("job", ns), body)
    except ApiException as exc:
        refusal = _refusal(exc, "job", ns)
        if refusal:
            raise MirrorError(refusal) from None
        hint = f"; agent mode job needs create and delete on jobs in namespace {ns}" if exc.status == 403 else ""
        raise MirrorError(f"{explain(exc, 'creating the agent job')}{hint}") from None
    except Exception as exc:
        raise explain(exc, "creating the agent job") from None

    def delete() -> None:
        kube.request_json("DELETE", object_path("job", ns, token), propagationPolicy="Background")

    placement_cleanup = [delete]
    try:
        pod_name = await _job_pod(kube, ns, token, timeout)
        await _wait(kube, ns, pod_name, lambda p: _pod_container_state(p, "agent"), timeout, f"agent pod {pod_name}",
                    container_field=pulls.container_field("agent", ephemeral=False))
        target_pod = await asyncio.to_thread(kube.get_json, object_path("pod", ns, target.pod))
    except BaseException:
        delete()
        raise
    channel = ExecChannel(kube.configuration, ns, pod_name, "agent", _agent_command(python, token),
                          f"{target.describe()} via job pod {pod_name}", python, open_timeout=timeout,
                          warm=kube.warm)
    # Network and UTS only: in the target's mount namespace this privileged agent would run the target's code
    # (see mirror_py_agent.placement). Files come through /proc/<pid>/root, names from the stub resolver.
    after = _placed_environment(_container_id(target_pod, target.container), ["net", "uts"],
                                resolver="root")
    return Placement(channel, "job", after, placement_cleanup)


async def _job_pod(kube: KubeContext, namespace: str, job: str, timeout: float) -> str:
    """The Job's pod. While it has none, the Job's events say why: a pod that admission refuses never exists,
    and the Job controller records the refusal only as a FailedCreate event on the Job."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    events_readable = True
    while time.monotonic() < deadline:
        pods = await asyncio.to_thread(kube.list_items, collection("pod", namespace), labelSelector=f"job-name={job}")
        if pods:
            return pods[0]["metadata"]["name"]
        if events_readable:
            try:
                events = await asyncio.to_thread(kube.list_items, collection("event", namespace),
                                                 fieldSelector=f"involvedObject.kind=Job,involvedObject.name={job}")
            except ApiException as exc:
                if exc.status != 403:
                    raise explain(exc, f"reading the events of the agent job {namespace}/{job}") from None
                events_readable = False  # optional right: without it, only the timeout below tells
            else:
                refusal = admission.job_refusal(events, namespace)
                if refusal:
                    raise MirrorError(refusal)
        await asyncio.sleep(0.3)
    unread = "" if events_readable else " (no right to list events here, so its reason is unknown: see kubectl " \
        f"describe job -n {namespace} {job})"
    raise MirrorError(f"the agent job {namespace}/{job} created no pod within {timeout:g} s{unread}")


def targetless_pod(token: str, namespace: str, python: str, image: str, resources: dict | None = None) -> dict:
    """The targetless agent pod as it is POSTed: unprivileged, no service-account token."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _agent_metadata(name=token, namespace=namespace),
            "spec": _agent_pod_spec(token, image, python, resources, automountServiceAccountToken=False,
                                    security_context={"allowPrivilegeEscalation": False})}


async def targetless_mode(kube: KubeContext, namespace: str, python: str, image: str, timeout: float,
                          resources: dict | None = None) -> Placement:
    from kubernetes.client.exceptions import ApiException

    token = "mirror-py-" + secrets.token_hex(6)
    body = targetless_pod(token, namespace, python, image, resources)
    progress.info("no target: creating agent pod %s/%s (image %s)", namespace, token, image)
    try:
        await asyncio.to_thread(kube.request_json, "POST", collection("pod", namespace), body)
    except ApiException as exc:
        refusal = _refusal(exc, "targetless", namespace)
        if refusal:
            raise MirrorError(refusal) from None
        hint = f"; a session without a target needs create and delete on pods in namespace {namespace}" \
            if exc.status == 403 else ""
        raise MirrorError(f"{explain(exc, 'creating the agent pod')}{hint}") from None
    except Exception as exc:
        raise explain(exc, "creating the agent pod") from None

    def delete() -> None:
        kube.request_json("DELETE", object_path("pod", namespace, token), gracePeriodSeconds="0")

    try:
        await _wait(kube, namespace, token, lambda p: _pod_container_state(p, "agent"), timeout, f"agent pod {token}",
                    container_field=pulls.container_field("agent", ephemeral=False))
    except BaseException:
        delete()
        raise
    channel = ExecChannel(kube.configuration, namespace, token, "agent", _agent_command(python, token),
                          f"namespace {namespace} (targetless agent pod {token})", python, open_timeout=timeout,
                          warm=kube.warm)
    return Placement(channel, "targetless", _no_environment, [delete])


async def _no_environment(link: Any) -> dict:
    return {}  # a fresh pod's environment is not anyone's configuration
