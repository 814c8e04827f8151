"""The target's environment, child processes, fork, and a user's own sitecustomize."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .conftest import PROBE, run_mirror

NAMES = ("DATABASE_URL", "POD_ONLY", "SECRET_TOKEN", "HOME", "PYTHONPATH", "LOCAL_ONLY")


def test_target_variables_are_visible_and_protected_ones_stay_local(through):
    out = through("env", *NAMES, env={"LOCAL_ONLY": "laptop", "HOME": "/laptop-home"})
    assert out["DATABASE_URL"] == "postgres://db.pod.internal/app"
    assert out["POD_ONLY"] == "from-the-pod"
    assert out["SECRET_TOKEN"] == "s3cr3t"
    assert out["LOCAL_ONLY"] == "laptop"  # variables the pod does not set are kept
    assert out["HOME"] == "/laptop-home"  # never taken from the target
    assert "/pod/python" not in (out["PYTHONPATH"] or "")


def test_exclude_include_override(through, tmp_path):
    cfg = tmp_path / "env.toml"
    cfg.write_text('[env]\nexclude = ["SECRET_*"]\noverride = { DATABASE_URL = "sqlite://" }\n')
    out = through("env", *NAMES, extra=["--config", str(cfg)], env={"SECRET_TOKEN": "local-secret"})
    assert out["SECRET_TOKEN"] == "local-secret"
    assert out["DATABASE_URL"] == "sqlite://"
    assert out["POD_ONLY"] == "from-the-pod"

    cfg.write_text('[env]\ninclude = ["POD_*"]\n')
    out = through("env", *NAMES, extra=["--config", str(cfg)])
    assert out["POD_ONLY"] == "from-the-pod"
    assert out["DATABASE_URL"] is None and out["SECRET_TOKEN"] is None


def test_no_env_flag_keeps_the_local_environment(through):
    out = through("env", *NAMES, extra=["--no-env"])
    assert out["POD_ONLY"] is None


def test_python_child_processes_are_interposed(through):
    out = through("child_process", "http://api.pod.internal:8081/child")
    assert out["child"] == {"body": {**out["child"]["body"], "server": "loopback"}, "env": "from-the-pod"}
    assert out["child"]["body"]["path"] == "/child"


def test_forked_children_are_interposed_with_their_own_session_connection(through):
    out = through("forked", "http://api.pod.internal:8081/fork")
    assert out == {"parent": "loopback", "child": "loopback", "after": "loopback"}


def test_users_sitecustomize_still_runs(pod):
    usersite = str(Path(__file__).with_name("usersite"))
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, PROBE, "user_sitecustomize"],
                     env={"PYTHONPATH": usersite})
    assert res.code == 0, res.stderr
    out = res.json
    assert out["marker"] == "yes"
    assert out["module"].startswith(usersite)


def test_exit_code_is_the_commands(pod):
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", "import sys; sys.exit(7)"])
    assert res.code == 7


def test_nothing_is_left_behind(pod):
    before = set(os.listdir("/tmp"))
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", "import os; print(os.environ['MIRROR_PY_SESSION'])"])
    session_socket = res.stdout.strip()
    assert res.code == 0
    assert not os.path.exists(session_socket)
    assert not os.path.exists(os.path.dirname(session_socket))
    leftovers = {n for n in set(os.listdir("/tmp")) - before if n.startswith("mirror-py-")}
    assert not leftovers


def test_c_networking_module_gets_one_warning(pod):
    fake = str(Path(__file__).with_name("cnet"))
    # With the C-level layer off (with it on, psycopg2 is interposed and nothing is said: test_c_extensions.py).
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", "import psycopg2; import psycopg2; print('ok')"],
                     env={"PYTHONPATH": fake, "MIRROR_PY_INTERPOSE_C_EXTENSIONS": "0"})
    assert res.code == 0 and res.stdout.strip() == "ok", res.stderr
    warnings = [line for line in res.stderr.splitlines() if "psycopg2 does its networking in C" in line]
    assert len(warnings) == 1 and "asyncpg or pg8000" in warnings[0]


def test_fs_mode_flag(pod):
    code = "print(open('/etc/hostname').read().strip())"
    remote = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", code])
    local = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", code], extra=["--fs-mode", "local"])
    assert remote.code == 0 and local.code == 0, remote.stderr + local.stderr
    assert remote.stdout.strip() == "api-7d9f"
    assert local.stdout.strip() == open("/etc/hostname").read().strip()
