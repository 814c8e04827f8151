"""Files opened by name from C (cfiles.py): a local path costs libc's call and no round trip, a remote stat is
written in this machine's ``struct stat`` layout, and the rows of the surface match their handlers."""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import stat as stat_mod
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GOT patching is Linux-only")


def run(code: str, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=str(cwd), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_local_and_relative_paths_from_c_go_to_libc_without_a_round_trip(tmp_path):
    """libsqlite3 opening, stat'ing and probing a database under the temporary directory (local by default)
    and by a relative path, with files in read mode: every call passes through the hooks and none reaches the
    session."""
    out = run("""
    import json, os, sqlite3, tempfile
    from mirror_py.shim import cfiles, files, got, rpc, settings
    settings.reset({"outgoing": {"enabled": False}, "dns": {"enabled": False}, "fs": {"mode": "read"}})
    calls, seen = [], []
    def no_session(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a round trip for a local path")
    rpc.call = no_session
    remote = cfiles._remote
    def counting(path, *args):
        seen.append(path)
        return remote(path, *args)
    cfiles._remote = counting
    got.install()
    local = os.path.join(tempfile.gettempdir(), f"cfiles-unit-{os.getpid()}.db")
    for name in (local, "relative.db"):
        conn = sqlite3.connect(name)
        conn.execute("create table t (n)")
        conn.execute("insert into t values (1)")
        conn.commit()
        rows = conn.execute("select n from t").fetchall()
        conn.close()
        os.unlink(name)
    got.uninstall()
    print(json.dumps({"calls": len(calls), "seen": sorted({p.decode() for p in seen if p}), "rows": rows,
                      "remote_fds": len(files._fds)}))
    """, tmp_path)
    assert out["calls"] == 0
    assert out["rows"] == [[1]]
    assert out["remote_fds"] == 0
    # The hooks did run (libsqlite3 makes a relative name absolute itself): the paths were decided, local.
    assert any(p.endswith("/relative.db") for p in out["seen"]) and any("cfiles-unit-" in p for p in out["seen"])


def test_a_relative_path_is_libcs_before_any_rule_is_read(monkeypatch):
    from mirror_py.shim import cfiles, files

    monkeypatch.setattr(files, "_rules", [])
    monkeypatch.setattr(files, "rules", lambda: pytest.fail("the rules were read for a relative path"))
    assert cfiles.open(lambda *a: 7, b"data/app.db", os.O_RDWR | os.O_CREAT, 0o644) == 7
    assert cfiles.stat(lambda *a: 0, b"app.db", None) == 0
    assert cfiles.fopen(lambda *a: 1234, b"x.pem", b"r") == 1234


def test_remote_stat_is_written_in_this_machines_struct_stat(monkeypatch, tmp_path):
    """The pod's stat list packed by STAT_LAYOUTS reads back as libc's own stat of the same values would: the
    packer is checked against a real ``stat`` call first, then fed the agent's list for a remote path."""
    from mirror_py.shim import cfiles, file_rules, files

    size = cfiles.STAT_LAYOUTS[cfiles.machine()][0]
    real = tmp_path / "real"
    real.write_bytes(b"x" * 1234)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    assert libc.stat(str(real).encode(), buf) == 0
    st = os.stat(real)
    agent_list = [st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns,
                  st.st_mtime_ns, st.st_ctime_ns, st.st_blksize, st.st_blocks, st.st_rdev]
    assert cfiles.pack_stat(agent_list) == buf.raw  # the layout is this kernel's

    pod = [stat_mod.S_IFREG | 0o640, 77, 42, 1, 1000, 1000, 5555, 1_700_000_000_123_456_789,
           1_700_000_001_000_000_001, 1_700_000_002_000_000_002, 4096, 16, 0]
    asked = []

    def fake_call(fn, shown=None, *args, **kwargs):
        asked.append((fn, kwargs))
        return pod

    monkeypatch.setattr(files, "_call", fake_call)
    monkeypatch.setattr(files, "_rules", [file_rules.FileRules({"mode": "read"}, local_dirs=())])
    out = ctypes.create_string_buffer(size)

    def libc_stat(*args):
        raise AssertionError("a remote path reached libc")

    assert cfiles.stat(libc_stat, b"/srv/pod-only/file", ctypes.addressof(out)) == 0
    assert asked == [("stat", {"path": "/srv/pod-only/file", "follow": True})]
    assert out.raw == cfiles.pack_stat(pod)
    packer = cfiles.stat_struct(cfiles.machine())
    names = [name for name, _, _ in sorted(cfiles.STAT_LAYOUTS[cfiles.machine()][1], key=lambda f: f[1])]
    fields = dict(zip(names, packer.unpack(out.raw)))
    assert (fields["mode"], fields["size"], fields["ino"], fields["dev"]) == (pod[0], 5555, 77, 42)
    assert (fields["mtime"], fields["mtime_nsec"]) == (1_700_000_001, 1)


def test_resolver_configuration_read_from_c_stays_local(monkeypatch):
    """c-ares reads resolv.conf, nsswitch.conf and hosts with fopen; Python reads the pod's resolv.conf, C the
    laptop's, whose name servers the DNS layer answers with the pod's resolver."""
    from mirror_py.shim import cfiles, file_rules, files

    monkeypatch.setattr(files, "_rules", [file_rules.FileRules({"mode": "read"}, local_dirs=())])
    monkeypatch.setattr(files, "_call", lambda *a, **k: pytest.fail("a round trip for resolver configuration"))
    assert files.rules().decide("/etc/resolv.conf") == file_rules.REMOTE  # for Python
    for path in (b"/etc/resolv.conf", b"/etc/nsswitch.conf", b"/etc/hosts"):
        assert cfiles.fopen(lambda *a: 99, path, b"r") == 99
        assert cfiles.stat(lambda *a: 0, path, None) == 0


def test_a_path_the_rules_declare_missing_fails_with_enoent(monkeypatch):
    from mirror_py.shim import cfiles, file_rules, files

    monkeypatch.setattr(files, "_rules", [file_rules.FileRules({"mode": "read", "not_found": ["^/srv/gone"]},
                                                               local_dirs=())])
    ctypes.set_errno(0)
    assert cfiles.open(lambda *a: pytest.fail("reached libc"), b"/srv/gone/x", os.O_RDONLY, 0) == -1
    assert ctypes.get_errno() == 2


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_both_stat_layouts_have_their_kernel_size(arch):
    from mirror_py.shim import cfiles

    assert cfiles.stat_struct(arch).size == {"x86_64": 144, "aarch64": 128}[arch]


def test_every_file_row_has_a_handler_taking_its_arguments():
    from mirror_py.shim import cfiles
    from mirror_py.shim.c_surface import C_SURFACE

    rows = [h for h in C_SURFACE if h.handler.startswith("cfiles.")]
    assert {h.symbol for h in rows} >= {"open", "open64", "openat", "__open_2", "fopen", "fopen64", "stat",
                                        "lstat", "fstatat", "__xstat", "__lxstat", "__fxstatat", "access"}
    for hook in rows:
        handler = getattr(cfiles, hook.handler.split(".", 1)[1])
        assert len(inspect.signature(handler).parameters) == len(hook.argtypes) + 1, hook.symbol


@pytest.mark.parametrize(("mode", "flags"), [
    (b"r", os.O_RDONLY), (b"rb", os.O_RDONLY), (b"r+", os.O_RDWR), (b"w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    (b"a+", os.O_RDWR | os.O_CREAT | os.O_APPEND), (b"wxe", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL
                                                   | os.O_CLOEXEC), (b"rb,ccs=UTF-8", os.O_RDONLY), (b"q", None),
])
def test_fopen_modes(mode, flags):
    from mirror_py.shim import cfiles

    assert cfiles._fopen_flags(mode) == flags
