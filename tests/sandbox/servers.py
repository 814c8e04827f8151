"""Real servers that run inside a sandbox pod (see ``tests/sandbox/netpod.py``).

mirror-py's end-to-end tests need something genuine to talk to from "inside the pod": HTTP with keep-alive,
TLS, raw TCP that echoes / hashes / never reads, and UDP.  Each kind runs as its own process, started
inside the pod's namespaces, so what the tests see (bind addresses, loopback isolation, client addresses)
is exactly what a process in a real pod would see.

Run as ``python -m tests.sandbox.servers KIND ...`` (or as a script path).  Only the standard library is
used so the module works with any interpreter and without the project on ``sys.path``.

Kinds::

    http      --pod NAME --label LABEL --bind HOST:PORT      JSON describing each request
    tls       --pod NAME --bind HOST:PORT --cert PEM         the same over TLS (cert PEM holds the key too)
    tcp-echo  --bind HOST:PORT                               echo until EOF, then close
    tcp-sink  --bind HOST:PORT                               read until EOF, answer "sha256hex count\\n"
    tcp-slow  --bind HOST:PORT                               accept, never read
    udp-echo  --bind HOST:PORT                               answer each datagram with b"echo:" + datagram;
                                                             b"?seen:" + TOKEN answers b"seen:" + the JSON
                                                             [host, port] that sent TOKEN last (or null)
    wait      [--timeout S] [--redis-set HOST:PORT KEY VALUE]... TARGET...
              poll until every TARGET (tcp:H:P, udp:H:P, redis:H:P) answers; used as the readiness check
              because loopback-only servers can only be probed from inside the pod.

Client disconnects are normal in tests (mirror-py tears tunnels down, tests abort transfers), so they
are swallowed silently instead of filling logs with tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Large reads keep bulk-transfer tests (hundreds of MiB through mirror-py) CPU-cheap on the server side.
RECV_SIZE = 256 * 1024
# Bodies up to this size are echoed back verbatim in the POST JSON; larger ones only by hash and length.
ECHO_BODY_LIMIT = 64 * 1024


def _split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT``, with an IPv6 host in brackets: ``[::1]:7000``."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# --------------------------------------------------------------------------------------------- HTTP / TLS


class _Handler(BaseHTTPRequestHandler):
    """Answers every request with JSON naming the server, the pod, the path and the peer address.

    The peer address lets tests check where mirror-py's connections appear to come from (pod loopback,
    pod IP, ...).  POST/PUT/PATCH additionally return the body's sha256, length and (if small UTF-8)
    the body itself, so data integrity through a tunnel can be asserted without a second channel.
    """

    protocol_version = "HTTP/1.1"  # keep-alive: tests reuse one connection for many requests
    server_version = "sandbox-pod"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return  # request logs would only add noise to the pod's server log

    def _base(self) -> dict[str, Any]:
        server = self.server
        if server.label == "tls":  # type: ignore[attr-defined]
            return {"server": "tls", "pod": server.pod}  # type: ignore[attr-defined]
        return {
            "server": server.label,  # type: ignore[attr-defined]
            "pod": server.pod,  # type: ignore[attr-defined]
            "path": self.path,
            "client": [self.client_address[0], self.client_address[1]],
        }

    def _send_json(self, payload: dict[str, Any], head_only: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def _read_body(self) -> tuple[str, int, bytes | None]:
        """Stream the request body (Content-Length or chunked) into a hash; keep it only if small."""
        digest = hashlib.sha256()
        kept = bytearray()
        total = 0

        def feed(chunk: bytes) -> None:
            nonlocal total
            digest.update(chunk)
            total += len(chunk)
            if total <= ECHO_BODY_LIMIT:
                kept.extend(chunk)

        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("EOF inside chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, RECV_SIZE))
                    if not chunk:
                        raise ConnectionError("EOF inside chunk")
                    feed(chunk)
                    remaining -= len(chunk)
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, RECV_SIZE))
                if not chunk:
                    raise ConnectionError("EOF inside body")
                feed(chunk)
                remaining -= len(chunk)
        return digest.hexdigest(), total, (bytes(kept) if total <= ECHO_BODY_LIMIT else None)

    def do_GET(self) -> None:
        self._send_json(self._base())

    def do_HEAD(self) -> None:
        self._send_json(self._base(), head_only=True)

    def do_POST(self) -> None:
        sha, length, body = self._read_body()
        payload = self._base()
        payload["body_sha256"] = sha
        payload["body_length"] = length
        text = None
        if body is not None:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        payload["body"] = text
        self._send_json(payload)

    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many concurrent tunnel connections may arrive at once

    def __init__(self, address: tuple[str, int], pod: str, label: str) -> None:
        self.pod = pod
        self.label = label
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):  # disconnects, resets, TLS aborts, garbage requests
            return
        super().handle_error(request, client_address)


class _TLSServer(_HTTPServer):
    """HTTPS: the handshake happens in the per-connection thread so one stalled client can't block accept."""

    def __init__(self, address: tuple[str, int], pod: str, certfile: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile)
        self.context.set_alpn_protocols(["http/1.1"])
        super().__init__(address, pod, "tls")

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------- raw TCP


