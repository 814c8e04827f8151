"""The interposition step shared by sitecustomize.py (PYTHONPATH) and the optional .pth hook (``-I``)."""

import os
import sys


def wanted() -> bool:
    env = os.environ
    return bool(env.get("MIRROR_PY_SESSION") or (env.get("MIRROR_PY_TARGET") and not env.get("MIRROR_PY_NO_AUTOSTART")))


def install() -> None:
    if "mirror_py.shim" in sys.modules and sys.modules["mirror_py.shim"].active():
        return  # both entries ran in one interpreter
    # mirror_py sits beside this directory in an installation; MIRROR_PY_SHIM_LIB says where otherwise.
    lib = os.environ.get("MIRROR_PY_SHIM_LIB") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    added = lib not in sys.path
    if added:
        sys.path.append(lib)  # appended, so the app's own packages always win
    try:
        # Both packages are imported while their directory is on sys.path; later imports of their submodules
        # go through the packages' own __path__, so the directory need not stay on the app's sys.path.
        import mirror_py.shim
        import mirror_py_agent  # noqa: F401

        env = os.environ
        if not env.get("MIRROR_PY_SESSION") or env.get("MIRROR_PY_FETCH_ENV") or env.get("MIRROR_PY_LEASE"):
            from mirror_py.shim import autostart

            autostart.prepare(lib)
        mirror_py.shim.install()
    except Exception as exc:  # never stop the app from starting; say why it is not interposed
        sys.stderr.write(f"mirror-py: could not interpose on this process: {exc}\n")
    finally:
        if added:
            try:
                sys.path.remove(lib)
            except ValueError:
                pass
