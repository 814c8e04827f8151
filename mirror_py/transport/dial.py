"""Opening a connection to the API server for an exec stream: direct, or through the proxy the kubeconfig and
the environment chose (mirror_py/kube/proxy.py), with TLS to the API server done.

The websocket library then only runs the upgrade on it. Owning the connection keeps the proxy rules in one
place for both roads (the REST client's pool is built from the same decision), lets a warm connection
(warm.py) be opened ahead through a proxy too, and gives the same behaviour whatever version of the websocket
library is installed: its own proxy support differs between versions, reads the environment without
client-go's NO_PROXY forms, and sends no proxy headers.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from ..errors import MirrorError
from ..kube import proxy as proxies

MAX_ANSWER = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers


class Waiting(asyncio.Protocol):
    """Holds the connection until an exec stream takes it; the server says nothing before a request."""

    def __init__(self) -> None:
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class ProxyRefused(MirrorError):
    """The proxy answered, and not with a tunnel: its answer stands, connecting anew would not help."""


def target(configuration: Any) -> tuple[str, int]:
    parts = urlsplit(str(configuration.host))
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


async def open_connection(configuration: Any, timeout: float) -> tuple[asyncio.Transport, Waiting]:
    """A connection to ``configuration.host``, through the chosen proxy if any, TLS done when the server is
    https. Fails with OSError or asyncio.TimeoutError as a direct connect would, or ProxyRefused."""
    return await asyncio.wait_for(_open(configuration), timeout)


async def _open(configuration: Any) -> tuple[asyncio.Transport, Waiting]:
    from .k8s_exec import ssl_context

    host, port = target(configuration)
    ctx = ssl_context(configuration)
    tls: dict[str, Any] = {}
    if ctx is not None:
        tls = {"ssl": ctx, "server_hostname": getattr(configuration, "tls_server_name", None) or host}
    loop = asyncio.get_running_loop()
    proxy = proxies.of(configuration)
    if proxy is None:
        return await loop.create_connection(Waiting, host, port, **tls)  # type: ignore[return-value]
    if proxy.socks:
        sock = await asyncio.to_thread(proxies.socks_socket, proxy, host, port, None)
        sock.setblocking(False)
        return await loop.create_connection(Waiting, sock=sock, **tls)  # type: ignore[return-value]
    return await _through_connect(proxy, host, port, tls)


class _Connect(asyncio.Protocol):
    """Sends CONNECT and waits for the proxy's answer (the end of its headers)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.answer.done() and (b"\r\n\r\n" in self.buffer or len(self.buffer) > MAX_ANSWER):
            self.answer.set_result(self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("the proxy closed the connection"))


async def _through_connect(proxy: proxies.Proxy, host: str, port: int,
                           tls: dict[str, Any]) -> tuple[asyncio.Transport, Waiting]:
    loop = asyncio.get_running_loop()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in proxy.headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    proxy_tls: dict[str, Any] = {}
    if proxy.scheme == "https":
        import ssl

        proxy_tls = {"ssl": ssl.create_default_context(), "server_hostname": proxy.host}
    transport, protocol = await loop.create_connection(lambda: _Connect(request), proxy.host, proxy.port,
                                                       **proxy_tls)
    try:
        answer = await protocol.answer
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ProxyRefused(f"proxy {proxy.address} ({proxy.source}) did not answer CONNECT as an HTTP proxy "
                               f"({status_line[:80]!r})")
        if not 200 <= int(fields[1]) <= 299:
            hint = "; check the credentials in the proxy URL" if fields[1] == "407" else ""
            raise ProxyRefused(f"proxy {proxy.address} ({proxy.source}) refused to connect to {authority}: "
                               f"{status_line.partition(' ')[2]}{hint}")
        waiting = Waiting()
        transport.set_protocol(waiting)
        if tls:
            transport = await loop.start_tls(transport, waiting, tls["ssl"],  # type: ignore[assignment]
                                             server_hostname=tls["server_hostname"])
        return transport, waiting  # type: ignore[return-value]
    except BaseException:
        transport.close()
        raise
