"""Container runtimes' cgroup layouts, so a job agent meets what it meets on a node: containerd, CRI-O, Docker;
the systemd and cgroupfs cgroup drivers; cgroup v2 and v1.

A pod chooses its layout with the sandbox-only annotation ``sandbox.mirror-py/runtime`` (a key of
:data:`LAYOUTS`; containerd with systemd on v2 when absent). The layout decides

* the container's cgroup name (``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope``; the
  cgroupfs driver's ``<id>`` or ``crio-<id>`` under ``/kubepods/besteffort/pod<uid>``), on the v2 hierarchy, or
  for v1 on a v1 hierarchy (the host's ``pids`` one, else a named hierarchy mounted for the run), while on v2
  the container then sits in a cgroup that does not name it, as on a hybrid host;
* the container ID's scheme in the pod status (``containerd://``, ``cri-o://``, ``docker://``);
* for CRI-O, a conmon-like monitor: a host process in ``crio-conmon-<id>.scope``, in the node's namespaces,
  started before the container and its parent, staying until it exits (what conmon is). It carries the
  container's ID in its cgroup's name and has the lower PID.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ANNOTATION = "sandbox.mirror-py/runtime"
ROOT_PREFIX = "mirror-py-sandbox-"  # the cluster's own cgroup directory (cluster.CGROUP_PREFIX)
V1_NAME = "mirror-py-sandbox"  # a named v1 hierarchy, mounted when the host has no v1 hierarchy


@dataclass(frozen=True)
class Layout:
    runtime: str  # containerd, cri-o, docker
    driver: str  # systemd, cgroupfs
    version: int  # 2 or 1

    @property
    def scheme(self) -> str:
        return self.runtime

    def pod_dir(self, uid: str) -> str:
        if self.driver == "systemd":
            under = uid.replace("-", "_")
            return f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice"
        return f"kubepods/besteffort/pod{uid}"

    def container_name(self, cid: str) -> str:
        prefix = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[self.runtime]
        if self.driver == "systemd":
            return f"{prefix}-{cid}.scope"
        return f"crio-{cid}" if self.runtime == "cri-o" else cid

    def monitor_name(self, cid: str) -> str | None:
        if self.runtime != "cri-o":
            return None
        return f"crio-conmon-{cid}.scope" if self.driver == "systemd" else f"crio-conmon-{cid}"


LAYOUTS: dict[str, Layout] = {
    "containerd": Layout("containerd", "systemd", 2),
    "containerd-cgroupfs-v1": Layout("containerd", "cgroupfs", 1),
    "cri-o": Layout("cri-o", "systemd", 2),
    "cri-o-v1": Layout("cri-o", "systemd", 1),
    "cri-o-cgroupfs-v1": Layout("cri-o", "cgroupfs", 1),
    "docker": Layout("docker", "systemd", 2),
}
DEFAULT = LAYOUTS["containerd"]


def layout_of(annotations: Mapping[str, Any]) -> Layout:
    name = str(annotations.get(ANNOTATION) or "containerd")
    if name not in LAYOUTS:
        raise ValueError(f"{ANNOTATION}: unknown runtime layout {name!r} (one of {', '.join(LAYOUTS)})")
    return LAYOUTS[name]


# --------------------------------------------------------------------------------------------- v1 hierarchy


def _v1_mount() -> Path | None:
    """A v1 hierarchy of the host: ``pids`` preferred (cheap, on every v1 host), else any; else our named one."""
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts = right.split()
            if len(parts) >= 3 and parts[0] == "cgroup":
                options = parts[2].split(",")
                key = "pids" if "pids" in options else f"name={V1_NAME}" if f"name={V1_NAME}" in options else "any"
                found.setdefault(key, Path(left.split()[4]))
    return found.get("pids") or found.get(f"name={V1_NAME}") or found.get("any")


@dataclass
class V1Root:
    """This cluster's directory on a v1 hierarchy (made on first use; removed at close)."""

    name: str
    workdir: Path
    path: Path | None = None
    mounted: Path | None = None

    def get(self) -> Path:
        if self.path is not None:
            return self.path
        mount = _v1_mount()
        if mount is None:
            point = self.workdir / "cgroup-v1"
            point.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name={V1_NAME}", "cgroup", str(point)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"no cgroup v1 hierarchy here and none can be mounted: {done.stderr.strip()}")
            mount = self.mounted = point
        self.path = mount / self.name
        self.path.mkdir(exist_ok=True)
        return self.path

    def close(self, kill_tree: Callable[[Path], None]) -> None:
        if self.path is not None:
            kill_tree(self.path)
        if self.mounted is not None:
            subprocess.run(["umount", "-l", str(self.mounted)], capture_output=True)


