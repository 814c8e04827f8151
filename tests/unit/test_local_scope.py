"""Local blocks and ending interposition, without a target.

A local block is a routing decision scoped to a thread or task: each decision function answers "local" inside
it and the target's answer outside, in the same process at the same time. Ending interposition
(``shim.uninstall``) is total and idempotent whatever surfaces were installed, and ``MirrorSession.close()``
runs every one of its steps even when one fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {
    "outgoing": {"enabled": True},
    "dns": {"enabled": True},
    "incoming": {"mode": "mirror"},
    "fs": {"mode": "write"},
}


@pytest.fixture
def shim_settings():
    """The decision modules with settings of their own, put back afterwards."""
    from mirror_py.shim import files, settings

    settings.reset(SETTINGS)
    files.reset()
    yield
    settings.reset()
    files.reset()


def _decisions() -> dict:
    """What each routing decision answers here and now (True: the target's)."""
    from mirror_py.shim import dns, files, incoming, net
    from mirror_py.shim.file_rules import REMOTE

    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        return {
            "tcp": net.plan(tcp, ("10.9.8.7", 80)) is not None,
            "udp": net.plan(udp, ("10.9.8.7", 53), "udp") is not None,
            "dns": dns.remote_name("db.svc.cluster.local", 5432) is not None,
            "file_read": files._decide("/srv/app/config.yaml", False)[0] == REMOTE,
            "file_write": files._decide("/srv/app/out.txt", True)[0] == REMOTE,
            "listen": incoming.remote_port(8080) is not None,
        }


REMOTE_ALL = {"tcp": True, "udp": True, "dns": True, "file_read": True, "file_write": True, "listen": True}
LOCAL_ALL = dict.fromkeys(REMOTE_ALL, False)


def test_every_decision_is_local_inside_a_block_and_the_targets_outside(shim_settings):
    from mirror_py.shim.scope import local

    assert _decisions() == REMOTE_ALL
    with local():
        assert _decisions() == LOCAL_ALL
        with local():
            assert _decisions() == LOCAL_ALL
        assert _decisions() == LOCAL_ALL  # leaving an inner block keeps the outer one
    assert _decisions() == REMOTE_ALL


def test_a_block_is_the_calling_threads_only(shim_settings):
    from mirror_py.shim.scope import local

    inside, other_done = threading.Event(), threading.Event()
    seen: dict = {}

    def in_block() -> None:
        with local():
            inside.set()
            other_done.wait(10)  # the other thread decides while this one is in its block
            seen["block"] = _decisions()

    def other() -> None:
        inside.wait(10)
        seen["other"] = _decisions()
        other_done.set()

    threads = [threading.Thread(target=in_block), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"block": LOCAL_ALL, "other": REMOTE_ALL}


def test_one_block_object_shared_by_threads(shim_settings):
    from mirror_py.shim.scope import local

    block = local()
    first_in, second_left = threading.Event(), threading.Event()
    seen: dict = {}

    def first() -> None:
        with block:
            first_in.set()
            second_left.wait(10)  # the other thread entered and left the same object meanwhile
            seen["first"] = _decisions()

    def second() -> None:
        first_in.wait(10)
        with block:
            seen["second"] = _decisions()
        seen["second_after"] = _decisions()
        second_left.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"first": LOCAL_ALL, "second": LOCAL_ALL, "second_after": REMOTE_ALL}


def test_a_thread_started_in_a_block_is_not_local(shim_settings):
    # threading.Thread starts with an empty context: the rule the docs state.
    from mirror_py.shim.scope import local

    seen: dict = {}
    with local():
        t = threading.Thread(target=lambda: seen.update(child=_decisions()))
        t.start()
        t.join(10)
    assert seen == {"child": REMOTE_ALL}


def test_tasks_created_in_a_block_are_local_others_are_not(shim_settings):
    from mirror_py.shim.scope import local

    async def decide_later() -> dict:
        await asyncio.sleep(0)
        return _decisions()

    @local()
    async def decorated() -> dict:
        await asyncio.sleep(0)
        return _decisions()

    async def main() -> tuple:
        outside = asyncio.ensure_future(decide_later())
        with local():
            inside = asyncio.ensure_future(decide_later())
        async with local():
            in_async_with = _decisions()
        return await inside, await outside, await decorated(), in_async_with, _decisions()

    assert asyncio.run(main()) == (LOCAL_ALL, REMOTE_ALL, LOCAL_ALL, LOCAL_ALL, REMOTE_ALL)


