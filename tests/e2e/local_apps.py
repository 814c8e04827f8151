"""Small apps run under mirror-py by tests/e2e/test_local_listeners.py; each prints one JSON line.

    debuggee            fetch from the pod's loopback server (the app debugpy runs)
    names CLIENT URL    fetch URL (a name the laptop resolves) with requests, urllib3, asyncio or socket
    own PORT            serve HTTP on 127.0.0.1:PORT in a thread, then fetch from 127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.parse
import urllib.request


def debuggee() -> dict:
    body = json.loads(urllib.request.urlopen("http://api.pod.internal:8081/debugged", timeout=10).read())
    return {"server": body["server"], "pod_only": os.environ.get("POD_ONLY")}


def _raw_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()


def _body(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def fetch(client: str, url: str) -> dict:
    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path or "/"
    if client == "requests":
        import requests

        return requests.get(url, timeout=10).json()
    if client == "urllib3":
        import urllib3

        return json.loads(urllib3.PoolManager().request("GET", url, timeout=10).data)
    if client == "asyncio":
        async def get() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_raw_get(host, port, path))
            data = await reader.read()
            writer.close()
            return data

        return _body(asyncio.run(get()))
    if client == "socket":
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(_raw_get(host, port, path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return _body(b"".join(chunks))
    raise SystemExit(f"unknown client {client!r}")


def own(port: int) -> dict:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps({"server": "own"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return fetch("socket", f"http://127.0.0.1:{port}/own")
    finally:
        server.shutdown()


def main(argv: list[str]) -> None:
    if argv[0] == "debuggee":
        out = debuggee()
    elif argv[0] == "own":
        out = {"server": own(int(argv[1])).get("server")}
    elif argv[0] == "names":
        body = fetch(argv[1], argv[2])
        out = {"server": body.get("server"), "peer": socket.gethostbyname(urllib.parse.urlsplit(argv[2]).hostname)}
    else:
        raise SystemExit(f"unknown app {argv[0]!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
