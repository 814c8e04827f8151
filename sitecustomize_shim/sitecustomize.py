"""mirror-py's entry into a Python process started with this directory on PYTHONPATH.

Does nothing unless a mirror-py session is named in the environment (or a target is, for PYTHONPATH mode),
and always hands over to the next ``sitecustomize`` on sys.path, so a user's own keeps working.
"""

import os
import sys


def _mirror_py() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import entry as _entry  # this directory's entry.py, loaded under a private name below
    finally:
        sys.path.remove(here)
    sys.modules.pop("entry", None)
    sys.modules["sitecustomize_shim_entry"] = _entry
    if _entry.wanted():
        _entry.install()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401 - the next one on sys.path
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        kept = [p for p in sys.path if p not in saved]
        sys.path[:] = saved + kept


if os.environ.get("MIRROR_PY_SESSION") or os.environ.get("MIRROR_PY_TARGET"):
    _mirror_py()
_chain()
