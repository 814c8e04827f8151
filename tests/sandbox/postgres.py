"""Which PostgreSQL server the service example starts (examples/service/postgres.yaml), found the way the
manifest itself finds it: its ``pg_bin`` shell function, taken from the manifest and run here. Tests use it to
know the version to expect, and to stop with the manifest's own message when no server is installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples" / "service" / "postgres.yaml"


class NoPostgres(RuntimeError):
    """No PostgreSQL server is installed where the manifest looks."""


def _script(manifest: Path = MANIFEST) -> str:
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if "pg_bin" in container["command"][-1]:
                    return container["command"][-1]
    raise ValueError(f"{manifest}: no container command of a Deployment uses pg_bin")


def discovery_function(manifest: Path = MANIFEST) -> str:
    """The ``pg_bin`` shell function of the manifest's container command."""
    match = re.search(r"^pg_bin\(\) \{\n.*?^\}\n", _script(manifest), re.M | re.S)
    if not match:
        raise ValueError(f"{manifest}: no pg_bin() function in the container command")
    return match.group(0)


def searched_root(manifest: Path = MANIFEST) -> str:
    """Where the manifest looks for servers: the argument of its ``$(pg_bin DIR)``."""
    match = re.search(r"\$\(pg_bin (\S+)\)", _script(manifest))
    if not match:
        raise ValueError(f"{manifest}: the container command never calls pg_bin")
    return match.group(1)


def server_bin(root: str | Path | None = None) -> Path:
    """The directory of the newest PostgreSQL server under ``root`` (default: where the manifest looks), like
    ``/usr/lib/postgresql/17/bin``."""
    root = searched_root() if root is None else root
    proc = subprocess.run(["sh", "-c", discovery_function() + 'pg_bin "$1"', "sh", str(root)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NoPostgres(proc.stderr.strip() or f"pg_bin exited {proc.returncode}")
    return Path(proc.stdout.strip())


def major_version(root: str | Path | None = None) -> str:
    """The major version the example's server has: its directory's name (``"17"``)."""
    return server_bin(root).parent.name