def test_decorated_function_is_local_for_each_call(shim_settings):
    from mirror_py.shim.scope import local

    @local()
    def decide() -> dict:
        return _decisions()

    assert decide() == LOCAL_ALL
    assert decide() == LOCAL_ALL
    assert _decisions() == REMOTE_ALL
    assert decide.__name__ == "decide"


# ------------------------------------------------------------------------------------------- uninstall
UNINSTALL = r"""
import json, os, sys
case = sys.argv[1]
assert "socket" not in sys.modules, "the test needs an interpreter that has not imported socket"
mode = {"files": "read", "socket": "local", "both": "read", "nothing": "read"}[case]
os.environ["MIRROR_PY_SHIM_SETTINGS"] = json.dumps({"fs": {"mode": mode}})
import builtins, io
from mirror_py import shim
from mirror_py.shim.patches import FILE_SURFACE, HOST_SURFACE, SOCKET_SURFACE

def snapshot():
    out = {}
    for p in FILE_SURFACE + HOST_SURFACE + SOCKET_SURFACE:
        owner = sys.modules.get(p.module)
        if owner is not None and p.owner is not None:
            owner = getattr(owner, p.owner, None)  # a row this Python lacks
        if owner is not None:
            out[(p.module, p.owner, p.name)] = vars(owner).get(p.name)
    sets = tuple(frozenset(map(id, getattr(os, n))) for n in ("supports_fd", "supports_dir_fd",
                                                               "supports_follow_symlinks"))
    return out, sets, list(sys.meta_path)

if case in ("socket", "both"):
    import socket
before = snapshot()
result = {}
if case != "nothing":
    shim.install()
    result["installed"] = shim.active()
errors = []
for _ in range(2):
    try:
        shim.uninstall()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
result["errors"] = errors
after = snapshot()
result["restored"] = after[0] == before[0] and all(after[0][k] is v for k, v in before[0].items())
result["sets_restored"] = after[1] == before[1]
result["meta_path_restored"] = after[2] == before[2]
result["open_is_io_open"] = builtins.open is io.open
import socket
result["socket_untouched"] = socket.socket.__dict__.get("connect") is None and not shim.active()
shim.install()  # a second session in the same process starts from a clean slate
result["reinstalled"] = shim.active()
shim.uninstall()
result["active_after"] = shim.active()
print(json.dumps(result))
"""


@pytest.mark.parametrize("case", ["files", "socket", "both", "nothing"])
def test_uninstall_is_total_and_idempotent_whatever_was_installed(case):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", UNINSTALL, case], capture_output=True, text=True, timeout=60,
                         env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {"errors": [], "restored": True, "sets_restored": True, "meta_path_restored": True,
                "open_is_io_open": True, "socket_untouched": True, "reinstalled": True, "active_after": False}
    if case != "nothing":
        expected["installed"] = True
    assert result == expected


# ------------------------------------------------------------------------------------------------ close()
def test_close_restores_the_environment_and_stops_the_session_when_uninstall_fails(monkeypatch):
    from mirror_py import shim
    from mirror_py.api import _MISSING, MirrorSession

    def broken() -> None:
        raise KeyError("mirror_py.shim.net")

    monkeypatch.setattr(shim, "uninstall", broken)
    monkeypatch.setenv("MIRROR_PY_SCOPE_TEST", "from-the-pod")
    monkeypatch.setenv("MIRROR_PY_SCOPE_TEST_OLD", "from-the-pod")
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # ends at stdin's EOF
    session = MirrorSession(proc, {}, {"MIRROR_PY_SCOPE_TEST": _MISSING, "MIRROR_PY_SCOPE_TEST_OLD": "laptop"})
    try:
        with pytest.raises(KeyError):
            session.close()
        assert "MIRROR_PY_SCOPE_TEST" not in os.environ
        assert os.environ["MIRROR_PY_SCOPE_TEST_OLD"] == "laptop"
        assert proc.poll() is not None
        session.close()  # closed: nothing to do, nothing raised
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
