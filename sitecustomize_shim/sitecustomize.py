"""mirror-py's entry into a Python process started with this directory on PYTHONPATH.

Does nothing unless a mirror-py session is named in the environment, and always hands over to the next
``sitecustomize`` on sys.path, so a user's own keeps working.
"""

import os
import sys


def _mirror_py_install() -> None:
    lib = os.environ.get("MIRROR_PY_SHIM_LIB")
    added = bool(lib) and lib not in sys.path
    if added:
        sys.path.append(lib)  # appended, so the app's own packages always win
    try:
        # Both packages are imported while their directory is on sys.path; later imports of their submodules
        # go through the packages' own __path__, so the directory need not stay on the app's sys.path.
        import mirror_py.shim
        import mirror_py_agent  # noqa: F401

        mirror_py.shim.install()
    except Exception as exc:  # never stop the app from starting; say why it is not interposed
        sys.stderr.write(f"mirror-py: could not interpose on this process: {exc!r}\n")
    finally:
        if added:
            try:
                sys.path.remove(lib)
            except ValueError:
                pass


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


if os.environ.get("MIRROR_PY_SESSION"):
    _mirror_py_install()
_chain()
