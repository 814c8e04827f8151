"""The examples run as their READMEs say, against the sandbox cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.sandbox import postgres

from .conftest import ROOT


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script)], capture_output=True, text=True, timeout=300,
                          cwd=str(ROOT))


def test_service_example_uses_the_pods_config_redis_and_postgres():
    try:
        major = postgres.major_version()  # what the example's manifest will start
    except postgres.NoPostgres as exc:
        pytest.fail(f"the service example needs a PostgreSQL server: {exc}")
    out = _run("examples/service/run.py")
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout[out.stdout.index("{"):])
    assert answer["greeting"] == "hello from staging"
    assert answer["env"] == "staging"
    assert answer["pod"].startswith("api-")
    assert answer["visits"] >= 1
    assert answer["database"].startswith(f"postgres {major}."), answer["database"]


def test_quickstart():
    out = _run("examples/quickstart/run.py")
    assert out.returncode == 0, out.stdout + out.stderr
    direct, mirrored = out.stdout.split("$ mirror-py exec", 1)
    assert "APP_ENV       (not set)" in direct and "redis         unreachable" in direct
    assert "APP_ENV       staging" in mirrored and "redis         +PONG" in mirrored
    assert "api service   greeting: hello from staging" in mirrored


def test_pytest_suite_example_with_xdist():
    out = subprocess.run([sys.executable, str(ROOT / "examples/pytest_suite/run.py"), "-n", "2"], capture_output=True,
                         text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout and "warning" not in out.stdout.lower()


def test_notebook_example():
    out = _run("examples/notebook/run.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mirror-py: connected to pid/" in out.stdout
    assert "loopback api from-the-pod api-7d9f" in out.stdout
    assert "restored True True" in out.stdout
