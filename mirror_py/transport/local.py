"""Local targets: the agent runs in a process's namespaces, a named network namespace or a container.

Each target is just a command prefix whose stdin/stdout reach the agent; the channel is that process's pipes.

- ``pid/PID``: mirror-py's own interpreter (``sys.executable``) as host root in the process's network and UTS
  namespaces only, never its mount namespace: there a root agent would run the target's ``python3``, its stdlib
  and its NSS modules outside the container's capabilities, seccomp and user namespace. The agent is then
  "placed" like a job-mode agent: files through ``/proc/PID/root``, environment from ``/proc/PID/environ``,
  names from the stub resolver over the target's resolver files.
- ``netns/NAME``: the host's ``python3`` under ``ip netns exec``; everything but the network (and the files
  ``ip`` binds from ``/etc/netns/NAME``, which only root writes) is the host's own.
- ``docker/NAME``, ``podman/NAME``: the container's ``python3`` through ``exec -i``, like exec mode: inside the
  container, with the container's own privileges.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..errors import MirrorError

LOCAL_KINDS = ("pid", "netns", "docker", "podman")


@dataclass(frozen=True)
class LocalTarget:
    kind: str
    name: str
    argv_prefix: tuple[str, ...]
    env_pid: int | None  # whose /proc/<pid>/environ is the target's environment, as seen by the agent
    #: A rooted placement: the agent reaches this process's files, environment and resolver files through
    #: /proc/<pid> (a ``place`` request right after its hello) instead of living in its mount namespace.
    root_pid: int | None = None
    #: The interpreter that runs the agent unless the user chose one (``agent.python``), when the configured
    #: default would be looked up in the target.
    python: str | None = None

    def agent_argv(self, command: list[str]) -> list[str]:
        return [*self.argv_prefix, *command]

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


def is_local(path: str) -> bool:
    return path.split("/", 1)[0] in LOCAL_KINDS


def resolve(path: str) -> LocalTarget:
    """Checks the target exists, so a typo fails here with a clear message instead of inside nsenter."""
    kind, _, name = path.partition("/")
    if not name:
        raise MirrorError(f"target {path!r} has no name: write it as {kind}/NAME")
    if kind == "pid":
        return _pid_target(name)
    if kind == "netns":
        return _netns_target(name)
    if kind in ("docker", "podman"):
        return container_target(kind, name)
    raise MirrorError(f"unknown target kind {kind!r} in {path!r}: use one of {', '.join(LOCAL_KINDS)}")


def _need(tool: str, why: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise MirrorError(f"{tool} is not installed; it is needed {why}")
    return found


def _pid_target(name: str) -> LocalTarget:
    if not name.isdigit() or int(name) <= 0:
        raise MirrorError(f"pid target {name!r} is not a process ID: write it as pid/4242")
    pid = int(name)
    if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
        raise MirrorError(f"no process with PID {pid} is running (target pid/{pid}); check the PID with `ps`")
    if not os.access(f"/proc/{pid}/ns/net", os.R_OK):
        raise MirrorError(
            f"cannot open the namespaces of PID {pid}: entering another process's namespaces needs root "
            "(or CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
        )
    nsenter = _need("nsenter", "to enter the namespaces of a pid/ target (Debian package util-linux)")
    # Network and UTS namespaces only (the target's sockets and host name), with mirror-py's own interpreter:
    # nothing of the target runs with host root. Its files come through /proc/<pid>/root (see the module doc).
    return LocalTarget("pid", name, (nsenter, "-t", str(pid), "-n", "-u", "--"), None, root_pid=pid,
                       python=sys.executable)


def _is_zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet: its /proc entry is there, its namespaces are not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _netns_target(name: str) -> LocalTarget:
    if "/" in name or name in (".", ".."):
        raise MirrorError(f"invalid network namespace name {name!r}")
    if not os.path.exists(f"/run/netns/{name}"):
        known = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        hint = f"; existing: {', '.join(known)}" if known else "; `ip netns list` shows none"
        raise MirrorError(f"network namespace {name!r} does not exist{hint}")
    ip = _need("ip", "to enter a netns/ target (Debian package iproute2)")
    pids = _netns_pids(ip, name)
    return LocalTarget("netns", name, (ip, "netns", "exec", name), min(pids) if pids else None)


def _netns_pids(ip: str, name: str) -> list[int]:
    try:
        out = subprocess.run([ip, "netns", "pids", name], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def container_target(engine: str, name: str) -> LocalTarget:
    """A running container reached with ``<engine> exec -i``; its PID 1 holds the environment."""
    exe = shutil.which(engine)
    if exe is None:
        raise MirrorError(f"{engine} is not installed, so target {engine}/{name} cannot be reached")
    return LocalTarget(engine, name, (exe, "exec", "-i", name), 1)