def leftover_v1_dirs(prefix: str) -> list[Path]:
    mount = _v1_mount()
    return sorted(mount.glob(f"{prefix}*.slice")) if mount is not None and mount.is_dir() else []


# ------------------------------------------------------------------------------------------ per container


@dataclass
class ContainerCgroups:
    """Where one container's processes (and its monitor, if its runtime has one) live."""

    procs: list[Path]  # cgroup.procs files every process of the container joins (v2, and v1 for a v1 layout)
    monitor: list[Path] = field(default_factory=list)  # the monitor's cgroup.procs files; empty: no monitor
    dirs: list[Path] = field(default_factory=list)  # every directory made, deepest first (killed and removed)

    def join_prefix(self) -> list[str]:
        """Argv prefix that joins the container's cgroups, then execs the command (keeping its PID)."""
        return ["/bin/sh", "-c", 'n=$0; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 126; shift; '
                'n=$((n-1)); done; exec "$@"', str(len(self.procs)), *map(str, self.procs)]

    def start_prefix(self) -> list[str]:
        """The container's first process: under its monitor when the runtime has one."""
        if not self.monitor:
            return self.join_prefix()
        return [sys.executable, "-I", "-S", "-c", MONITOR, str(len(self.monitor)), *map(str, self.monitor),
                *self.join_prefix()]


# The monitor: joins its own cgroup, forks the container's process, passes signals on, exits with its status.
MONITOR = """
import os, signal, sys
n = int(sys.argv[1])
for path in sys.argv[2:2 + n]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
argv = sys.argv[2 + n:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda num, frame: os.kill(pid, num))
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def place(v2_root: Path | None, v1: V1Root, layout: Layout, pod_uid: str, cid: str) -> ContainerCgroups | None:
    """Makes the container's cgroups (None when the host has no cgroup the sandbox may use: best effort, as the
    sandbox's cgroups always were)."""
    if v2_root is None:
        return None
    made: list[Path] = []

    def mkdir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        made.append(path)
        return path

    pod = layout.pod_dir(pod_uid)
    monitor_name = layout.monitor_name(cid)
    try:
        if layout.version == 2:
            procs = [mkdir(v2_root / pod / layout.container_name(cid))]
            monitor = [mkdir(v2_root / pod / monitor_name)] if monitor_name else []
        else:  # v1: named on the v1 hierarchy; on v2 (killed at cleanup) under names that do not tell the ID
            v1_root = v1.get()
            procs = [mkdir(v1_root / pod / layout.container_name(cid)), mkdir(v2_root / pod / f"c-{cid[:8]}")]
            monitor = ([mkdir(v1_root / pod / monitor_name), mkdir(v2_root / pod / f"m-{cid[:8]}")]
                       if monitor_name else [])
    except OSError:
        return None
    return ContainerCgroups([p / "cgroup.procs" for p in procs], [p / "cgroup.procs" for p in monitor],
                            sorted(made, key=lambda p: len(p.parts), reverse=True))


def main_pid(started: int, cgroups: ContainerCgroups | None) -> int:
    """The container's own first process: ``started`` itself, or the monitor's child."""
    if cgroups is None or not cgroups.monitor:
        return started
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{started}/task/{started}/children").read_text().split()
        if children:
            return int(children[0])
    return started


def remove(cgroups: ContainerCgroups | None, kill_tree: Callable[[Path], None]) -> None:
    if cgroups is None:
        return
    for path in cgroups.dirs:
        kill_tree(path)
    for path in cgroups.dirs:  # the pod's directories too, once empty, up to the cluster's own
        for parent in path.parents:
            if parent.name.startswith(ROOT_PREFIX) or parent == parent.parent:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
