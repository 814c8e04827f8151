"""Which paths are the target's: the decision table of the file shim, and its start-up cost."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mirror_py.config import ConfigError, load_config, shim_settings
from mirror_py.shim import file_rules
from mirror_py.shim.file_rules import LOCAL, NOT_FOUND, REMOTE, FileRules

ROOT = Path(__file__).resolve().parents[2]


def rules(mode: str = "read", local_dirs: tuple = ("/work/app", "/venv"), **lists) -> FileRules:
    return FileRules({"mode": mode, **lists}, local_dirs=local_dirs, home="/home/dev")


@pytest.mark.parametrize(("path", "read", "write"), [
    ("/etc/config/app.yaml", REMOTE, LOCAL),  # read mode: reads remote, writes local
    ("/var/run/secrets/kubernetes.io/serviceaccount/token", REMOTE, LOCAL),
    ("/run/secrets/kubernetes.io/serviceaccount/token", REMOTE, LOCAL),  # /run is local, /run/secrets not
    ("/run/user/0/bus", LOCAL, LOCAL),
    ("/etc/hosts", REMOTE, LOCAL),
    ("/proc/self/status", LOCAL, LOCAL),
    ("/sys/class/net", LOCAL, LOCAL),
    ("/dev/null", LOCAL, LOCAL),
    ("/tmp/x", LOCAL, LOCAL),
    ("/usr/lib/python3.11/os.py", LOCAL, LOCAL),
    ("/lib64/ld-linux-x86-64.so.2", LOCAL, LOCAL),
    ("/usrx/file", REMOTE, LOCAL),  # prefixes match whole components only
    ("/work/app/settings.json", LOCAL, LOCAL),  # the project (cwd, sys.path)
    ("/work/app", LOCAL, LOCAL),
    ("/work/application/x", REMOTE, LOCAL),
    ("/venv/lib/site-packages/x.txt", LOCAL, LOCAL),
    ("/srv/app/module.py", LOCAL, LOCAL),  # the interpreter's own kinds of files
    ("/srv/app/ext.cpython-311-x86_64-linux-gnu.so", LOCAL, LOCAL),
    ("/srv/app/pyvenv.cfg", LOCAL, LOCAL),
    ("/home/dev/.kube/config", NOT_FOUND, NOT_FOUND),  # the laptop's cloud credentials
    ("/home/dev/.config/gcloud/credentials.db", NOT_FOUND, NOT_FOUND),
    ("/home/dev/.bashrc", LOCAL, LOCAL),
    ("relative/path.txt", LOCAL, LOCAL),
    ("/usr/../etc/passwd", REMOTE, LOCAL),  # decided on the normalised path
    ("/etc//config/./app.yaml", REMOTE, LOCAL),
    ("//etc/hosts", REMOTE, LOCAL),
])
def test_default_decisions(path, read, write):
    r = rules()
    assert (r.decide(path), r.decide(path, write=True)) == (read, write)


def test_write_mode_sends_writes_but_keeps_read_only_defaults():
    r = rules("write")
    assert r.decide("/etc/config/app.yaml", write=True) == REMOTE
    assert r.decide("/etc/hosts", write=True) == LOCAL  # remote read-only by default
    assert r.decide("/etc/hosts") == REMOTE
    assert r.decide("/tmp/x", write=True) == LOCAL


def test_mode_local_turns_everything_off():
    r = rules("local")
    assert not r.enabled
    assert r.decide("/etc/config/app.yaml") == LOCAL
    assert r.decide("/home/dev/.kube/config") == LOCAL


def test_user_lists_in_order_not_found_read_write_read_only_local():
    r = rules(
        not_found=[r"^/etc/config/secret"],
        read_write=[r"^/etc/config/"],
        read_only=[r"^/data/"],
        local=[r"\.log$", r"^/etc/config/secret-but-local"],
    )
    assert r.decide("/etc/config/secret.yaml") == NOT_FOUND
    assert r.decide("/etc/config/secret-but-local") == NOT_FOUND  # not_found is asked first
    assert r.decide("/etc/config/app.yaml", write=True) == REMOTE  # read_write even in read mode
    assert r.decide("/data/x", write=True) == LOCAL
    assert r.decide("/data/x") == REMOTE
    assert r.decide("/var/log/app.log") == LOCAL
    assert r.decide("/tmp/forced", write=True) == LOCAL
    # User rules come before the defaults: a local default can be made remote.
    assert rules(read_only=[r"^/tmp/shared/"]).decide("/tmp/shared/x") == REMOTE
    assert rules(not_found=[r"^/proc/"]).decide("/proc/1/status") == NOT_FOUND


def test_mapping_applies_first_and_the_first_match_wins():
    r = rules(mapping=[[r"^/config(/|$)", r"/etc/config\1"], [r"^/config", "/never"], [r"^/home/dev/data/", "/srv/"]])
    assert r.lookup("/config/app.yaml") == (REMOTE, LOCAL, "/etc/config/app.yaml")
    assert r.lookup("/config") == (REMOTE, LOCAL, "/etc/config")
    # Decided on the mapped path: /home is local, /srv is not.
    assert r.lookup("/home/dev/data/x") == (REMOTE, LOCAL, "/srv/x")
    assert rules(mapping={"^/etc/app/": "/tmp/app/"}).lookup("/etc/app/x") == (LOCAL, LOCAL, "/tmp/app/x")


def test_python_defaults_cover_this_interpreter():
    r = FileRules({"mode": "read"})
    for path in (sys.executable, os.__file__, sys.prefix + "/pyvenv.cfg", os.getcwd() + "/anything",
                 tempfile.gettempdir() + "/x", str(ROOT / "mirror_py" / "shim" / "files.py")):
        assert r.decide(path) == LOCAL, path
        assert r.decide(path, write=True) == LOCAL, path
    assert r.decide("/etc/config/app.yaml") == REMOTE


def test_sys_path_entries_added_later_are_local(tmp_path, monkeypatch):
    r = FileRules({"mode": "read"})
    lib = "/opt-like/lib-added-later"
    assert r.decide(lib + "/data.json") == REMOTE
    monkeypatch.setattr(sys, "path", [*sys.path, lib])
    r._cache.clear()
    assert r.decide(lib + "/data.json") == LOCAL


def test_decisions_are_cached_per_path():
    r = rules()
    r.decide("/etc/config/app.yaml")
    assert r._cache["/etc/config/app.yaml"] == (REMOTE, LOCAL, "/etc/config/app.yaml")
    for i in range(file_rules._CACHE_MAX + 5):
        r.decide(f"/x/{i}")
    assert len(r._cache) <= file_rules._CACHE_MAX


def test_bad_mode_is_refused():
    with pytest.raises(ValueError):
        FileRules({"mode": "rw"})


def test_config_section_reaches_the_shim(tmp_path):
    (tmp_path / "mirror-py.toml").write_text(
        '[fs]\nmode = "write"\nlocal = ["^/data/cache/"]\n[fs.mapping]\n"^/cfg/" = "/etc/config/"\n')
    data = shim_settings(load_config(cwd=tmp_path))["fs"]
    r = FileRules(data, local_dirs=(), home="")
    assert r.lookup("/cfg/a") == (REMOTE, REMOTE, "/etc/config/a")
    assert r.decide("/data/cache/x", write=True) == LOCAL


@pytest.mark.parametrize(("text", "key"), [
    ('[fs]\nnot_found = ["("]\n', "fs.not_found[0]"),
    ('[fs]\nread_write = ["ok", "[a"]\n', "fs.read_write[1]"),
    ('[fs.mapping]\n"(x" = "y"\n', 'fs.mapping["(x"]'),
])
def test_config_names_the_key_of_a_bad_regex(tmp_path, text, key):
    (tmp_path / "mirror-py.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert f"invalid value for {key}" in str(info.value)
    assert "not a valid regular expression" in str(info.value)


def test_config_mode_lists_the_choices(tmp_path):
    (tmp_path / "mirror-py.toml").write_text('[fs]\nmode = "rw"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert 'expected one of "local", "read" or "write"' in str(info.value)


def _shim_env(settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_")}
    env.update(PYTHONPATH=str(ROOT / "sitecustomize_shim"), MIRROR_PY_SESSION="/nonexistent/session.sock",
               MIRROR_PY_SHIM_LIB=str(ROOT), MIRROR_PY_SHIM_SETTINGS=settings)
    return env


def test_start_up_installs_the_file_surface_without_json_or_socket():
    code = ("import sys, builtins, os; from mirror_py.shim import patches; "
            "print(patches.is_installed(patches.FILE_SURFACE), 'json' in sys.modules, 'socket' in sys.modules, "
            "builtins.open is not __import__('io').open_code, os.stat.__module__)")
    settings = '{"outgoing": {}, "dns": {}, "fs": {"mode": "read", "local": []}}'
    out = subprocess.run([sys.executable, "-c", code], env=_shim_env(settings), capture_output=True, text=True,
                         cwd="/", timeout=60)
    assert out.stdout.split() == ["True", "False", "False", "True", "mirror_py.shim.files"], out.stderr
    off = subprocess.run([sys.executable, "-c", code], env=_shim_env('{"fs": {"mode": "local"}}'),
                         capture_output=True, text=True, cwd="/", timeout=60)
    assert off.stdout.split()[0] == "False", off.stderr


def test_local_files_work_and_no_session_is_needed_for_them(tmp_path):
    # The session socket does not exist: every operation here must stay local and never ask it.
    (tmp_path / "a.txt").write_text("local")
    code = (
        "import os, pathlib, shutil, glob, sys\n"
        f"d = {str(tmp_path)!r}\n"
        "assert open(d + '/a.txt').read() == 'local'\n"
        "assert os.stat(d + '/a.txt').st_size == 5 and os.path.isfile(d + '/a.txt')\n"
        "assert sorted(os.listdir(d)) == ['a.txt'] and [e.name for e in os.scandir(d)] == ['a.txt']\n"
        "os.mkdir(d + '/sub'); shutil.copy(d + '/a.txt', d + '/sub/b.txt'); os.rename(d + '/sub/b.txt', d + '/c')\n"
        "assert glob.glob(d + '/*') and pathlib.Path(d, 'c').read_text() == 'local'\n"
        "shutil.rmtree(d + '/sub'); os.remove(d + '/c')\n"
        "print('ok', 'mirror_py.shim.rpc' in sys.modules)\n"
    )
    settings = '{"outgoing": {}, "dns": {}, "fs": {"mode": "write"}}'
    out = subprocess.run([sys.executable, "-c", code], env=_shim_env(settings), capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=60)
    assert out.stdout.split() == ["ok", "False"], out.stderr


def test_parents_of_the_project_are_local_but_not_their_other_children():
    r = rules(local_dirs=("/work/app/.venv",))
    assert r.decide("/work") == LOCAL and r.decide("/work/app") == LOCAL
    assert r.decide("/work/other") == REMOTE
    assert r.decide("/") == REMOTE


def test_writes_remote_answers_for_a_path_already_mapped():
    # An fd of a target's file may change the target (fchmod, fchown...) only when writes to its path would.
    read = FileRules({"mode": "read", "read_write": ["^/data/rw"], "mapping": {"^/cfg": "/data/rw"}},
                     local_dirs=["/work"])
    assert read.writes_remote("/data/rw/x") and not read.writes_remote("/data/ro/x")
    assert not read.writes_remote("/work/app/x") and not read.writes_remote("relative")
    write = FileRules({"mode": "write"}, local_dirs=["/work"])
    assert write.writes_remote("/data/ro/x") and not write.writes_remote("/work/app/x")
    assert not FileRules({"mode": "local"}, local_dirs=[]).writes_remote("/data/x")


def test_the_root_directory_is_the_targets_unless_listed_local():
    assert FileRules({"mode": "read"}, local_dirs=["/work"]).decide("/") == REMOTE
    assert FileRules({"mode": "read", "local": ["^/$"]}, local_dirs=["/work"]).decide("/") == LOCAL
