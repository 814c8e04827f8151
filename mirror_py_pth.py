"""Imported by the optional ``mirror_py_hook.pth`` (``mirror-py install-hook``), which site processes even for
interpreters started with ``-I`` (they ignore PYTHONPATH). Does nothing unless a mirror-py session is named in
the environment."""

import os

if os.environ.get("MIRROR_PY_SESSION"):
    from sitecustomize_shim import entry as _entry

    if _entry.wanted():
        _entry.install()
