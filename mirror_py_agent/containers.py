"""Which host process is a container's own init, found from the container ID its pod status reports.

A job agent (hostPID) must enter the target container's namespaces, so it needs one of the container's own
processes, and the right one: its init, whose environment is the container's. The runtime names the container's
cgroup after the container's ID, but it also names other cgroups after that ID. CRI-O puts ``conmon``, its
monitor, in ``crio-conmon-<id>.scope`` next to the container's ``crio-<id>.scope``; conmon starts first and runs
in the node's namespaces. Matching the ID anywhere in ``/proc/PID/cgroup`` and taking the lowest PID therefore
picks conmon on CRI-O (OpenShift), and the agent would join the node's network and add its iptables rules there.

So a process belongs to the container only when one component of one of its cgroup paths is exactly one of the
names the container's runtime gives the container's own cgroup (:data:`SCOPES`): the systemd cgroup driver's
``<prefix>-<id>.scope`` or the cgroupfs driver's ``<id>`` (``crio-<id>`` for CRI-O). Every line of
``/proc/PID/cgroup`` counts, so cgroup v1 (one line per hierarchy), v2 (``0::``) and hybrid hosts are read alike,
and a path relative to the agent's own cgroup namespace (``/../../kubepods-…``) still has the name as a
component. A process in a sub-cgroup the container made for itself is still the container's.

Among the container's processes the init is one whose parent is not the container's: the runtime's shim or
conmon started it. Processes exec'd into the container (``kubectl exec``) have an outside parent too, but they
can only start after the init, so the earliest started is the init. When that does not decide (two such
processes started in the same clock tick, or the ID names cgroups of two runtimes) the agent refuses with a
message that says so, rather than enter a guess.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

#: Per container-ID scheme (``<scheme>://<id>`` in the pod status), the names of the container's own cgroup:
#: systemd driver first, then cgroupfs driver. Monitors and sandboxes (``crio-conmon-<id>``) are not in the list.
SCOPES: dict[str, tuple[str, ...]] = {
    "containerd": ("cri-containerd-{id}.scope", "{id}"),
    "cri-o": ("crio-{id}.scope", "crio-{id}"),
    "docker": ("docker-{id}.scope", "{id}"),
}
_HEX = frozenset("0123456789abcdef")


class ContainerNotFound(OSError):
    """No process of the container is visible, or none can be told to be its init (ESRCH, with the reason as
    its text, which the session shows as it is)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ESRCH, message)


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot (field 22 of /proc/PID/stat)


def parse_id(container_id: str) -> tuple[str, str]:
    """``(scheme, id)`` of ``containerd://<64 hex>`` (scheme "" when absent); ValueError for anything else.

    The whole ID is required: a prefix could name several containers' cgroups."""
    scheme, sep, ident = container_id.strip().partition("://")
    if not sep:
        scheme, ident = "", scheme
    ident = ident.lower()
    if len(ident) != 64 or not set(ident) <= _HEX:
        raise ValueError(f"not a container ID (64 hexadecimal digits after the runtime's prefix): {container_id!r}")
    return scheme.lower(), ident


def scope_names(container_id: str) -> frozenset[str]:
    """Every exact cgroup name the container's own cgroup may have; an unknown scheme gets all runtimes'."""
    scheme, ident = parse_id(container_id)
    patterns = SCOPES.get(scheme) or tuple(p for names in SCOPES.values() for p in names)
    return frozenset(p.format(id=ident) for p in patterns)


def in_container(cgroup_text: str, names: frozenset[str]) -> str | None:
    """The matching name if a ``/proc/PID/cgroup`` text places the process in one of ``names``, else None."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        for component in path.split("/"):
            if component in names:
                return component
    return None


def _stat(proc: str, pid: int) -> _Proc | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return _Proc(pid, int(fields[1]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def init_pid(container_id: str, proc: str = "/proc") -> int:
    """The host PID of the container's init (see the module's docstring for the rule)."""
    names = scope_names(container_id)
    short = parse_id(container_id)[1][:12]
    members: dict[int, str] = {}
    own = os.getpid()
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"{proc}/{entry}/cgroup") as f:
                found = in_container(f.read(), names)
        except OSError:
            continue
        if found is not None:
            members[int(entry)] = found
    if not members:
        raise ContainerNotFound(f"no process of container {short} is visible (hostPID or a shared process "
                                "namespace is needed, and the container must be running)")
    if len(set(members.values())) > 1:
        raise ContainerNotFound(f"container {short} is ambiguous: its ID names the cgroups "
                                f"{', '.join(sorted(set(members.values())))}; refusing to guess which is the "
                                "container's")
    procs = [p for p in (_stat(proc, pid) for pid in members) if p is not None]
    tops = [p for p in procs if p.ppid not in members]
    if not tops:
        raise ContainerNotFound(f"container {short}: no process of it was started from outside it "
                                "(it may have just exited)")
    first = min(p.start for p in tops)
    earliest = sorted(p.pid for p in tops if p.start == first)
    if len(earliest) > 1:
        raise ContainerNotFound(f"container {short} is ambiguous: processes {', '.join(map(str, earliest))} were "
                                "all started from outside it at the same moment; refusing to guess its init")
    return earliest[0]
