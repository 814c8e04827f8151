"""Outgoing connections made from inside the target's network namespace."""

from __future__ import annotations

import asyncio
import socket

from .relay import Mux, TcpRelay, UdpRelay, address_key, kernel_error


def _stream_id(args: dict, mux: Mux) -> int:
    sid = args["sid"]
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 < sid < 1 << 32:
        raise ValueError("sid must be an integer in 1..2**32-1")
    if sid in mux.streams or mux.conn.is_open(sid):
        raise ValueError(f"stream {sid} is already open")
    return sid


def _address(args: dict) -> tuple[str, int]:
    host, port = args["host"], args["port"]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("host must be a string and port an integer in 0..65535")
    return host, port


async def connect_tcp(args: dict, mux: Mux) -> tuple[dict, TcpRelay]:
    """Connects and returns the reply plus the relay, which the caller starts after the reply is queued."""
    sid = _stream_id(args, mux)
    host, port = _address(args)
    timeout = args.get("timeout")
    loop = asyncio.get_running_loop()
    relay = TcpRelay(mux, sid)
    try:
        coro = loop.create_connection(lambda: relay, host, port)
        if isinstance(timeout, (int, float)) and timeout > 0:
            transport, _ = await asyncio.wait_for(coro, timeout)
        else:
            transport, _ = await coro
    except OSError as exc:
        mux.streams.pop(sid, None)
        raise kernel_error(exc) from None
    except BaseException:
        mux.streams.pop(sid, None)
        raise
    mux.conn.open_stream(sid)
    peer = transport.get_extra_info("peername")
    sock = transport.get_extra_info("sockname")
    return {"peer": [peer[0], peer[1]], "sock": [sock[0], sock[1]]}, relay


def _answered(args: dict) -> frozenset:
    """The addresses whose datagrams the target's resolver answers (this machine's name servers)."""
    out = set()
    for item in args.get("answer") or ():
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) \
                or not isinstance(item[1], int):
            raise ValueError("answer must be a list of [ip, port] pairs")
        key = address_key(item[0], item[1])
        if key is None:
            raise ValueError(f"answer: not an IP address: {item[0]!r}")
        out.add(key)
    return frozenset(out)


async def open_udp(args: dict, mux: Mux) -> dict:
    sid = _stream_id(args, mux)
    family = args.get("family", socket.AF_INET)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError("family must be AF_INET or AF_INET6")
    answered = _answered(args)
    local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
    loop = asyncio.get_running_loop()
    relay = UdpRelay(mux, sid, answered)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=local, family=family)
    except BaseException:
        mux.streams.pop(sid, None)
        raise
    mux.conn.open_stream(sid)
    sock = transport.get_extra_info("sockname")
    return {"sock": [sock[0], sock[1]]}
