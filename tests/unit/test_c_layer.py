"""The C-level layer's mechanics, in a child interpreter of its own (it writes GOT slots of the process):
which slots it finds, that uninstalling puts back exactly what was there, errno through a hook, and that a
decision made in Python reaches C. No session: decisions are made local by the settings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GOT patching is Linux-only")


def run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRELUDE = """
import ctypes, json, socket
from mirror_py.shim import got, patches, settings
settings.reset({"outgoing": {"enabled": False}, "dns": {"enabled": False}})
patches.install()
"""


def test_install_routes_libpqs_slots_and_uninstall_restores_every_one():
    out = run("""
    got.install()
    import psycopg2  # loaded after the layer: routed by the dlopen hook's scan
    slots = got.patched_slots()
    values = {slot: ctypes.c_uint64.from_address(slot).value for slot, _ in slots}
    olds = {p[0]: p[1] for p in got._state.patched}
    libpq = sorted({name.rsplit("/", 1)[-1].split("-")[0] for _, name in slots if "libpq" in name})
    symbols = sorted({s.symbol for o in __import__("mirror_py.shim.elf", fromlist=["x"]).loaded().objects
                      if "libpq" in o.name for s in __import__("mirror_py.shim.elf", fromlist=["x"]).slots(
                          o, frozenset(["connect", "getaddrinfo", "freeaddrinfo"]))})
    got.uninstall()
    restored = all(ctypes.c_uint64.from_address(slot).value == olds[slot] for slot in values)
    print(json.dumps({"libpq": libpq, "symbols": symbols, "restored": restored,
                      "interpreter": [name for _, name in slots if "libpython" in name or "lib-dynload" in name],
                      "left": len(got.patched_slots())}))
    """)
    assert out["libpq"] == ["libpq"]
    assert out["symbols"] == ["connect", "freeaddrinfo", "getaddrinfo"]
    assert out["restored"] and out["left"] == 0
    # In the interpreter's own objects only dlopen is routed (imports and ctypes.CDLL rescan).
    assert all("libpython" in n or "lib-dynload" in n for n in out["interpreter"])


def test_a_local_decision_reaches_libc_with_its_errno():
    """libpq connecting to a closed local port: the layer decides local, libc answers ECONNREFUSED, libpq
    reports it as it would without mirror-py."""
    out = run("""
    got.install()
    import psycopg2
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    try:
        psycopg2.connect(host="127.0.0.1", port=port, connect_timeout=5)
        error = None
    except psycopg2.OperationalError as exc:
        error = str(exc)
    print(json.dumps({"error": error, "routed": len(got.patched_slots())}))
    """)
    assert out["routed"] > 0
    assert "Connection refused" in out["error"]


def test_gate_closed_sends_c_straight_to_libc():
    """The off switch at exit: with the gate closed, no hook runs (a hook that would fail is not entered)."""
    out = run("""
    got.install()
    import psycopg2
    from mirror_py.shim import cnet
    entered = []
    cnet.connect = lambda original, *a: entered.append(1) or -1
    got.at_exit()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    try:
        psycopg2.connect(host="127.0.0.1", port=port, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        error = str(exc)
    print(json.dumps({"entered": len(entered), "error": error}))
    """)
    assert out["entered"] == 0
    assert "Connection refused" in out["error"]
