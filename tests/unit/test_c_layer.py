"""The C-level layer's mechanics, in a child interpreter of its own (it writes GOT slots of the process):
which slots it finds, that uninstalling puts back exactly what was there, errno through a hook, and that a
decision made in Python reaches C. No session: decisions are made local by the settings."""

from __future__ import annotations

import json
import os
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


ENTRY_POINTS_APP = """
import json, sys, ssl
from mirror_py.shim import clayer

def active():
    got = sys.modules.get("mirror_py.shim.got")
    return bool(got and got.is_active())

out = {"after import ssl": active()}
context = ssl.create_default_context()
for label, cafile in (("local cafile", sys.argv[1]), ("pod cafile", "/run/secrets/pod-ca.crt")):
    try:
        context.load_verify_locations(cafile=cafile)
    except Exception:
        pass  # neither file exists: only whether the layer was activated first matters here
    out[label] = active()
clayer.uninstall()
out["wrapper left after uninstall"] = "load_verify_locations" in vars(ssl.SSLContext)
print(json.dumps(out))
"""


def test_importing_ssl_costs_no_scan_and_a_pod_cafile_activates_the_layer_first(tmp_path):
    """Every asyncio or requests app imports ssl: that alone must not activate the layer (a ctypes import and a
    scan of every object). A call that hands OpenSSL a file the target serves does, before OpenSSL opens it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_")}
    env.update(PYTHONPATH=str(ROOT / "sitecustomize_shim"), MIRROR_PY_SESSION=str(tmp_path / "none.sock"),
               MIRROR_PY_SHIM_LIB=str(ROOT), MIRROR_PY_SHIM_SETTINGS=json.dumps({"fs": {"mode": "read"}}),
               MIRROR_PY_INTERPOSE_C_EXTENSIONS="1")
    proc = subprocess.run([sys.executable, "-c", ENTRY_POINTS_APP, str(tmp_path / "local-ca.pem")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "after import ssl": False, "local cafile": False, "pod cafile": True, "wrapper left after uninstall": False}
