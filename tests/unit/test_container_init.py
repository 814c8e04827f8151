"""The container's init process, found from its ID among the host's processes as each runtime lays out cgroups.

Each case writes a /proc of its own (``PID/cgroup`` and ``PID/stat``) in the shape the runtime and cgroup
driver give it on a real node, with the runtime's monitor or shim next to the container, then asks the agent
which process is the container's init.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror_py_agent import containers

ID = "3f" * 32
OTHER = "a1" * 32
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SLICE = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
V1_CONTROLLERS = ("cpu,cpuacct", "memory", "pids", "name=systemd")


def _v2(path: str) -> str:
    return f"0::{path}\n"


def _v1(path: str) -> str:
    return "".join(f"{n}:{ctl}:{path}\n" for n, ctl in enumerate(V1_CONTROLLERS, start=1))


def _proc(tmp_path: Path, procs: list[tuple[int, int, int, str]]) -> str:
    """procs: (pid, ppid, start tick, /proc/PID/cgroup text)."""
    for pid, ppid, start, cgroup in procs:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cgroup").write_text(cgroup)
        zeros = " ".join(["0"] * 17)  # pgrp .. itrealvalue, then starttime (field 22)
        (d / "stat").write_text(f"{pid} (some (odd) name) S {ppid} {zeros} {start} 0 0\n")
    return str(tmp_path)


def _stat_start(tmp_path: Path, pid: int) -> int:
    text = (tmp_path / str(pid) / "stat").read_text()
    return int(text[text.rfind(")") + 2:].split()[19])


def test_stat_fields_are_read_after_the_command_name(tmp_path):
    _proc(tmp_path, [(40, 1, 1234, _v2("/"))])
    assert _stat_start(tmp_path, 40) == 1234


# runtime, container-ID scheme, the container's cgroup path, its monitor's cgroup path (or None)
LAYOUTS = {
    "cri-o, systemd, v2": ("cri-o", _v2(f"{SLICE}/crio-{ID}.scope"), _v2(f"{SLICE}/crio-conmon-{ID}.scope")),
    "cri-o, systemd, v1": ("cri-o", _v1(f"{SLICE}/crio-{ID}.scope"), _v1(f"{SLICE}/crio-conmon-{ID}.scope")),
    "cri-o, cgroupfs, v1": ("cri-o", _v1(f"/kubepods/besteffort/pod{UID}/crio-{ID}"),
                            _v1(f"/kubepods/besteffort/pod{UID}/crio-conmon-{ID}")),
    "cri-o, systemd, v2, sub-cgroup": ("cri-o", _v2(f"{SLICE}/crio-{ID}.scope/container"),
                                       _v2(f"{SLICE}/crio-conmon-{ID}.scope")),
    "containerd, systemd, v2": ("containerd", _v2(f"{SLICE}/cri-containerd-{ID}.scope"),
                                _v2("/system.slice/containerd.service")),
    "containerd, cgroupfs, v1": ("containerd", _v1(f"/kubepods/besteffort/pod{UID}/{ID}"),
                                 _v1("/system.slice/containerd.service")),
    "containerd, cgroup namespace": ("containerd", _v2(f"/../../kubepods-besteffort-pod{UID}.slice/"
                                                       f"cri-containerd-{ID}.scope"), _v2("/../../..")),
    "docker, systemd, v2": ("docker", _v2(f"{SLICE}/docker-{ID}.scope"), _v2("/system.slice/docker.service")),
    "docker, cgroupfs, v1": ("docker", _v1(f"/kubepods/besteffort/pod{UID}/{ID}"),
                             _v1("/system.slice/docker.service")),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_init_is_found_and_never_the_monitor(tmp_path, layout):
    """The monitor starts first (lowest PID) and carries the ID in its own cgroup's name on CRI-O; an exec'd
    process started later also has a parent outside the container; the init's child is inside."""
    scheme, container, monitor = LAYOUTS[layout]
    proc = _proc(tmp_path, [
        (1, 0, 1, _v2("/init.scope")),
        (90, 1, 10, monitor),                    # conmon / the shim
        (95, 90, 11, container),                 # the container's init
        (96, 95, 12, container),                 # its child
        (120, 90, 50, container),                # kubectl exec, started later
        (130, 1, 60, _v2(f"{SLICE}/crio-{OTHER}.scope")),  # another container
    ])
    assert containers.init_pid(f"{scheme}://{ID}", proc) == 95


def test_an_unknown_scheme_accepts_every_runtimes_names(tmp_path):
    proc = _proc(tmp_path, [(90, 1, 10, _v2(f"{SLICE}/crio-conmon-{ID}.scope")),
                            (95, 90, 11, _v2(f"{SLICE}/crio-{ID}.scope"))])
    assert containers.init_pid(f"cri-something://{ID}", proc) == 95


def test_a_name_that_merely_contains_the_id_is_not_the_container(tmp_path):
    proc = _proc(tmp_path, [(90, 1, 10, _v2(f"{SLICE}/crio-conmon-{ID}.scope")),
                            (91, 1, 10, _v2(f"/kubepods/x{ID}"))])
    with pytest.raises(containers.ContainerNotFound, match="no process of container 3f3f3f3f3f3f is visible"):
        containers.init_pid(f"cri-o://{ID}", proc)


def test_two_processes_started_at_once_from_outside_are_refused(tmp_path):
    proc = _proc(tmp_path, [(95, 1, 11, _v2(f"{SLICE}/crio-{ID}.scope")),
                            (97, 1, 11, _v2(f"{SLICE}/crio-{ID}.scope"))])
    with pytest.raises(containers.ContainerNotFound, match="ambiguous: processes 95, 97"):
        containers.init_pid(f"cri-o://{ID}", proc)


def test_an_id_naming_two_runtimes_cgroups_is_refused(tmp_path):
    proc = _proc(tmp_path, [(95, 1, 11, _v2(f"{SLICE}/docker-{ID}.scope")),
                            (97, 1, 12, _v2(f"{SLICE}/cri-containerd-{ID}.scope"))])
    with pytest.raises(containers.ContainerNotFound, match="ambiguous: its ID names the cgroups"):
        containers.init_pid(ID, proc)


@pytest.mark.parametrize("bad", ["", "containerd://", "containerd://3f3f3f3f3f3f", "cri-o://" + "g" * 64,
                                 "docker://" + ID + "00"])
def test_a_bad_container_id_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="not a container ID"):
        containers.parse_id(bad)


def test_the_error_travels_as_an_errno_with_its_words():
    from mirror_py_agent.relay import errno_name, error_text

    exc = containers.ContainerNotFound("container x is ambiguous")
    assert (errno_name(exc), error_text(exc)) == ("ESRCH", "container x is ambiguous")
