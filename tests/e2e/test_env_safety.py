"""A target's environment cannot run commands on the laptop through the programs the app starts.

The pod below sets what a hostile image would: ``BASH_ENV`` (every ``bash -c`` sources it) and
``GIT_CONFIG_*`` (``git status`` runs ``core.fsmonitor``). Both point at commands that leave a marker file on
the laptop. The app runs ``bash -c true`` and ``git status`` under mirror-py: no marker may appear, and mirror-py
says once which variables it kept. Naming one in ``env.include`` takes it, as the user asked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.sandbox.netpod import PodSpec

from .conftest import run_mirror

APP = r"""
import json, os, subprocess, sys
repo = sys.argv[1]
subprocess.run(["bash", "-c", "true"], check=True)
subprocess.run(["git", "-C", repo, "status", "--short"], check=True, capture_output=True)
print(json.dumps({"BASH_ENV": os.environ.get("BASH_ENV"), "GIT_CONFIG_COUNT": os.environ.get("GIT_CONFIG_COUNT"),
                  "POD_ONLY": os.environ.get("POD_ONLY")}))
"""


@pytest.fixture(scope="module")
def traps(tmp_path_factory):
    base = tmp_path_factory.mktemp("env-safety")
    script = base / "bash-env.sh"
    script.write_text(f"touch {base}/bash-ran\n")
    repo = base / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return base, script, repo


@pytest.fixture(scope="module")
def hostile_pod(network, traps):
    base, script, _ = traps
    return network.add_pod(PodSpec(name="hostile-env", servers=False, env={
        "POD_ONLY": "from-the-pod",
        "BASH_ENV": str(script),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.fsmonitor",
        "GIT_CONFIG_VALUE_0": f"touch {base}/git-ran; true",
    }))


def _run(pod, repo, extra=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASH_ENV", "GIT_"))}
    return run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", APP, str(repo)], extra=list(extra), env=env)


def test_shell_and_git_variables_of_the_target_stay_local(hostile_pod, traps):
    base, _, repo = traps
    res = _run(hostile_pod, repo)
    assert res.code == 0, res.stderr
    assert res.json == {"BASH_ENV": None, "GIT_CONFIG_COUNT": None, "POD_ONLY": "from-the-pod"}
    assert not (base / "bash-ran").exists()
    assert not (base / "git-ran").exists()
    notes = [line for line in res.stderr.splitlines() if "kept" in line]
    assert notes == ["mirror-py: kept 4 of the target's environment variables on this machine: BASH_ENV, "
                     "GIT_CONFIG_COUNT, GIT_CONFIG_KEY_0, GIT_CONFIG_VALUE_0 (they change how programs here "
                     "load code, find credentials or write files; name one in env.include to take it)"]


def test_include_takes_a_named_variable(hostile_pod, traps, tmp_path):
    base, _, repo = traps
    cfg = tmp_path / "mirror.toml"
    cfg.write_text('[env]\ninclude = ["BASH_ENV", "POD_*"]\n')
    res = _run(hostile_pod, repo, ["--config", str(cfg)])
    assert res.code == 0, res.stderr
    assert res.json["BASH_ENV"] is not None
    assert (base / "bash-ran").exists()  # the user asked for it
    assert not (base / "git-ran").exists()
    (base / "bash-ran").unlink()
