"""The agent's file operations: confinement to the target's root, parity with the kernel, chunked content,
and the operations over the real protocol on the oldest Python the agent supports."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror_py_agent import files
from mirror_py_agent import protocol as p
from tests import pythons

from . import agent_files_checks

ROOT = Path(__file__).resolve().parents[2]
OLDEST = pythons.AGENT_VERSIONS[0]

EXPECTED = {
    "read_through_link_root": {"ok": "inside"},
    "read_through_link_up": {"ok": "inside"},
    "read_outside_by_dotdot": {"err": "ENOENT"},
    "read_outside_by_link_up": {"err": "ENOENT"},
    "read_outside_by_relative_link": {"err": "ENOENT"},
    "read_outside_by_absolute_link": {"err": "ENOENT"},
    "read_abs_etc": {"ok": "inside"},
    "read_nested_up": {"ok": "data"},
    "read_dir_link": {"ok": "data"},
    "read_host_hostname": {"err": "ENOENT"},
    "loop": {"err": "ELOOP"},
    "notdir": {"err": "ENOTDIR"},
    "stat_root_via_up": {"ok": True},
    "lstat_link": {"ok": "0o120000"},
    "readlink": {"ok": "../../.."},
    "realpath_up": {"ok": "/etc"},
    "realpath_missing": {"ok": "/data/x/y"},
    "realpath_abs_outside": {"ok": None},  # filled in below: the outside path, as text, inside the root
    "listdir_link_root": None,
    "listdir_dotdot": None,
    "scandir_link_root_target_is_root": True,
    "scandir_esc_target": "ENOENT",
    "mkdir_inside": True,
    "create_through_dangling_link": [True, False],
    "rename_inside": True,
    "symlink_inside": "/",
    "unlink_outside_by_link": {"err": "ENOENT"},
    "outside_untouched": "OUTSIDE",
    "rmdir_via_link": {"ok": None},
    "made_removed": True,
    "truncate_outside": {"err": "ENOENT"},
    "chmod_outside": {"err": "ENOENT"},
    "outside_mode": "0o644",
    "link_outside_by_relative_link": {"err": "ENOENT"},
    "link_outside_by_absolute_link": {"err": "ENOENT"},
    "link_outside_by_dotdot": {"err": "ENOENT"},
    "link_inside": True,
    "link_nofollow_is_the_symlink": "../outside/secret",
    "chown_outside": {"err": "ENOENT"},
    "setxattr_outside": {"err": "ENOENT"},
    "removexattr_outside": {"err": "ENOENT"},
    "statvfs_outside": {"err": "ENOENT"},
    "statvfs_inside": {"ok": 11},
    "mkfifo_inside": "0o10640",
    "outside_listing": ["secret"],
}


def _check(out: dict, base: Path) -> None:
    root_listing = sorted(os.listdir(base / "root"))
    for key, want in EXPECTED.items():
        if key in ("listdir_link_root", "listdir_dotdot"):
            # Listed before the writes below: the names the hostile tree started with.
            assert out[key]["ok"] == sorted(set(root_listing) - {"made", "moved.txt", "newlink", "hard", "fifo",
                                                                  "hard_symlink", "created_through_link"}
                                            | {"data"}), key
        elif key == "realpath_abs_outside":
            assert out[key] == {"ok": str(base / "outside" / "secret")}, key
        else:
            assert out[key] == want, key


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_paths_never_escape_the_root(tmp_path, umask022):
    out = agent_files_checks.run(str(tmp_path))
    _check(out, tmp_path)
    assert files.root().kernel


def test_paths_never_escape_the_root_on_the_oldest_agent_python(tmp_path):
    proc = subprocess.run([_oldest_python(), str(Path(agent_files_checks.__file__)), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    _check(json.loads(proc.stdout), tmp_path)


def _tree(tmp_path: Path) -> Path:
    base = tmp_path / "t"
    (base / "d" / "sub").mkdir(parents=True)
    (base / "d" / "a.txt").write_text("alpha")
    (base / "d" / "big.bin").write_bytes(os.urandom(3 * files.CHUNK + 17))
    os.symlink("a.txt", base / "d" / "rel")
    os.symlink("sub", base / "d" / "dirlink")
    os.symlink("missing", base / "d" / "dangling")
    return base


@pytest.mark.parametrize("path", ["/d/a.txt", "/d/rel", "/d/dirlink", "/d/sub/..", "/d/./sub/", "/d",
                                  "/d/dangling", "/d/missing", "/d/a.txt/x", "/d/rel/", "/"])
@pytest.mark.parametrize("follow", [True, False])
def test_confined_resolution_agrees_with_the_kernel_on_benign_paths(tmp_path, path, follow):
    base = _tree(tmp_path)

    def outcome(fn):
        try:
            return fn()
        except OSError as exc:
            return errno.errorcode[exc.errno]

    files.set_root(str(base))
    try:
        confined = outcome(lambda: files.call({"fn": "stat", "path": path, "follow": follow}))
        listing = outcome(lambda: sorted(files.call({"fn": "listdir", "path": path})))
        real = outcome(lambda: files.call({"fn": "realpath", "path": path}))
    finally:
        files.set_root("/")
    kernel_path = str(base) + path
    kernel = outcome(lambda: files.stat_list(os.stat(kernel_path, follow_symlinks=follow)))
    if isinstance(kernel, list):  # the listing read the directory since: leave out the access time
        del kernel[7], confined[7]
    assert confined == kernel
    assert listing == outcome(lambda: sorted(os.listdir(kernel_path)))
    inside = os.path.realpath(kernel_path)[len(str(base)):]
    assert real == (inside or "/")


def test_big_file_is_read_in_chunks_on_a_handle(tmp_path):
    base = _tree(tmp_path)
    want = (base / "d" / "big.bin").read_bytes()
    first = files.call({"fn": "open", "path": str(base / "d" / "big.bin"), "flags": os.O_RDONLY})
    assert len(first["data"]) == files.CHUNK and not first["eof"] and first["h"]
    data = bytearray(first["data"])
    while True:
        chunk = files.call({"fn": "read", "h": first["h"], "off": len(data), "size": files.CHUNK})
        data += chunk["data"]
        if chunk["eof"]:
            break
    files.call({"fn": "close", "h": first["h"]})
    assert bytes(data) == want
    with pytest.raises(OSError) as info:
        files.call({"fn": "read", "h": first["h"], "off": 0})
    assert info.value.errno == errno.EBADF
    before = files.stat_list(os.stat(base / "d" / "a.txt"))
    small = files.call({"fn": "open", "path": str(base / "d" / "a.txt"), "flags": os.O_RDONLY})
    # The stat is the one right after open(2), before the read that may set the access time.
    assert small == {"st": before, "dir": False, "data": b"alpha", "eof": True, "h": None}


def test_create_modes_apply_the_apps_umask(tmp_path):
    target = tmp_path / "new"
    reply = files.call({"fn": "open", "path": str(target), "flags": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                        "mode": 0o666, "umask": 0o027, "fetch": False})
    assert reply["h"] is None
    old = os.umask(0)
    os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o666 & ~0o027 & ~old
    with pytest.raises(FileExistsError):
        files.call({"fn": "open", "path": str(target), "flags": os.O_WRONLY | os.O_CREAT | os.O_EXCL})


def _oldest_python() -> str:
    python = pythons.find(OLDEST)
    if python is None:
        pytest.skip(pythons.missing_reason(OLDEST))
    return python


@pytest.mark.parametrize("which", ["running", "oldest"])
def test_fs_over_the_protocol(tmp_path, which):
    from .test_agent_fuzz import Agent

    python = sys.executable if which == "running" else _oldest_python()

    (tmp_path / "f.txt").write_text("over the wire")
    agent = Agent(python)
    try:
        assert "fs" in agent.hello.capabilities
        reply = agent.request("fs", {"fn": "open", "path": str(tmp_path / "f.txt"), "flags": os.O_RDONLY})
        assert isinstance(reply, p.Reply) and reply.result["data"] == b"over the wire"
        err = agent.request("fs", {"fn": "stat", "path": str(tmp_path / "nope")})
        assert isinstance(err, p.ErrorReply) and err.errno == "ENOENT"
        bad = agent.request("fs", {"fn": "nope"})
        assert isinstance(bad, p.ErrorReply) and bad.errno == "EINVAL"
        listing = agent.request("fs", {"fn": "scandir", "path": str(tmp_path)})
        assert [e[0] for e in listing.result] == ["f.txt"] and listing.result[0][1] == "f"
        assert listing.result[0][4] == os.stat(tmp_path / "f.txt").st_ino
    finally:
        agent.close_stdin()
        agent.wait_exit()
