"""Finding a running ``mirror-py session start`` session for a target, so that a port-forward shares its agent.

Candidates are the session named in this shell (``MIRROR_PY_SESSION``) and every session socket of this user
in the places sessions make their directory; each is asked what it serves (its ``info``). Only daemon sessions
are shared: an ``exec``'s session ends with its command and would take the forwards with it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from typing import Any

from .client import CallFailed, SessionGone, call

ASK_TIMEOUT = 2.0  # a session busy for longer than this is not worth waiting for: start an agent of our own


def candidate_paths() -> list[str]:
    """Session sockets that may be live, the shell's own first."""
    out: list[str] = []
    named = os.environ.get("MIRROR_PY_SESSION")
    if named:
        out.append(named)
    roots = {tempfile.gettempdir()}
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        roots.add(runtime)
    for root in sorted(roots):
        for path in sorted(glob.glob(os.path.join(root, "mirror-py-*", "session.sock"))):
            if path not in out:
                out.append(path)
    return out


def target_key(path: str | None, namespace: str | None, context: str | None, kubeconfig: str | None) -> dict:
    """What makes two sessions the same target: the target as written, and where it is looked up."""
    return {"target": path or "", "namespace": namespace or "", "context": context or "",
            "kubeconfig": kubeconfig or os.environ.get("KUBECONFIG", "")}


async def _ask(path: str) -> dict | None:
    try:
        info = await asyncio.wait_for(call(path, {"op": "info"}), ASK_TIMEOUT)
    except (SessionGone, CallFailed, asyncio.TimeoutError, OSError):
        return None
    return info if isinstance(info, dict) else None


async def find(key: dict | None) -> tuple[str, dict[str, Any]] | None:
    """(socket path, info) of a running daemon session for ``key``; with ``key`` None, the shell's session."""
    for path in candidate_paths():
        if key is None and path != os.environ.get("MIRROR_PY_SESSION"):
            continue
        info = await _ask(path)
        if info is None or info.get("mode") != "daemon":
            continue
        if key is None or info.get("key") == key:
            return path, info
    return None
