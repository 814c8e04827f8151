"""The kubeconfig's private key never lands on disk, and a signal during start-up cleans up what was placed."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

MANIFEST = ROOT / "examples" / "k8s" / "sandbox.yaml"


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST)


@pytest.fixture
def with_client_key(cluster, tmp_path):
    """The sandbox's client-certificate context: its key is given as ``client-key-data``, as cloud kubeconfigs
    give it, which is what the client library writes to the temp directory. Returns (key bytes, TMPDIR)."""
    config = yaml.safe_load(open(cluster.kubeconfig))
    user = next(c["context"]["user"] for c in config["contexts"] if c["name"] == "sandbox-cert")
    data = next(u["user"]["client-key-data"] for u in config["users"] if u["name"] == user)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    return base64.b64decode(data), tmpdir


def _files_holding(directory: Path, secret: bytes) -> list[str]:
    body = secret.split(b"-----")[2].strip()  # the base64 body, whatever the line endings
    found = []
    for path in directory.rglob("*"):
        try:
            if path.is_file() and body[:64] in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def _start(cluster, tmpdir: Path, command: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig, TMPDIR=str(tmpdir))
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.Popen([*MIRROR_PY, command, "--context", "sandbox-cert", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT), start_new_session=True)


def test_the_private_key_is_never_on_disk_even_when_killed(cluster, with_client_key):
    key, tmpdir = with_client_key
    app = "import time; print('up', flush=True); time.sleep(60)"
    proc = _start(cluster, tmpdir, "exec", "--target", "deploy/api", "--", sys.executable, "-c", app)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up", proc.stderr.read() if proc.stderr else ""
        assert _files_holding(tmpdir, key) == []
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.communicate()
    assert _files_holding(tmpdir, key) == []


def test_sigterm_during_start_up_cleans_up_and_says_so(cluster, with_client_key):
    key, tmpdir = with_client_key
    # An agent interpreter that never says hello keeps the session in its start: a job has been placed by then.
    sleeper = tmpdir.parent / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    os.chmod(sleeper, 0o755)
    proc = _start(cluster, tmpdir, "exec", "--target", "deploy/api", "--agent-mode", "job", "--agent-python",
                  str(sleeper), "--", sys.executable, "-c", "pass")
    try:
        deadline = time.monotonic() + 60
        while not _agent_jobs(cluster) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _agent_jobs(cluster), "the job was never created"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM before the app started; nothing was left behind" in err
    assert "Traceback" not in err
    assert _agent_jobs(cluster) == []
    assert _files_holding(tmpdir, key) == []


def _agent_jobs(cluster) -> list[str]:
    return [j["metadata"]["name"] for j in cluster.store.list("jobs", "staging")
            if j["metadata"]["name"].startswith("mirror-py-")]
