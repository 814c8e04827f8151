"""The C-level layer on aarch64, for real: Debian's arm64 interpreter and libcurl under qemu-user
(tests/arm64.py). What tests/unit/test_c_layer.py shows on x86_64 — the slots found, a call through the gate
into Python and back to libc with its errno, the closed gate, uninstall — shown with the aarch64 relocation
numbers, gate and instruction-cache sync. No session: decisions are made local by the settings, and libcurl
fetches from an HTTP server of this test's process (qemu's sockets are this kernel's)."""

from __future__ import annotations

import errno
import http.server
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import arm64

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="qemu-user runs Linux binaries")

PRELUDE = """
import ctypes, json, socket, sys
from mirror_py.shim import cnet, elf, got, patches, settings
from tests import ccurl
settings.reset({"outgoing": {"enabled": False}, "dns": {"enabled": False}})
patches.install()
entered = []
def counting(handler):
    def hook(original, *args):
        entered.append(1)
        return handler(original, *args)
    return hook
cnet.connect = counting(cnet.connect)
"""


def run(code: str, *args: str) -> dict:
    try:
        argv = arm64.python_argv()
    except arm64.Missing as exc:
        pytest.fail(str(exc))
    proc = subprocess.run([*argv, "-c", PRELUDE + textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = b"hello from the host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_layer_knows_the_machine_and_finds_the_slots_of_each_relocation_kind():
    out = run("""
    curl = ccurl.load()
    import sqlite3  # libsqlite3: its table of system calls holds close's address (R_AARCH64_ABS64)
    def found(library, symbols):
        obj = next(o for o in elf.loaded().objects if library in o.name)
        return sorted({(s.symbol, s.kind) for s in elf.slots(obj, frozenset(symbols))})
    print(json.dumps({"machine": elf._machine(), "supported": got.supported(),
                      "curl": found("libcurl", ["connect", "getaddrinfo", "freeaddrinfo"]),
                      "sqlite": found("libsqlite3", ["close"])}))
    """)
    assert out["machine"] == "aarch64" and out["supported"]
    # libcurl's own calls out, each through a PLT slot (R_AARCH64_JUMP_SLOT).
    assert [tuple(s) for s in out["curl"]] == [("connect", "jump_slot"), ("freeaddrinfo", "jump_slot"),
                                               ("getaddrinfo", "jump_slot")]
    assert ["close", "abs64"] in out["sqlite"]


def test_libcurl_calls_through_the_gate_into_python_and_back_to_libc(server):
    """Through the open gate: curl's connect enters the Python hook, which calls libc; a refused connect
    reaches curl with libc's errno. Then the gate byte is cleared (what the off switch at exit does, without
    the exit's own Python-level pass-through, so only the machine code keeps C out): curl still works and
    nothing enters Python. Uninstall writes back every slot."""
    out = run("""
    got.install()
    curl = ccurl.load()  # loaded after the layer: routed by the dlopen hook's scan
    slots = [slot for slot, name in got.patched_slots() if "libcurl" in name]
    olds = {p[0]: p[1] for p in got._state.patched}
    ok = ccurl.fetch(curl, sys.argv[1])
    through = len(entered)
    refused = ccurl.fetch(curl, f"http://127.0.0.1:{sys.argv[2]}/")
    got._set_gate(False)
    entered.clear()
    closed = ccurl.fetch(curl, sys.argv[1])
    got.uninstall()
    restored = all(ctypes.c_uint64.from_address(slot).value == olds[slot] for slot in slots)
    print(json.dumps({"slots": len(slots), "ok": ok, "through": through, "refused": refused,
                      "closed": closed, "closed_entered": len(entered), "restored": restored,
                      "left": len(got.patched_slots())}))
    """, server, str(_closed_port()))
    assert out["slots"] >= 3
    assert (out["ok"]["code"], out["ok"]["status"], out["ok"]["body"]) == (0, 200, "hello from the host")
    assert out["through"] >= 1, "curl's connect did not go through the hook"
    assert (out["refused"]["code"], out["refused"]["errno"]) == (7, errno.ECONNREFUSED), out["refused"]
    assert (out["closed"]["code"], out["closed"]["body"]) == (0, "hello from the host")
    assert out["closed_entered"] == 0
    assert out["restored"] and out["left"] == 0


def test_a_targets_stat_is_written_in_aarch64s_struct_stat():
    """The stat family from C (cfiles.py) writes the target's stat into the caller's buffer: on aarch64 it must be
    byte for byte what the machine's own libc writes there for the same file, in 128 bytes, not x86_64's 144."""
    out = run("""
    import os
    from mirror_py.shim import cfiles
    path = sys.argv[1].encode()
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(b"\\xab" * 256, 256)
    rc = libc.stat(ctypes.c_char_p(path), buf)
    st = os.stat(path)
    ours = cfiles.pack_stat([st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                             st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_blksize, st.st_blocks,
                             st.st_rdev])
    written = len(buf.raw.rstrip(b"\\xab"))
    print(json.dumps({"rc": rc, "libc": buf.raw[:written].hex(), "ours": ours.hex()}))
    """, str(ROOT / "setup.cfg"))
    assert out["rc"] == 0
    assert len(out["ours"]) // 2 == 128
    assert out["ours"] == out["libc"].ljust(len(out["ours"]), "0")  # the tail libc wrote may end in zeros
