"""The host's name as the app sees it: the pod's, wherever the app asks for it.

``socket.gethostname()``, ``os.uname().nodename`` and ``platform.node()`` must agree: code that labels its
metrics or builds a consumer id from one of them and compares with another would otherwise mix the laptop's
name with the pod's. All three answer from one cached reply of the agent. This module imports neither
``socket`` nor ``platform``: ``os.uname`` is patched at start-up, and the session is asked only on first use.
"""

from __future__ import annotations

import os
from typing import Any, Callable

_cache: list[str] = []


def pod_hostname() -> str | None:
    """The target's hostname, or None when DNS is not interposed or the caller is in a local block (then the
    laptop's name is the answer)."""
    from . import scope, settings

    if scope.is_local() or not settings.get().dns_enabled:
        return None
    if not _cache:
        from . import errors, rpc

        reply = rpc.call({"op": "dns", "fn": "gethostname"})
        if "err" in reply:
            raise errors.to_exception(reply["err"])
        _cache[:] = [reply["ok"]]
    return _cache[0]


def make_uname(orig: Callable) -> Callable:
    def uname():
        real = orig()
        try:
            name = pod_hostname()
        except OSError:
            return real  # uname() cannot fail: with the session gone, the laptop's name is the honest answer
        if name is None:
            return real
        return os.uname_result((real.sysname, name, real.release, real.version, real.machine))

    return uname


def drop_platform_cache(cached: Any) -> None:
    """``platform.uname()`` caches its first answer; dropping it makes ``platform.node()`` ask the patched
    ``os.uname`` again. Uninstalling puts the laptop's cached answer back."""
    return None


def forget() -> None:
    _cache.clear()
