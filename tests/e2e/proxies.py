"""Two small real proxies for tests, each counting the tunnels it opened: an HTTP CONNECT proxy (optionally
asking for Basic credentials) and a SOCKS5 proxy (no authentication; IPv4 and domain-name targets)."""

from __future__ import annotations

import base64
import socket
import struct
import threading
from typing import Any


def _relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threading.Thread(target=pump, args=(b, a), daemon=True).start()
    pump(a, b)
    a.close()
    b.close()


class _Server:
    """Accepts on 127.0.0.1 in a thread; each client is served by ``serve`` in a thread of its own."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tunnels: list[tuple[str, int]] = []  # (target host, port) of each tunnel opened
        self.refused = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            target = self.serve(client)
        except (OSError, ValueError):
            client.close()
            return
        if target is None:
            client.close()
            return
        upstream, host, port = target
        with self.lock:
            self.tunnels.append((host, port))
        _relay(client, upstream)

    def serve(self, client: socket.socket) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConnectProxy(_Server):
    """``CONNECT host:port``; with ``credentials`` it answers 407 unless Proxy-Authorization carries them."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.headers: list[dict[str, str]] = []  # the headers of each CONNECT
        super().__init__()

    def serve(self, client: socket.socket) -> Any:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                return None
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, authority, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        with self.lock:
            self.headers.append(headers)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return None
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if headers.get("proxy-authorization") != expected:
                with self.lock:
                    self.refused += 1
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                               b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                return None
        host, _, port = authority.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream, host, int(port)


class Socks5Proxy(_Server):
    """SOCKS5 without authentication, CONNECT only."""

    def serve(self, client: socket.socket) -> Any:
        def read(n: int) -> bytes:
            out = b""
            while len(out) < n:
                chunk = client.recv(n - len(out))
                if not chunk:
                    raise ValueError("short read")
                out += chunk
            return out

        version, count = read(2)
        methods = read(count)
        if version != 5 or 0 not in methods:
            client.sendall(b"\x05\xff")
            return None
        client.sendall(b"\x05\x00")
        _, command, _, kind = read(4)
        if kind == 1:
            host = socket.inet_ntoa(read(4))
        elif kind == 3:
            host = read(read(1)[0]).decode()
        else:
            client.sendall(b"\x05\x08\x00\x01" + bytes(6))
            return None
        (port,) = struct.unpack("!H", read(2))
        if command != 1:
            client.sendall(b"\x05\x07\x00\x01" + bytes(6))
            return None
        upstream = socket.create_connection((host, port), timeout=10)
        upstream.settimeout(None)
        client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
        return upstream, host, port
