"""The kubeconfig as kubectl reads it, against the sandbox API server: several files in KUBECONFIG."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
import yaml

from .conftest import MIRROR_PY, ROOT, sandbox_cluster


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(ROOT / "examples" / "k8s" / "sandbox.yaml")


def _mirror(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MIRROR_PY, *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=str(ROOT))


def test_a_context_of_the_second_kubeconfig_file(cluster, tmp_path):
    """The sandbox's context lives in the second file, with its CA as a file named relative to that file; the
    first file sets the current context. Before, only the first file was read."""
    sandbox = yaml.safe_load(open(cluster.kubeconfig))
    (tmp_path / "work").mkdir()
    (tmp_path / "kind" / "pki").mkdir(parents=True)
    first = tmp_path / "work" / "config"
    first.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "elsewhere", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "work", "context": {"cluster": "elsewhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {"token": "x"}}],
    }))
    entry = sandbox["clusters"][0]
    (tmp_path / "kind" / "pki" / "ca.crt").write_bytes(base64.b64decode(entry["cluster"].pop(
        "certificate-authority-data")))
    entry["cluster"]["certificate-authority"] = "pki/ca.crt"
    sandbox.pop("current-context")
    second = tmp_path / "kind" / "config"
    second.write_text(yaml.safe_dump(sandbox))
    out = _mirror({"KUBECONFIG": f"{first}{os.pathsep}{second}"}, "ls", "--request-timeout", "10")
    assert out.returncode == 0, out.stderr
    assert "deployment/api" in out.stdout
