"""Whatever is wrong with the Kubernetes configuration is one clear line: no traceback, no library noise."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

GOOD_CONTEXT = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
"""

CASES = {
    "bad-yaml": ("apiVersion: v1\nclusters: [\n  - bad", "it is not valid YAML (expected the node content"),
    "wrong-shape": ("apiVersion: v1\nkind: Config\nclusters: 5\ncontexts: 5\ncurrent-context: x\n",
                    "it is malformed (TypeError"),
    "failing-exec-plugin": (GOOD_CONTEXT + "users:\n- name: u\n  user:\n    exec:\n"
                            "      apiVersion: client.authentication.k8s.io/v1beta1\n"
                            "      command: sh\n      args: [-c, 'echo token expired >&2; exit 3']\n",
                            "its exec credential plugin failed (exec: process returned 3. token expired"),
}


def _ls(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*MIRROR_PY, "ls", "--request-timeout", "5"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=str(ROOT))


def _one_clear_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # no traceback, no "ERROR:root:" or urllib3 lines
    assert lines[0].startswith("mirror-py: error: ")
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_kubeconfig_is_one_line(tmp_path, case):
    text, expected = CASES[case]
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    line = _one_clear_line(_ls({"KUBECONFIG": str(path)}))
    assert f"kubeconfig {path}" in line or f"of {path}" in line, line
    assert expected in line, line


def test_in_cluster_variables_without_a_token_are_one_line(tmp_path):
    env = {"KUBECONFIG": str(tmp_path / "missing"), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": "1"}
    line = _one_clear_line(_ls(env))
    assert "the in-cluster configuration cannot be used (Service token file does not exist" in line, line


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(ROOT / "examples" / "k8s" / "sandbox.yaml")


def test_insecure_skip_tls_verify_works_without_warnings(cluster, tmp_path):
    config = yaml.safe_load(open(cluster.kubeconfig))
    for entry in config["clusters"]:
        entry["cluster"].pop("certificate-authority", None)
        entry["cluster"].pop("certificate-authority-data", None)
        entry["cluster"]["insecure-skip-tls-verify"] = True
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    out = _ls({"KUBECONFIG": str(path)})
    assert out.returncode == 0, out.stderr
    assert "deployment/api" in out.stdout
    assert out.stderr == ""
