"""Local apps that listen, for the incoming-traffic tests: each kind is a common way Python servers accept.

``python incoming_app.py KIND PORT LOG [NAME]`` serves HTTP on PORT and answers every request with JSON
naming itself (NAME, default "local"), the path, and the client address and local address the app saw
(``client_address``, ``getpeername()``, ``getsockname()``). Every request is also appended to LOG as one JSON
line, so a test can count what reached the app when its replies go nowhere (mirroring). It prints
``READY {...}`` once it listens and runs until SIGTERM.

Kinds: ``http`` (http.server, keep-alive), ``asyncio`` (asyncio.start_server), ``aiohttp``, ``fork``
(a listener bound and listening in the parent, accepted in forked workers), ``exec`` (the same listener
handed to an exec'd child, which rebuilds it from another descriptor number), ``spawn`` (bound in the parent,
``listen()`` called only in the exec'd child), ``mp-spawn`` (bound in the parent, handed to a multiprocessing
spawn child that listens, like uvicorn --reload), ``echo`` (http, plus a raw TCP listener
on ECHO_PORT answering "local:" + what it got), ``close-after`` (http that closes its listener after
CLOSE_AFTER requests and keeps running).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KIND, PORT, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3]
NAME = sys.argv[4] if len(sys.argv) > 4 else "local"
_log_lock = threading.Lock()
children: list[int] = []  # killed with the app


def _terminate(*_: object) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


def record(entry: dict) -> None:
    line = json.dumps(entry) + "\n"
    with _log_lock, open(LOG, "a") as f:
        f.write(line)


def describe(path: str, client: tuple, sock: socket.socket, extra: dict | None = None) -> dict:
    return {"server": NAME, "pid": os.getpid(), "path": path, "client": list(client[:2]),
            "peer": list(sock.getpeername()[:2]), "sockname": list(sock.getsockname()[:2]), **(extra or {})}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, extra: dict | None = None) -> None:
        entry = describe(self.path, self.client_address, self.connection, extra)
        entry["headers"] = {k.lower(): v for k, v in self.headers.items()}
        record(entry)
        body = json.dumps(entry).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/hang"):  # an app stuck on this request: it never answers
            record(describe(self.path, self.client_address, self.connection))
            threading.Event().wait()
        self._reply()

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply({"body": data.decode("utf-8", "replace")})


def ready(sock_name: tuple, **extra: object) -> None:
    print("READY " + json.dumps({"sockname": list(sock_name[:2]), "pid": os.getpid(),
                                 "session": os.environ.get("MIRROR_PY_SESSION"), **extra}), flush=True)


def serve_http(server: ThreadingHTTPServer) -> None:
    ready(server.socket.getsockname(), server_address=list(server.server_address[:2]))
    server.serve_forever()


def http_server(sock: socket.socket | None = None) -> ThreadingHTTPServer:
    if sock is None:
        return ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    return server


async def asyncio_server() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            entry = describe(path, writer.get_extra_info("peername"), sock,
                             {"transport_sockname": list(writer.get_extra_info("sockname")[:2])})
            record(entry)
            body = json.dumps(entry).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(handle, "0.0.0.0", PORT)
    ready(server.sockets[0].getsockname())
    await server.serve_forever()


def aiohttp_server() -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket")
        entry = describe(request.path, request.transport.get_extra_info("peername"), sock,
                         {"remote": request.remote})
        record(entry)
        return web.json_response(entry)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", PORT)
        await site.start()
        ready(site._server.sockets[0].getsockname())  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def forked_workers() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", PORT))
    sock.listen(128)
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            server = http_server(sock)
            server.serve_forever()
            os._exit(0)
        children.append(pid)
    ready(sock.getsockname(), workers=children)
    while True:
        signal.pause()


def exec_child(listen_in_child: bool) -> None:
    if os.environ.get("INCOMING_APP_FD"):
        fd = int(os.environ["INCOMING_APP_FD"])
        sock = socket.socket(fileno=os.dup(fd))  # another descriptor number than the parent's
        os.close(fd)
        if listen_in_child:
            sock.listen(128)
        serve_http(http_server(sock))
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", PORT))
    if not listen_in_child:
        sock.listen(128)
    env = dict(os.environ, INCOMING_APP_FD=str(sock.fileno()))
    child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], env=env, pass_fds=(sock.fileno(),))
    children.append(child.pid)
    sock.close()
    child.wait()


def _spawned_worker(sock: socket.socket) -> None:
    sock.listen(128)  # uvicorn --reload: the worker, not the parent, calls listen()
    serve_http(http_server(sock))


def multiprocessing_spawn() -> None:
    """A listener bound in the parent and handed to a multiprocessing "spawn" child, which receives it through
    the resource sharer (another descriptor number, in a fresh interpreter): uvicorn --reload's way."""
    import multiprocessing

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", PORT))
    child = multiprocessing.get_context("spawn").Process(target=_spawned_worker, args=(sock,))
    child.start()
    children.append(child.pid)
    child.join()


def echo_and_http() -> None:
    echo_port = int(os.environ["ECHO_PORT"])
    esock = socket.create_server(("0.0.0.0", echo_port))

    def echo() -> None:
        while True:
            conn, addr = esock.accept()
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            record({"server": NAME, "echo": data.decode("latin-1"), "client": list(addr[:2])})
            conn.sendall(b"local:" + data)
            conn.close()

    threading.Thread(target=echo, daemon=True).start()
    serve_http(http_server())


def close_after() -> None:
    limit = int(os.environ.get("CLOSE_AFTER", "1"))
    server = http_server()
    count = [0]
    original = server.process_request

    def counting(request: socket.socket, client: tuple) -> None:
        original(request, client)
        count[0] += 1
        if count[0] >= limit:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close(),
                                             print("CLOSED", flush=True))).start()

    server.process_request = counting  # type: ignore[method-assign]
    serve_http(server)
    while True:
        signal.pause()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    if KIND == "http":
        serve_http(http_server())
    elif KIND == "asyncio":
        asyncio.run(asyncio_server())
    elif KIND == "aiohttp":
        aiohttp_server()
    elif KIND == "fork":
        forked_workers()
    elif KIND in ("exec", "spawn"):
        exec_child(KIND == "spawn")
    elif KIND == "mp-spawn":
        multiprocessing_spawn()
    elif KIND == "echo":
        echo_and_http()
    elif KIND == "close-after":
        close_after()
    else:
        raise SystemExit(f"unknown kind {KIND}")


if __name__ == "__main__":
    main()
