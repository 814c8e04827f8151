"""PYTHONPATH mode, a shared session daemon, and interpreters started with -I through the .pth hook."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from .conftest import MIRROR_PY, ROOT

SHIM = str(ROOT / "sitecustomize_shim")
APP = (
    "import json, os, subprocess, sys, urllib.request\n"
    "body = json.loads(urllib.request.urlopen('http://api.pod.internal:8081/p', timeout=10).read())\n"
    "child = subprocess.run([sys.executable, '-c', 'import urllib.request; "
    "print(urllib.request.urlopen(\"http://api.pod.internal:8081/c\", timeout=10).status)'],"
    " capture_output=True, text=True).stdout.strip()\n"
    "print(json.dumps({'server': body['server'], 'child': child, 'env': os.environ.get('POD_ONLY'),"
    " 'session': os.environ.get('MIRROR_PY_SESSION')}))\n"
)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_") and k != "POD_ONLY"}
    env.update(extra)
    return env


def _wait_gone(path: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(path):
            return True
        time.sleep(0.1)
    return False


def test_pythonpath_mode_starts_a_shared_session_that_ends_with_the_app(pod):
    env = _clean_env(PYTHONPATH=SHIM, MIRROR_PY_TARGET=f"pid/{pod.pid}")
    out = subprocess.run([sys.executable, "-c", APP], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["server"] == "loopback" and result["child"] == "200" and result["env"] == "from-the-pod"
    # The child used the parent's session (it inherited MIRROR_PY_SESSION); once both exited, it ends.
    assert _wait_gone(result["session"]), "the session outlived the last process using it"


def test_session_daemon_shared_by_two_processes(pod):
    base = _clean_env(PYTHONPATH=str(ROOT))
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}"], capture_output=True,
                           text=True, timeout=60, env=base)
    assert start.returncode == 0, start.stderr
    env = dict(base)
    for line in start.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    assert env["MIRROR_PY_FETCH_ENV"] == "1" and "s3cr3t" not in start.stdout  # no secret through the shell
    try:
        procs = [subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
        for result in results:
            assert result["server"] == "loopback" and result["env"] == "from-the-pod"
            assert result["session"] == env["MIRROR_PY_SESSION"]
        status = subprocess.run([*MIRROR_PY, "session", "status"], capture_output=True, text=True, env=env)
        assert status.stdout.startswith(f"target pid/{pod.pid}"), status.stdout + status.stderr
    finally:
        stop = subprocess.run([*MIRROR_PY, "session", "stop"], capture_output=True, text=True, env=env)
    assert "unset MIRROR_PY_SESSION" in stop.stdout, stop.stderr
    assert _wait_gone(env["MIRROR_PY_SESSION"])


def test_isolated_interpreter_through_the_pth_hook(pod):
    base = _clean_env(PYTHONPATH=str(ROOT))
    subprocess.run([*MIRROR_PY, "install-hook"], check=True, capture_output=True, env=base)
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}"], capture_output=True,
                           text=True, timeout=60, env=base)
    env = dict(base)
    try:
        assert start.returncode == 0, start.stderr
        for line in start.stdout.splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                env[name] = shlex.split(value)[0]
        code = ("import json, os, urllib.request; print(json.dumps([urllib.request.urlopen("
                "'http://api.pod.internal:8081/i', timeout=10).status, os.environ.get('POD_ONLY')]))")
        out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [200, "from-the-pod"], out.stderr
    finally:
        subprocess.run([*MIRROR_PY, "session", "stop"], capture_output=True, env=env)
        subprocess.run([*MIRROR_PY, "uninstall-hook"], check=True, capture_output=True, env=base)
