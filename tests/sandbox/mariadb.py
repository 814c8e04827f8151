"""Which MariaDB server examples/service/mariadb.yaml starts, found the way the manifest itself finds it: its
``mariadb_bin`` shell function, taken from the manifest and run here. Tests use it to know the version to
expect, and to stop with the manifest's own message when no server is installed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples" / "service" / "mariadb.yaml"
# What the manifest creates for its clients.
DATABASE, USER, PASSWORD, PORT = "app", "app", "app-secret", 3306


class NoMariaDB(RuntimeError):
    """No MariaDB server is installed where the manifest looks."""


def _script(manifest: Path = MANIFEST) -> str:
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if "mariadb_bin" in container["command"][-1]:
                    return container["command"][-1]
    raise ValueError(f"{manifest}: no container command of a Deployment uses mariadb_bin")


def _function(manifest: Path = MANIFEST) -> str:
    match = re.search(r"^mariadb_bin\(\) \{\n.*?^\}\n", _script(manifest), re.M | re.S)
    if not match:
        raise ValueError(f"{manifest}: no mariadb_bin() function in the container command")
    return match.group(0)


def _searched(manifest: Path = MANIFEST) -> list[str]:
    match = re.search(r"\$\(mariadb_bin ([^)]+)\)", _script(manifest))
    if not match:
        raise ValueError(f"{manifest}: the container command never calls mariadb_bin")
    return match.group(1).split()


def server(dirs: Sequence[str | Path] | None = None) -> Path:
    """The ``mariadbd`` the manifest starts, like ``/usr/sbin/mariadbd`` (searched in ``dirs``, default where
    the manifest looks)."""
    searched = _searched() if dirs is None else [str(d) for d in dirs]
    proc = subprocess.run(["sh", "-c", _function() + 'mariadb_bin "$@"', "sh", *searched],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NoMariaDB(proc.stderr.strip() or f"mariadb_bin exited {proc.returncode}")
    return Path(proc.stdout.strip()) / "mariadbd"


def version() -> str:
    """The server's version as ``select version()`` reports it (``10.11.19-MariaDB-0+deb12u1``)."""
    out = subprocess.run([str(server()), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"Ver (\S+)", out)
    if not match:
        raise NoMariaDB(f"{server()} --version said {out.strip()!r}")
    return match.group(1)


def manifest(tmpdir: str | Path) -> str:
    """The manifest with the server's ``TMPDIR`` (where it makes its data directory) set to ``tmpdir``: the
    sandbox's pods share this machine's /tmp and stop without a grace period, so the caller owns and removes
    the files of each run."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    for doc in docs:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container.setdefault("env", []).append({"name": "TMPDIR", "value": str(tmpdir)})
    return yaml.safe_dump_all(docs, sort_keys=False)
