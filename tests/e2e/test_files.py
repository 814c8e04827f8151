"""The pod's files through the ordinary Python file APIs: parity between a probe run natively inside a sandbox
pod and the same probe run through mirror-py from the host.

The pod here has files that exist only in its mount namespace (under /etc/config, /srv/pod-data and
/run/secrets), symlinks, a private directory and a 0600 file, so any read that leaked to the host would
fail or differ.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, run_mirror
from tests.sandbox.netpod import Network, Pod, PodSpec

PROBE = str(Path(__file__).with_name("file_probe.py"))
CONFIGS = Path(__file__).with_name("configs")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _files(ca_pem: bytes) -> dict:
    return {
        "/etc/config/app.yaml": "name: pod\nreplicas: 3\nlast line\n",
        "/etc/config/app.json": json.dumps({"from": "pod", "n": [1, 2, 3]}),
        "/etc/config/app.toml": '[server]\nport = 8080\nname = "pod"\n',
        "/etc/config/app.ini": "[db]\nhost = db.pod.internal\nport = 5432\n",
        "/etc/config/binary.bin": bytes(range(256)) * 64,
        "/etc/config/crlf.txt": "line1\r\nline2\rline3\n",
        "/etc/config/latin1.txt": "caf\xe9 cr\xe8me".encode("latin-1"),
        "/etc/config/ca.pem": ca_pem,
        "/run/secrets/kubernetes.io/serviceaccount/token": "pod-token-123",
        "/srv/pod-data/tree/a.txt": "alpha\n",
        "/srv/pod-data/tree/.hidden": "hidden\n",
        "/srv/pod-data/tree/sub/b.txt": "beta\n",
        "/srv/pod-data/tree/sub/secret.txt": "secret\n",
        "/srv/pod-data/tree/sub/deeper/c.bin": bytes(range(32)),
        "/srv/pod-data/private/inner.txt": "inner\n",
        "/srv/pod-data/jail/etc/config/app.yaml": "name: jail\n",
        "/srv/pod-data/scratch/.keep": "",
    }


SETUP = """
set -e
cd /srv/pod-data
ln -s tree/a.txt link-a
ln -s /srv/pod-data/tree link-tree
ln -s missing dangling
ln -s loop loop
chmod 600 tree/sub/secret.txt
chmod 700 private
chmod 777 scratch
ln -s / jail/escape-root
ln -s ../../../.. jail/escape-up
ln -s /etc/hostname jail/etc/hostname-link
"""


@pytest.fixture(scope="module")
def fpod(network: Network) -> Pod:
    pod = network.add_pod(PodSpec(name="files", hostname="files-5c8d", servers=False,
                                  files=_files(Path(network.ca_file).read_bytes())))
    pod.exec_output(["sh", "-c", SETUP])
    yield pod
    pod.close()


@pytest.fixture
def through(fpod: Pod, tmp_path: Path):
    """The probe from the host through mirror-py, with the pod as target."""

    def run(name: str, *args: str, extra: list[str] | None = None, env: dict | None = None,
            prefix: list[str] | None = None, cwd: str | None = None) -> dict:
        full_env = {"PROBE_LOCAL_DIR": str(tmp_path), **(env or {})}
        res = run_mirror(f"pid/{fpod.pid}", [*(prefix or []), sys.executable, PROBE, name, *args], extra=extra,
                         env=full_env, cwd=cwd)
        assert res.code == 0, f"mirror-py exited {res.code}: {res.stderr}"
        return res.json

    return run


@pytest.fixture
def native(fpod: Pod):
    """The same probe inside the pod: what the app would see deployed there."""

    def run(name: str, *args: str, prefix: list[str] | None = None) -> dict:
        out = fpod.exec_output([*(prefix or [sys.executable]), PROBE, name, *args],
                               extra_env={"PROBE_LOCAL_DIR": "/tmp"})
        return json.loads(out.strip().splitlines()[-1])

    return run


def _write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mirror-py.toml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("probe", ["read_apis", "metadata", "listings", "errors"])
def test_read_surface_parity(through, native, probe):
    remote = through(probe)
    assert remote == native(probe)


def test_reads_are_the_pods_not_the_hosts(through):
    out = through("read_apis")
    assert out["text"] == "name: pod\nreplicas: 3\nlast line\n"
    assert out["name"] == "/etc/config/app.yaml" and out["mode"] == "r"
    assert out["binary"][0] == 256 * 64
    assert out["os_write_on_read_only"] == ["OSError", 9]  # EBADF: the fd is read-only, as on the real file
    meta = through("metadata")
    assert meta["/etc/config/app.yaml"]["stat"][0] == "-rw-r--r--"
    assert meta["/srv/pod-data/dangling"]["exists"] is False and meta["/srv/pod-data/dangling"]["lexists"]
    assert meta["/etc/config/app.yaml/x"]["stat"] == ["NotADirectoryError", 20]
    listing = through("listings")
    assert sorted(listing["listdir"]) == [".hidden", "a.txt", "sub"]


def test_errors_are_the_pods(through):
    out = through("errors")
    assert out["missing"] == ["FileNotFoundError", 2]
    assert out["directory"] == ["IsADirectoryError", 21]
    assert out["not_a_directory"] == ["NotADirectoryError", 20]
    assert out["loop"] == ["OSError", 40]
    assert out["str_error"] == ["[Errno 2] No such file or directory: '/etc/config/missing'"]


def test_permission_errors_parity(fpod, native, tmp_path):
    # The agent runs as nobody, as an exec'd agent runs as the container's user; natively the app does. The
    # pod's 0600 file and 0700 directory refuse them alike. The target is a process of nobody in the pod: an
    # agent reads a target's files through /proc/PID/root, which only its own user (or root) may open.
    python = "/usr/bin/python3"
    target = fpod.run([*NOBODY, "sleep", "infinity"])
    try:
        res = run_mirror(f"pid/{target.pid}", [sys.executable, PROBE, "permissions"],
                         extra=["--agent-python", _as_nobody(python)], env={"PROBE_LOCAL_DIR": str(tmp_path)})
    finally:
        target.kill()
        target.wait()
    assert res.code == 0, res.stderr
    remote = res.json
    local = native("permissions", prefix=[*NOBODY, python])
    assert remote == local
    assert remote["read"] == ["PermissionError", 13]
    assert remote["listdir_private"] == ["PermissionError", 13]


def _as_nobody(python: str) -> str:
    wrapper = Path("/tmp/mirror-py-test-python-as-nobody")
    wrapper.write_text(f"#!/bin/sh\nexec {' '.join(NOBODY)} {python} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def test_fd_consumers_parity(through, native, fpod):
    remote = through("fd_consumers", "/etc/config/ca.pem")
    assert remote == native("fd_consumers", "/etc/config/ca.pem")
    assert remote["mmap"][0] == 256 * 64
    assert remote["mmap_write_refused"][0] == "PermissionError"
    assert remote["json"] == {"from": "pod", "n": [1, 2, 3]}
    assert remote["tomllib"] == {"server": {"port": 8080, "name": "pod"}}
    assert remote["configparser"] == {"db": {"host": "db.pod.internal", "port": "5432"}}
    assert remote["ssl_cadata"] == 1 and remote["ssl_cafile_by_fd"] == 1
    assert remote["copies"]["copytree"] == [".hidden", "a.txt", "sub", "sub/b.txt", "sub/deeper",
                                            "sub/deeper/c.bin"]


def test_write_mode_parity_and_writes_land_in_the_pod(through, native, tmp_path):
    config = _write_config(tmp_path, '[fs]\nmode = "write"\n')
    try:
        local = native("write_apis", "native")
        remote = through("write_apis", "through", extra=["--config", config])
        assert remote == local
        assert remote["after_a"] == "hello\nworld\nappended\n"
        assert remote["flushed_visible"] == "flushed"
        assert remote["exclusive"] == ["FileExistsError", 17]
        assert remote["rmdir_not_empty"] == ["OSError", 39]
        # What the app wrote through mirror-py is in the pod, and not on the host.
        seen = native("read_file", "/srv/pod-data/scratch/through/w.txt")
        assert seen == {"content": remote["contents"]["w.txt"]}
        assert not os.path.exists("/srv/pod-data")
    finally:
        native("cleanup", "native")
        native("cleanup", "through")


def test_read_mode_keeps_writes_local(through):
    # Default mode "read": the pod's directory is read from the pod, but creating a file in it happens on the
    # host, where /srv/pod-data does not exist.
    assert through("read_file", "/srv/pod-data/tree/a.txt") == {"content": "alpha\n"}
    assert through("write_file", "/srv/pod-data/scratch/new.txt", "x") == {"write": ["FileNotFoundError", 2]}
    assert not os.path.exists("/srv/pod-data")


def test_read_only_and_read_write_rules_in_each_mode(through, native, tmp_path):
    write_mode = _write_config(tmp_path, '[fs]\nmode = "write"\nread_only = ["^/srv/pod-data/scratch/ro"]\n')
    read_mode = tmp_path / "read.toml"
    read_mode.write_text('[fs]\nread_write = ["^/srv/pod-data/scratch/rw"]\n')
    try:
        assert through("write_file", "/srv/pod-data/scratch/ro.txt", "x", extra=["--config", write_mode]) == {
            "write": ["FileNotFoundError", 2]}
        assert through("write_file", "/srv/pod-data/scratch/rw.txt", "rw", extra=["--config", str(read_mode)]) == {
            "write": 2}
        assert native("read_file", "/srv/pod-data/scratch/rw.txt") == {"content": "rw"}
    finally:
        native("cleanup", "rw.txt")


def test_python_aware_defaults(through, tmp_path):
    local_file = tmp_path / "only-on-the-host.txt"
    local_file.write_text("host file")
    out = through("defaults", str(local_file), cwd=str(tmp_path))
    assert out == {
        "shim_active": True,
        "own_source": Path(PROBE).read_text()[:100],
        "cwd_file": "host file",
        "cwd_relative": "host file",
        "venv_cfg": os.path.exists(os.path.join(sys.prefix, "pyvenv.cfg")),
        "stdlib": True,
        "proc_self_pid": True,
        "hostname": "files-5c8d",
        "hosts_has_pod": True,
        "pod_config": "name: pod\nreplicas: 3\nlast line\n",
        "tempdir": "temp",
        "token": "pod-token-123",
    }


def test_not_found_local_and_mapping_rules(through, tmp_path):
    config = _write_config(tmp_path, "\n".join([
        "[fs]",
        'not_found = ["^/etc/config/app\\\\.ini$"]',
        'local = ["^/etc/hostname$"]',
        "[fs.mapping]",
        '"^/config(/|$)" = "/etc/config\\\\1"',
    ]) + "\n")
    out = through("rules_probe", extra=["--config", config])
    host_name = Path("/etc/hostname").read_text().strip()
    assert out == {
        "not_found": ["FileNotFoundError", 2],
        "not_found_exists": False,
        "local_rule": host_name,
        "mapped": "name: pod\nreplicas: 3\nlast line\n",
        "mapped_listing": ["app.ini", "app.json", "app.toml", "app.yaml", "binary.bin", "ca.pem", "crlf.txt",
                           "latin1.txt"],
        "still_remote": json.dumps({"from": "pod", "n": [1, 2, 3]}),
    }


def test_mode_local_turns_files_off(through, tmp_path):
    config = _write_config(tmp_path, '[fs]\nmode = "local"\n')
    out = through("read_file", "/etc/config/app.yaml", extra=["--config", config])
    assert out == {"content": ["FileNotFoundError", 2]}
    out = through("read_file", "/etc/hostname", extra=["--config", config])
    assert out == {"content": Path("/etc/hostname").read_text()}


def test_agent_root_confines_every_path(through, fpod):
    # The job placement serves files from /proc/<pid>/root; here a directory of the pod plays that root, with
    # symlinks to / and to ../../.. inside it. Nothing outside the jail is reachable.
    env = {"MIRROR_PY_AGENT_FS_ROOT": "/srv/pod-data/jail"}
    for path in ("/etc/config/app.yaml", "/escape-root/etc/config/app.yaml", "/escape-up/etc/config/app.yaml",
                 "/../../../etc/config/app.yaml"):
        assert through("read_file", path, env=env) == {"content": "name: jail\n"}, path
    assert through("read_file", "/etc/hostname-link", env=env) == {"content": ["FileNotFoundError", 2]}
    assert through("read_file", "/escape-up/srv/pod-data/tree/a.txt", env=env) == {
        "content": ["FileNotFoundError", 2]}


def test_pid_agent_resolves_paths_inside_the_targets_root(through, native):
    # A pid/ agent serves files from /proc/<pid>/root, as the job placement does, and resolves every path inside
    # it: symlinks to / and to ../../.. in the pod, and a path full of "..", reach the pod's files exactly as
    # the kernel resolves them in the pod, never the host's.
    for path in ("/srv/pod-data/jail/etc/config/app.yaml", "/srv/pod-data/jail/escape-root/etc/config/app.yaml",
                 "/srv/pod-data/jail/escape-up/etc/config/app.yaml", "/../../../etc/config/app.yaml",
                 "/srv/pod-data/jail/etc/hostname-link", "/srv/pod-data/jail/escape-up/srv/pod-data/tree/a.txt"):
        assert through("read_file", path) == native("read_file", path), path
    assert through("read_file", "/srv/pod-data/jail/escape-root/etc/config/app.yaml") == {
        "content": "name: pod\nreplicas: 3\nlast line\n"}
    assert through("read_file", "/srv/pod-data/jail/etc/hostname-link") == {"content": "files-5c8d\n"}


def test_config_rejects_a_bad_regex(tmp_path):
    config = _write_config(tmp_path, '[fs]\nlocal = ["(unclosed"]\n')
    res = run_mirror("pid/1", [sys.executable, "-c", "pass"], extra=["--config", config], cwd=str(ROOT))
    assert res.code != 0
    assert "fs.local[0]" in res.stderr and "regular expression" in res.stderr


# ------------------------------------------------------------------------- the rest of the file surface
def test_ownership_links_fifos_xattrs_and_fd_changes_land_in_the_pod(through, native, tmp_path):
    # Write mode: os.chown/lchown, os.link, os.mkfifo/mknod, os.setxattr/removexattr, os.statvfs, io.FileIO and
    # fchmod/fchown/ftruncate on an fd act in the pod exactly as they do natively there.
    config = _write_config(tmp_path, '[fs]\nmode = "write"\n')
    try:
        local = native("meta_writes", "native")
        remote = through("meta_writes", "through", extra=["--config", config])
        assert remote == local
        assert remote["chown"] == [65534, 65534, 1]
        assert remote["link"] == [3, True, "0123456789"]
        assert remote["mkfifo"] == "prw-r-----"
        assert remote["getxattr"] == "b'pod'" and remote["removexattr"] == ["OSError", 61]
        assert remote["by_fd_before_close"][:3] == ["-rw----r--", 3, 4]  # seen in the pod before the close
        assert remote["ftruncate_append"] == "first+after"
        assert remote["fileio"] == ["through FileIO", "FileIO", True, True]
        assert remote["fileio_opener"] == ["the app's own opener", "-rw-------"]
        # Checked in the pod itself, with the plainest calls, and absent from the host.
        base = "/srv/pod-data/scratch/through"
        seen = native("describe", f"{base}/f.txt", f"{base}/fifo", f"{base}/hard", f"{base}/fileio.bin")
        assert seen[f"{base}/f.txt"] == {"mode": "-rw-r-----", "uid": 4, "gid": 4, "nlink": 3, "content": "01",
                                         "xattrs": {"user.origin": "pod"}}
        assert seen[f"{base}/fifo"]["mode"] == "prw-r-----"
        assert seen[f"{base}/fileio.bin"]["content"] == "through FileIO"
        assert not os.path.exists("/srv/pod-data")
    finally:
        native("cleanup", "native")
        native("cleanup", "through")


@pytest.mark.parametrize("mode", ["read", "write"])
def test_reading_calls_of_the_rest_of_the_surface_parity(through, native, tmp_path, mode):
    config = _write_config(tmp_path, f'[fs]\nmode = "{mode}"\n')
    remote = through("meta_reads", extra=["--config", config])
    assert remote == native("meta_reads")
    assert remote["fileio"] == ["alpha\n", "rb", "FileIO", True]


def test_read_mode_changes_act_where_their_siblings_do(through, native):
    # Read mode keeps writes local: os.chown, os.link, os.mkfifo... of a pod path act on the host, as os.chmod
    # and os.mkdir do (where /srv/pod-data does not exist). Through an fd of a pod file there is no host file to
    # change: the change is refused as on a read-only mount, and the pod's file is untouched.
    a = "/srv/pod-data/tree/a.txt"
    before = native("describe", a)
    out = through("meta_read_mode")
    missing = ["FileNotFoundError", 2]
    assert out["siblings"] == {name: missing for name in ("chmod", "mkdir", "chown", "lchown", "link", "mkfifo",
                                                          "mknod", "setxattr", "removexattr", "fileio_write")}
    assert out["fd"] == {"fchmod": ["OSError", 30], "fchown": ["OSError", 30], "chmod_fd": ["OSError", 30],
                         "ftruncate": ["OSError", 22], "setxattr_fd": ["OSError", 30], "fstatvfs": True,
                         "listxattr_fd": []}
    assert out["fileio"] == "alpha\n"
    assert native("describe", a) == before == {a: {"mode": "-rw-r--r--", "uid": 0, "gid": 0, "nlink": 1,
                                                   "content": "alpha\n", "xattrs": {}}}
    assert not os.path.exists("/srv/pod-data")


def test_chdir_into_a_pod_directory_is_a_clear_error(through):
    out = through("chdir_remote")
    assert out["error"][:3] == ["OSError", 95, "/srv/pod-data/tree"]
    assert "working directory stays on this machine" in out["error"][3]
    assert out["fchdir"] == ["OSError", 95] and out["chdir_fd"] == ["OSError", 95]
    assert out["after"] == out["before"] and out["local_chdir"] is True


def test_hard_links_stay_inside_the_agent_root(through, native, tmp_path):
    # The existing file of a link is resolved inside the root like any path: a link cannot give a name inside
    # the target to a file outside it.
    config = _write_config(tmp_path, '[fs]\nmode = "write"\n')
    env = {"MIRROR_PY_AGENT_FS_ROOT": "/srv/pod-data/jail"}
    jail = "/srv/pod-data/jail"
    try:
        for src in ("/escape-up/srv/pod-data/tree/a.txt", "/../../tree/a.txt", "/escape-up/tree/a.txt"):
            assert through("link", src, "/linked", extra=["--config", config], env=env) == {
                "link": ["FileNotFoundError", 2]}, src
        assert through("link", "/escape-root/etc/config/app.yaml", "/escape-up/linked", extra=["--config", config],
                       env=env) == {"link": None}
        seen = native("describe", f"{jail}/linked", f"{jail}/etc/config/app.yaml")
        assert seen[f"{jail}/linked"]["content"] == "name: jail\n" and seen[f"{jail}/linked"]["nlink"] == 2
    finally:
        native("remove", f"{jail}/linked")


# --------------------------------------------------------------------- copies taken at import (3.10, 3.13)
def _python(minor: int) -> str | None:
    """An interpreter of 3.<minor> from what the machine has (``python3.<minor>`` on PATH, pyenv's versions),
    checked by running it: a pyenv shim for a version that is not selected exits with an error."""
    candidates = [shutil.which(f"python3.{minor}"),
                  *sorted(glob.glob(f"/root/.pyenv/versions/3.{minor}.*/bin/python3"))]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[1])"], capture_output=True,
                                 text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == str(minor):
            return candidate
    return None


EARLY = '''
import glob, pathlib
saved = {}
for module, owner in ((glob, "_StringGlobber"), (pathlib, "_NormalAccessor")):
    cls = getattr(module, owner, None)
    if cls is not None:
        saved.update({f"{owner}.{name}": value for name, value in vars(cls).items()})
glob._probe_saved = saved
'''


def _venv_importing_glob_first(python: str, where: Path) -> str:
    """A venv whose site-packages imports glob and pathlib from a .pth file, before sitecustomize installs the
    shim — what an editable install's finder, IPython or the pytest plugin's early imports do."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, capture_output=True)
    site = next(where.glob("lib/python3.*/site-packages"))
    (site / "probe_early.py").write_text(EARLY)
    (site / "probe_early.pth").write_text("import probe_early\n")
    return str(where / "bin" / "python")


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
@pytest.mark.parametrize("early", [True, False], ids=["glob-imported-first", "glob-imported-after"])
def test_globbing_is_remote_however_early_glob_was_imported(fpod, native, tmp_path, minor, early):
    python = _python(minor)
    if python is None:
        pytest.skip(f"no Python 3.{minor} on this machine (python3.{minor} on PATH or a pyenv version)")
    if early:
        python = _venv_importing_glob_first(python, tmp_path / "venv")
    res = run_mirror(f"pid/{fpod.pid}", [python, PROBE, "aliases"], env={"PROBE_LOCAL_DIR": str(tmp_path)})
    assert res.code == 0, res.stderr
    out = res.json
    pods = native("globs")
    assert pods["path_rglob"] == ["/srv/pod-data/tree/.hidden", "/srv/pod-data/tree/a.txt",
                                  "/srv/pod-data/tree/sub", "/srv/pod-data/tree/sub/b.txt",
                                  "/srv/pod-data/tree/sub/deeper", "/srv/pod-data/tree/sub/deeper/c.bin",
                                  "/srv/pod-data/tree/sub/secret.txt"]
    nothing = {key: [] for key in pods}  # the host has no /srv/pod-data
    assert out["imported_before_the_shim"] is early
    assert out["installed"] == [True, True, pods]
    assert out["uninstalled"] == [True, nothing]
    assert out["reinstalled"] == [True, pods]
    if early:
        assert out["restored_identically"] is True
    expected = {10: ["pathlib._NormalAccessor." + n for n in (
        "chmod", "link", "listdir", "mkdir", "open", "readlink", "realpath", "rename", "replace", "rmdir",
        "scandir", "stat", "symlink", "unlink")],
        13: ["glob._StringGlobber.lstat", "glob._StringGlobber.scandir"]}.get(minor, [])
    assert out["aliases"] == expected
