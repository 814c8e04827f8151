"""mirror-py: run a local Python process in the context of a Kubernetes pod.

Interposed interpreters import this package before pytest starts, so pytest must not try to rewrite it:
PYTEST_DONT_REWRITE
"""

from __future__ import annotations

__version__ = "0.1.0"


def connect(target: str | None = None, **options: object) -> object:
    """Interposes on this interpreter: its network, DNS and environment come from ``target`` until the
    returned session is closed (it is a context manager); ``with session.local():`` runs a block locally."""
    from .api import connect as _connect

    return _connect(target, **options)  # type: ignore[arg-type]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext mirror_py`` registers ``%mirror`` and ``%%mirror_local``."""
    from .ipython import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    from .ipython import unload

    unload(ipython)
