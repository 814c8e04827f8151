"""A virtual environment per Python version with mirror-py installed from this checkout, for running the client
(CLI, session, shim) under each Python it supports.

They live in ``.venv-pythons/3.X`` (ignored by git) and are reused across test runs; a venv is rebuilt when
what it was built from changes — mirror-py's packaging (setup.cfg, pyproject.toml's build system), the
checkout's place or the interpreter — because a new dependency there must reach every version. Only the
runtime dependencies are installed (``pip install -e .``), as a user would get them; pip's cache makes a
rebuild cheap. Builds hold a lock: pytest-xdist workers and concurrent runs share the directory.
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venv-pythons"
PACKAGING = ("setup.cfg", "pyproject.toml")
IRRELEVANT_SECTIONS = ("metadata", "options.extras_require")
STAMP = "mirror-py-built-from"


class VenvError(RuntimeError):
    """Building a venv failed; the message carries pip's output."""


def packaging(project: Path = ROOT) -> str:
    """What of the packaging files changes an install of mirror-py: setup.cfg without the metadata and the test
    extras (a new test dependency must not rebuild every venv), and pyproject.toml's build system."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(project / "setup.cfg")
    parts = [f"[{name}]\n" + "\n".join(f"{k} = {v}" for k, v in sorted(cfg[name].items()))
             for name in sorted(cfg.sections()) if name not in IRRELEVANT_SECTIONS]
    with open(project / "pyproject.toml", "rb") as f:
        parts.append(repr(tomllib.load(f).get("build-system")))
    return "\n".join(parts)


def key(python: str, project: Path = ROOT) -> str:
    """What a venv is built from: the packaging, the checkout's place (an editable install points at it) and the
    interpreter (its real path and exact version)."""
    h = hashlib.sha256(str(project).encode() + b"\0" + packaging(project).encode() + b"\0")
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             timeout=30).stdout
    h.update(os.path.realpath(python).encode() + b"\0" + version.encode())
    return h.hexdigest()


def python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def client_venv(python: str, version: str, *, root: Path = VENVS) -> Path:
    """The venv for ``version`` built with ``python``, (re)built when its key changed; returns its directory."""
    root.mkdir(exist_ok=True)
    venv = root / version
    wanted = key(python)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        if stamp.is_file() and stamp.read_text() == wanted and python_in(venv).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        _run([python, "-m", "venv", str(venv)],
             f"creating a venv with {python} (on Debian its python{version}-venv package provides venv)")
        _run([str(python_in(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(ROOT)],
             f"installing mirror-py into {venv}")
        stamp.write_text(wanted)
    return venv


def _run(argv: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise VenvError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


if __name__ == "__main__":
    # Build (or check) the venvs ahead of a test run: python -m tests.client_venvs
    from tests import pythons

    for v in pythons.CLIENT_VERSIONS:
        found = pythons.find(v)
        print(f"{v}: {client_venv(found, v) if found else pythons.missing_reason(v)}", file=sys.stderr)
