"""The session's half of remote files: shim requests turned into agent requests.

The shim asks for big pieces (up to :data:`MAX_READ` per call); the agent answers at most
:data:`mirror_py_agent.files.CHUNK` bytes per reply, because a control frame holds 1 MiB. So a shim read
becomes several agent reads kept in flight together, and a shim write several agent writes: the channel
stays busy and one round trip to the shim moves many chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mirror_py_agent.files import CHUNK

from .agent_link import AgentLink, RemoteError
from .fs_cache import MetadataCache, changes
from .rpc_server import Binary, RpcError

MAX_READ = 16 << 20
IN_FLIGHT = 8


async def handle(link: AgentLink, req: dict, cache: MetadataCache | None = None) -> Any:
    """Serves one ``{"op": "fs", "fn": ...}`` request of a shim; ``cache`` answers a ``stat`` asked again
    (see session/fs_cache.py) and is emptied around every request that may change the target."""
    args = {k: v for k, v in req.items() if k != "op"}  # raw bytes (an xattr's value) go on as "data"
    if cache is None or not cache.enabled:
        return await _forward(link, args, req)
    cache.bind(link)
    fn = args.get("fn")
    if changes(args):
        cache.flush()
        try:
            return await _forward(link, args, req)
        finally:
            cache.flush()
    if fn not in ("stat", "scandir") or not isinstance(args.get("path"), str):
        return await _forward(link, args, req)
    path, follow = args["path"], bool(args.get("follow", True))
    if fn == "stat":
        hit = cache.get(path, follow)
        if hit is not None:
            return list(hit)
    mark = cache.generation()
    result = await _forward(link, args, req)
    if fn == "stat":
        cache.put(path, follow, result, mark)
    else:
        cache.put_listing(path, result, mark)
    return result


async def _forward(link: AgentLink, args: dict, req: dict) -> Any:
    """Sends one shim request on to the agent (reads and writes split into chunks the agent can take)."""
    fn = args.get("fn")
    try:
        if fn == "read":
            return await _read(link, args)
        if fn == "write":
            return await _write(link, args, req.get("data"))
        result = await link.request("fs", args)
    except RemoteError as exc:
        raise RpcError(exc.name, exc.message) from None
    if isinstance(result, dict) and isinstance(result.get("data"), (bytes, bytearray)):
        data = result.pop("data")
        return Binary(result, bytes(data))
    if isinstance(result, (bytes, bytearray)):
        return Binary(None, bytes(result))
    return result


async def _read(link: AgentLink, args: dict) -> Binary:
    """Reads up to ``size`` bytes from ``off`` with several agent reads in flight; closes the handle at the
    end of the file when asked (a file fetched whole needs it no longer)."""
    handle = args["h"]
    offset = int(args.get("off", 0))
    size = max(0, min(int(args.get("size", CHUNK)), MAX_READ))
    parts: list[bytes] = []
    eof = False
    pos = offset
    end = offset + size
    while pos < end and not eof:
        batch = []
        while pos < end and len(batch) < IN_FLIGHT:
            n = min(CHUNK, end - pos)
            batch.append(link.request("fs", {"fn": "read", "h": handle, "off": pos, "size": n}))
            pos += n
        for reply in await asyncio.gather(*batch):
            if eof:
                continue
            parts.append(reply["data"])
            eof = bool(reply["eof"])
    if eof and args.get("close_at_eof"):
        await link.request("fs", {"fn": "close", "h": handle})
    return Binary({"eof": eof}, b"".join(parts))


async def _write(link: AgentLink, args: dict, data: Any) -> int:
    """Writes ``data`` at ``off`` (or appends, ``off`` null) in chunks the agent can take."""
    if not isinstance(data, (bytes, bytearray)):
        raise RpcError("EINVAL", "a write carries raw bytes")
    handle = args["h"]
    offset = args.get("off")
    view = memoryview(data)
    done = 0
    if offset is None:  # appends must land in order
        while done < len(view):
            done += await link.request("fs", {"fn": "write", "h": handle, "off": None,
                                              "data": bytes(view[done:done + CHUNK])})
        return done
    starts = list(range(0, len(view), CHUNK))
    for i in range(0, len(starts), IN_FLIGHT):
        batch = [link.request("fs", {"fn": "write", "h": handle, "off": int(offset) + start,
                                     "data": bytes(view[start:start + CHUNK])})
                 for start in starts[i:i + IN_FLIGHT]]
        for n in await asyncio.gather(*batch):
            done += n
    return done
