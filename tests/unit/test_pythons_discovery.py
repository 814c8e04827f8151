"""Finding interpreters of each supported Python (tests/pythons.py) and keying their venvs
(tests/client_venvs.py), against fake directory trees: no pyenv needed."""

from __future__ import annotations

import configparser
import re
import shutil
import sys
from pathlib import Path

from mirror_py_agent import bootstrap
from tests import client_venvs, pythons

ROOT = Path(__file__).resolve().parents[2]


def _exe(path: Path, reports: str | None = None) -> Path:
    """A fake interpreter: answers the version probe with ``reports`` (a shell script, so it runs anywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {reports}\n" if reports else "#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def test_pyenv_and_uv_installs_newest_patch_first_then_path_without_shims(tmp_path):
    home = tmp_path / "home"
    old = _exe(home / ".pyenv/versions/3.12.1/bin/python3.12")
    new = _exe(home / ".pyenv/versions/3.12.10/bin/python3.12")
    _exe(home / ".pyenv/versions/3.11.7/bin/python3.11")
    uv = _exe(home / ".local/share/uv/python/cpython-3.12.3-linux-x86_64-gnu/bin/python3.12")
    shim = _exe(home / ".pyenv/shims/python3.12")
    usr = _exe(tmp_path / "usr/bin/python3.12")
    env = {"HOME": str(home), "PATH": f"{shim.parent}:{usr.parent}:{tmp_path / 'nowhere'}"}
    assert pythons.candidates("3.12", env) == [str(new), str(old), str(uv), str(usr)]


def test_pyenv_root_and_uv_dir_from_the_environment(tmp_path):
    a = _exe(tmp_path / "pyenv/versions/3.9.18/bin/python3.9")
    b = _exe(tmp_path / "uv/cpython-3.9.20-linux-x86_64-gnu/bin/python3.9")
    env = {"HOME": str(tmp_path / "empty"), "PATH": "", "PYENV_ROOT": str(tmp_path / "pyenv"),
           "UV_PYTHON_INSTALL_DIR": str(tmp_path / "uv")}
    assert pythons.candidates("3.9", env) == [str(a), str(b)]


def test_nothing_installed_gives_no_candidates_and_a_reason_that_says_how_to_get_it(tmp_path):
    assert pythons.candidates("3.10", {"HOME": str(tmp_path), "PATH": str(tmp_path)}) == []
    reason = pythons.missing_reason("3.10")
    assert "no Python 3.10" in reason and "pyenv install 3.10" in reason and "uv python install 3.10" in reason


def test_an_interpreter_that_is_another_version_or_broken_is_not_taken(tmp_path):
    assert pythons._reports(str(_exe(tmp_path / "right", "3.12")), "3.12")
    assert not pythons._reports(str(_exe(tmp_path / "wrapper", "3.11")), "3.12")
    assert not pythons._reports(str(_exe(tmp_path / "broken")), "3.12")
    assert not pythons._reports(str(tmp_path / "absent"), "3.12")


def test_the_running_interpreter_is_found_for_its_own_version():
    version = "{}.{}".format(*sys.version_info[:2])
    found = pythons.find(version)
    assert found is not None and pythons._reports(found, version)


def test_tested_versions_are_the_claimed_ones():
    """setup.cfg's python_requires and classifiers, tox.ini's envlist and the client versions tested agree; the
    agent's lowest version is the one its modules and the docs state."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options"]["python_requires"] == f">={pythons.CLIENT_VERSIONS[0]}"
    classifiers = set(cfg["metadata"]["classifiers"].split("\n"))
    assert {f"Programming Language :: Python :: {v}" for v in pythons.CLIENT_VERSIONS} <= classifiers
    assert not {c for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)} - {
        f"Programming Language :: Python :: {v}" for v in pythons.CLIENT_VERSIONS}
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    assert [e for e in envs if e.startswith("py")] == ["py" + v.replace(".", "") for v in pythons.CLIENT_VERSIONS]
    lowest = pythons.AGENT_VERSIONS[0]
    assert lowest == "{}.{}".format(*bootstrap.MIN_PYTHON)
    assert f"Python {lowest}+" in (ROOT / "mirror_py_agent/protocol.py").read_text()
    assert f"python3 ≥ {lowest}" in (ROOT / "docs/agent-modes.md").read_text()


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in client_venvs.PACKAGING:
        shutil.copy(ROOT / name, project / name)
    return project


def test_a_venv_is_rebuilt_when_the_packaging_or_the_interpreter_changes(tmp_path):
    project = _project(tmp_path)
    base = client_venvs.key(sys.executable, project)
    assert client_venvs.key(sys.executable, project) == base
    setup = (project / "setup.cfg").read_text()
    (project / "setup.cfg").write_text(setup.replace("install_requires =\n", "install_requires =\n    six\n"))
    assert client_venvs.key(sys.executable, project) != base
    other = _exe(tmp_path / "python3.99", "3.99")
    assert client_venvs.key(str(other), project) != client_venvs.key(sys.executable, project)


def test_test_extras_metadata_and_tool_settings_do_not_rebuild_the_venvs(tmp_path):
    project = _project(tmp_path)
    base = client_venvs.key(sys.executable, project)
    setup = (project / "setup.cfg").read_text()
    setup = setup.replace("    pytest>=8\n", "    pytest>=8\n    a-new-test-tool\n").replace(
        "description = ", "description = Changed. ")
    (project / "setup.cfg").write_text(setup)
    with open(project / "pyproject.toml", "a") as f:
        f.write("\n[tool.other]\nsetting = 1\n")
    assert client_venvs.key(sys.executable, project) == base
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace(
        '"setuptools>=64"', '"setuptools>=70"'))
    assert client_venvs.key(sys.executable, project) != base
