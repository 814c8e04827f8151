"""Finding an interpreter of a given Python version on this machine, for the tests that run mirror-py's client
and agent under every version mirror-py supports.

The machine decides what is there: pyenv's and uv's installed versions, then ``python3.X`` on PATH (Debian's
packages). Nothing requires pyenv: a version that is found nowhere is reported with where it was looked for and
how to get it, so a test can be skipped with that reason instead of failing on a machine that lacks it.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from pathlib import Path

#: Pythons the client (CLI, session, shim) supports: setup.cfg's ``python_requires`` and tox.ini's envlist.
CLIENT_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
#: Pythons the agent supports in a target (the agent is standard library plus pure-Python cbor2).
AGENT_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


def how_to_get(version: str) -> str:
    return (f"install Python {version} with `pyenv install {version}` or `uv python install {version}` "
            f"(or Debian's python{version} and python{version}-venv packages where the release ships them)")


def _patch_level(path: str) -> tuple[int, ...]:
    """Sort key of an install directory named like ``3.12.1`` or ``cpython-3.12.1-linux-x86_64-gnu``."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", path)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def candidates(version: str, environ: dict[str, str] | None = None) -> list[str]:
    """Where an interpreter of ``version`` may be, best first: the newest patch release of pyenv's and uv's
    installs, then ``python3.X`` in each PATH directory. pyenv's shims are skipped: a shim runs whichever
    version pyenv is set to, which may not be this one."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    roots = [
        os.path.join(env.get("PYENV_ROOT") or os.path.join(home, ".pyenv"), "versions", f"{version}.*"),
        os.path.join(env.get("UV_PYTHON_INSTALL_DIR") or os.path.join(home, ".local", "share", "uv", "python"),
                     f"cpython-{version}.*"),
    ]
    found: list[str] = []
    for pattern in roots:
        dirs = sorted(glob.glob(pattern), key=_patch_level, reverse=True)
        found += [os.path.join(d, "bin", f"python{version}") for d in dirs]
    for directory in env.get("PATH", "").split(os.pathsep):
        if directory and Path(directory).name != "shims":
            found.append(os.path.join(directory, f"python{version}"))
    unique: list[str] = []
    for path in found:
        if path not in unique and os.access(path, os.X_OK) and not os.path.isdir(path):
            unique.append(path)
    return unique


def _reports(python: str, version: str) -> bool:
    """The interpreter runs and is the version its name says (a broken install or a wrapper is not)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


@functools.cache
def find(version: str) -> str | None:
    """The first working interpreter of ``version`` (``"3.12"``), or None."""
    for python in candidates(version):
        if _reports(python, version):
            return python
    return None


def missing_reason(version: str) -> str:
    """Why a test of ``version`` is skipped: what was searched and how to get it."""
    return (f"no Python {version} on this machine (looked in pyenv's and uv's installed versions and for "
            f"python{version} on PATH); {how_to_get(version)}")