class _Echo(asyncio.Protocol):
    """Echo with flow control: if the client stops reading we stop reading too, so memory stays bounded."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=4 * RECV_SIZE)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close after the buffered data has been written: half-close => everything echoed

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.digest = hashlib.sha256()
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.transport.write(f"{self.digest.hexdigest()} {self.count}\n".encode())
        return False


_SLOW_CONNECTIONS: set[asyncio.BaseTransport] = set()


class _Slow(asyncio.Protocol):
    """Never reads: lets tests fill socket buffers and observe mirror-py's back-pressure."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        _SLOW_CONNECTIONS.add(transport)  # kept open until the process is killed with the pod


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(context.get("exception"), OSError):
        return
    loop.default_exception_handler(context)


def _serve_tcp(protocol: type[asyncio.Protocol], host: str, port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exceptions)
        server = await loop.create_server(protocol, host, port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------- UDP


SEEN_LIMIT = 1000  # tokens remembered for "?seen:" questions


def _serve_udp(host: str, port: int) -> None:
    """Echoes, and remembers who sent what: a test can ask whether a datagram it could not get an answer to
    (one sent from a connected socket to another address: the reply is filtered out) arrived, and from where."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 twin owns IPv4
    seen: dict[bytes, list] = {}
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        except OSError:
            pass
    sock.bind((host, port))
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            if data.startswith(b"?seen:"):
                sock.sendto(b"seen:" + json.dumps(seen.get(data[6:])).encode(), peer)
                continue
            if len(seen) >= SEEN_LIMIT:
                seen.pop(next(iter(seen)))
            seen[data] = [peer[0], peer[1]]
            sock.sendto(b"echo:" + data, peer)
        except OSError:
            continue


# ------------------------------------------------------------------------------------------- readiness


def _probe_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _probe_udp(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(b"ready?", (host, port))
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
    return data == b"echo:ready?"


def _redis_command(host: str, port: int, *args: str) -> bytes:
    """One RESP command without a client library, so this module stays standard-library only."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def _probe_redis(host: str, port: int) -> bool:
    try:
        return _redis_command(host, port, "PING").startswith(b"+PONG")
    except OSError:
        return False


_PROBES = {"tcp": _probe_tcp, "udp": _probe_udp, "redis": _probe_redis}


def _wait(targets: list[str], timeout: float, redis_sets: list[list[str]]) -> int:
    deadline = time.monotonic() + timeout
    pending = []
    for target in targets:
        kind, _, rest = target.partition(":")
        if kind not in _PROBES:
            print(f"unknown target kind in {target!r}", file=sys.stderr)
            return 2
        host, port = _split_hostport(rest)
        pending.append((target, _PROBES[kind], host, port))
    while pending:
        pending = [item for item in pending if not item[1](item[2], item[3])]
        if not pending:
            break
        if time.monotonic() > deadline:
            print("not ready: " + " ".join(item[0] for item in pending), file=sys.stderr)
            return 1
        time.sleep(0.02)
    for address, key, value in redis_sets:
        host, port = _split_hostport(address)
        reply = _redis_command(host, port, "SET", key, value)
        if not reply.startswith(b"+OK"):
            print(f"redis SET {key} failed: {reply!r}", file=sys.stderr)
            return 1
    return 0


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (servers only return when killed or on bind errors)."""
    parser = argparse.ArgumentParser(prog="tests.sandbox.servers")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("http")
    p.add_argument("--pod", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--bind", type=_split_hostport, required=True)
    p = sub.add_parser("tls")
    p.add_argument("--pod", required=True)
    p.add_argument("--bind", type=_split_hostport, required=True)
    p.add_argument("--cert", required=True)
    for kind in ("tcp-echo", "tcp-sink", "tcp-slow", "udp-echo"):
        sub.add_parser(kind).add_argument("--bind", type=_split_hostport, required=True)
    p = sub.add_parser("wait")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--redis-set", nargs=3, action="append", default=[], metavar=("HOST:PORT", "KEY", "VALUE"))
    p.add_argument("targets", nargs="*")
    args = parser.parse_args(argv)

    # A killed pod sends SIGTERM/SIGKILL; exit quietly instead of printing KeyboardInterrupt-like noise.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # writes to vanished peers must raise, not kill us

    if args.kind == "http":
        _HTTPServer(args.bind, args.pod, args.label).serve_forever()
    elif args.kind == "tls":
        _TLSServer(args.bind, args.pod, args.cert).serve_forever()
    elif args.kind == "tcp-echo":
        _serve_tcp(_Echo, *args.bind)
    elif args.kind == "tcp-sink":
        _serve_tcp(_Sink, *args.bind)
    elif args.kind == "tcp-slow":
        _serve_tcp(_Slow, *args.bind)
    elif args.kind == "udp-echo":
        _serve_udp(*args.bind)
    elif args.kind == "wait":
        return _wait(args.targets, args.timeout, args.redis_set)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
