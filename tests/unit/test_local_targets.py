"""Local target resolution: the agent command line for each kind, and clear errors for bad names."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mirror_py.errors import MirrorError
from mirror_py.transport import local
from mirror_py_agent import bootstrap


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_container_targets_exec_the_agent_with_stdin_attached(engine, monkeypatch):
    monkeypatch.setattr(local.shutil, "which", lambda name: f"/usr/bin/{name}")
    target = local.resolve(f"{engine}/api")
    argv = target.agent_argv(bootstrap.command("python3"))
    assert argv[:4] == [f"/usr/bin/{engine}", "exec", "-i", "api"]
    assert argv[4:7] == ["python3", "-I", "-c"]
    assert target.env_pid == 1


def test_container_engine_missing(monkeypatch):
    monkeypatch.setattr(local.shutil, "which", lambda name: None)
    with pytest.raises(MirrorError, match="podman is not installed"):
        local.resolve("podman/api")


def test_pid_target_runs_mirror_pys_python_in_net_and_uts_namespaces_only():
    """Never the target's mount namespace nor its python3: the agent is host root there. It is placed like a
    job agent instead (files, environment and resolver files through /proc/PID)."""
    target = local.resolve(f"pid/{os.getpid()}")
    assert target.argv_prefix[1:] == ("-t", str(os.getpid()), "-n", "-u", "--")
    assert target.python == sys.executable
    assert target.root_pid == os.getpid()
    argv = target.agent_argv(bootstrap.command(target.python))
    assert argv[len(target.argv_prefix):][:2] == [sys.executable, "-I"]


def test_the_agent_refuses_to_enter_a_mount_namespace():
    from mirror_py_agent import placement

    with pytest.raises(ValueError, match="never enters the target's mount namespace"):
        placement.enter(os.getpid(), ["net", "mnt"])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("pid/abc", "is not a process ID"),
        ("pid/", "has no name"),
        ("netns/../x", "invalid network namespace name"),
        ("vm/x", "unknown target kind 'vm'"),
    ],
)
def test_bad_targets(path, message):
    with pytest.raises(MirrorError, match=message):
        local.resolve(path)


def test_an_exited_but_unreaped_pid_is_not_running():
    """A target that died while its parent has not reaped it yet still has a /proc entry; it must read as gone,
    not as a permissions problem with its namespaces."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        child.kill()
        deadline = time.monotonic() + 5
        while not local._is_zombie(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(MirrorError, match=f"no process with PID {child.pid} is running"):
            local.resolve(f"pid/{child.pid}")
    finally:
        child.wait()
