"""An aarch64 Linux userland for the tests, run under qemu-user on whatever machine runs them.

The C-level layer writes aarch64 machine code (its gates and at-fork closer) and reads aarch64 relocations;
only running them on that machine shows they work. ``scripts/system-packages.sh test`` installs
``qemu-user-static`` and unpacks (never installs) Debian's arm64 packages of ``python3-minimal``,
``libpython3-stdlib`` and ``libcurl4`` with their dependencies into ``tests/.tools/arm64-sysroot``. qemu runs
that interpreter with the sysroot as its root for libraries (``-L``); its sockets are this kernel's, so it talks
to a native mirror-py session like any interposed process.

A missing piece is a failure that says how to get it, never a skip: CI installs them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where scripts/system-packages.sh unpacked it (MIRROR_PY_TOOLS moves both).
SYSROOT = Path(os.environ.get("MIRROR_PY_TOOLS") or ROOT / "tests" / ".tools") / "arm64-sysroot"
QEMU = "qemu-aarch64-static"
SETUP = "run `bash scripts/system-packages.sh test` (as root) to install it"


class Missing(RuntimeError):
    """qemu-user or the arm64 sysroot is not there."""


def python_argv() -> list[str]:
    """The command that runs the arm64 ``python3``: ``[qemu, -L, sysroot, sysroot/usr/bin/python3]``."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise Missing(f"{QEMU} (Debian's qemu-user-static) is not on PATH; {SETUP}")
    python = SYSROOT / "usr" / "bin" / "python3"
    if not (SYSROOT / ".unpacked").exists() or not python.exists():
        raise Missing(f"no arm64 sysroot with python3 in {SYSROOT}; {SETUP}")
    # The interpreter by its path inside the sysroot: its prefix, and so its standard library, is the sysroot's.
    # Pointer authentication with a cheap algorithm instead of the architected one (still checked): Debian 13's
    # binaries sign every return address, which is several times slower to emulate otherwise.
    return [qemu, "-cpu", "max,pauth-impdef=on", "-L", str(SYSROOT), str(python)]
