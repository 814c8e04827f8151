"""The sandbox's Kubernetes API server: HTTPS REST for what mirror-py calls, and the exec websocket.

mirror-py must run unchanged against a real cluster, so this server reproduces what clients can observe:
HTTP status codes and ``metav1.Status`` bodies worded like the real ones, RBAC decisions from bearer tokens,
resourceVersions and watch streams, and the pod exec websocket byte for byte as shared/k8s-exec-protocol.md
describes (subprotocol choice in the client's order, a raw ``403`` when nothing matches, the greeting frame,
v5 CLOSE, the status channel, errors before vs after the upgrade, every frame read as its own message).

HTTP/1.1 parsing is h11 (keep-alive, chunked watch responses, the 101 switch); the websocket frames are
handled here, because the exec protocol depends on details general-purpose servers hide (fragment handling,
unmasked client frames, a read loop that stalls when the process does not read stdin).  Everything runs on
one asyncio loop in a thread of its own, so tests in the same interpreter can use blocking clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import fcntl
import hashlib
import http
import json
import logging
import os
import pty
import signal
import socket
import ssl
import struct
import termios
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import yaml

from tests.sandbox import listing, logs, protobuf, tables, watch
from tests.sandbox.cluster import (
    SERVER_VERSION,
    V4_ONLY_VERSION,
    ApiCall,
    Cluster,
    ExecProblem,
    User,
    user_allows,
    user_allows_path,
)
from tests.sandbox.manifest import (
    API_GROUPS,
    RESOURCES,
    SUBRESOURCES,
    ApiError,
    ManifestError,
    filter_objects,
    json_merge,
    json_patch,
    parse_field_selector,
    parse_label_selector,
    strategic_merge,
    validate_pod_spec,
)

#: Resources a POST creates the way the sandbox applies its manifest (their pods started, as controllers would).
APPLIED_ON_CREATE = tuple(r.plural for r in RESOURCES.values()
                          if "create" in r.verbs and r.plural not in ("pods", "jobs", "selfsubjectaccessreviews"))

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
BASE64_PROTOCOLS = (V4_BASE64, V1_BASE64)
JSON_STATUS_PROTOCOLS = (V5, V4, V4_BASE64)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_INBOUND_FRAME = 32 * 1024 * 1024
OUTBOUND_CHUNK = 32 * 1024
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

_log = logging.getLogger("tests.sandbox.apiserver")


def _supported_protocols(v4_only: bool) -> list[str]:
    protocols = [V4, V4_BASE64, V1, V1_BASE64]
    return protocols if v4_only else [V5, *protocols]


def _flag(query: dict[str, list[str]], name: str) -> bool:
    """Kubernetes' query booleans: absent, ``0`` or ``false`` (any case) are false; anything else true."""
    values = query.get(name)
    if not values:
        return False
    return values[0].lower() not in ("0", "false")



def _unmask(data: bytes, mask: bytes) -> bytearray:
    """XOR the whole frame with the repeated mask as one big integer: a per-byte loop in Python would cap the
    sandbox's upload speed far below any real API server's."""
    if not data:
        return bytearray()
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    value = int.from_bytes(data, "big") ^ int.from_bytes(key, "big")
    return bytearray(value.to_bytes(len(data), "big"))


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    cert_user: str | None
    connection: int = 0  # the connection it came on (see ApiCall.connection)

    def header(self, name: str) -> str | None:
        """The FIRST header of that name, as Go's ``Header.Get`` reads it."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class RequestInfo:
    """The RBAC view of a request, as the real apiserver's RequestInfoFactory derives it."""

    resource_request: bool
    verb: str
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "GET": "get", "HEAD": "get", "DELETE": "delete"}
    verb = verbs.get(method, method.lower())
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(False, verb)
    if not rest:
        return RequestInfo(False, verb)
    info = RequestInfo(True, verb, group, version)
    if rest[0] == "namespaces" and len(rest) >= 3:
        info.namespace = rest[1]
        rest = rest[2:]
    elif rest[0] == "namespaces" and len(rest) == 2:
        info.namespace = rest[1]
    info.resource = rest[0]
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if method in ("GET", "HEAD") and not info.name:
        info.verb = "watch" if _flag(query, "watch") else "list"
    if method == "DELETE" and not info.name:
        info.verb = "deletecollection"
    return info


def _status_body(status: str, message: str = "", reason: str = "", code: int = 0, causes: Any = None) -> bytes:
    """A ``metav1.Status`` the way Go marshals it on the exec status channel (no kind/apiVersion)."""
    body: dict[str, Any] = {"metadata": {}, "status": status}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if causes is not None:
        body["details"] = {"causes": causes}
    if code:
        body["code"] = code
    return json.dumps(body, separators=(",", ":")).encode()


def _forbidden(user: str, info: RequestInfo) -> ApiError:
    resource = info.full_resource
    group = info.group
    qualified = f"{info.resource}.{group}" if group else info.resource
    subject = f'{qualified} "{info.name}"' if info.name else qualified
    where = f' in the namespace "{info.namespace}"' if info.namespace else " at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{user}" cannot {info.verb} resource "{resource}" in API group "{group}"{where}'
    )
    details: dict[str, Any] = {"kind": info.resource}
    if info.name:
        details = {"name": info.name, "kind": info.resource}
    if group:
        details["group"] = group
    return ApiError(403, "Forbidden", message, details)


# ------------------------------------------------------------------------------------------------ websocket


class WsClosed(Exception):
    """The websocket connection ended (close frame, EOF or a protocol violation)."""


class WebSocket:
    """Server side of RFC 6455, minimal and strict where the exec protocol needs it.

    Each data frame is delivered as its own message, continuation frames included (which is how the
    Kubernetes server reads a fragmented message: the continuation's first byte becomes a channel).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leftover: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray(leftover)
        self.closed = False
        self._send_lock = asyncio.Lock()

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = await self.reader.read(65536)
            if not data:
                raise WsClosed("EOF")
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def read_message(self) -> tuple[int, bytes]:
        """The next data frame as (opcode, payload); answers pings and close frames itself."""
        while True:
            b0, b1 = await self._read_exact(2)
            opcode = b0 & 0x0F
            if b0 & 0x70:
                await self.close(1002, "reserved bits set")
                raise WsClosed("RSV")
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", await self._read_exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", await self._read_exact(8))[0]
            if not b1 & 0x80:
                await self.close(1002, "client frames must be masked")
                raise WsClosed("unmasked")
            if length > MAX_INBOUND_FRAME:
                await self.close(1009, "frame too large")
                raise WsClosed("too large")
            mask = await self._read_exact(4)
            payload = _unmask(await self._read_exact(length), mask)
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1000
                await self.close(code if code in (1000, 1001) else 1000)
                raise WsClosed("close")
            if opcode == 0x9:
                await self._send_frame(0xA, bytes(payload))
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x0, 0x1, 0x2):
                return opcode, bytes(payload)
            await self.close(1002, "unknown opcode")
            raise WsClosed("opcode")

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        async with self._send_lock:
            if self.closed and opcode != 0x8:
                raise WsClosed("closed")
            n = len(payload)
            if n < 126:
                header = struct.pack(">BB", 0x80 | opcode, n)
            elif n < 65536:
                header = struct.pack(">BBH", 0x80 | opcode, 126, n)
            else:
                header = struct.pack(">BBQ", 0x80 | opcode, 127, n)
            try:
                self.writer.write(header + payload)
                await self.writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                self.closed = True
                raise WsClosed(str(exc)) from exc

    async def send_binary(self, payload: bytes) -> None:
        await self._send_frame(0x2, payload)

    async def send_text(self, payload: bytes) -> None:
        await self._send_frame(0x1, payload)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        with contextlib.suppress(WsClosed):
            await self._send_frame(0x8, struct.pack(">H", code) + reason.encode()[:120])
        self.closed = True


class ExecStream:
    """One exec over a negotiated channel protocol: framing per protocol, status per protocol."""

    def __init__(self, ws: WebSocket, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.base64 = protocol in BASE64_PROTOCOLS
        self.closes_stdin = protocol == V5  # only v5 has a stdin half-close

    async def send(self, channel: int, data: bytes = b"") -> None:
        if self.base64:
            await self.ws.send_text(bytes([ord("0") + channel]) + base64.b64encode(data))
        else:
            await self.ws.send_binary(bytes([channel]) + data)

    async def send_output(self, channel: int, data: bytes) -> None:
        for start in range(0, len(data), OUTBOUND_CHUNK):
            await self.send(channel, data[start : start + OUTBOUND_CHUNK])

    async def receive(self) -> tuple[int, bytes] | None:
        """(channel, data), or None for a message to ignore (empty)."""
        _opcode, payload = await self.ws.read_message()
        if not payload:
            return None
        if self.base64:
            channel = payload[0] - ord("0")
            try:
                data = base64.b64decode(payload[1:])
            except ValueError:
                return None
            return channel, data
        return payload[0], payload[1:]

    async def status(self, body: bytes | None, text: str | None) -> None:
        """The final status: JSON on v4/v5, the bare error text (nothing on success) before v4."""
        if self.protocol in JSON_STATUS_PROTOCOLS:
            if body is not None:
                await self.send(ERROR, body)
        elif text:
            await self.send(ERROR, text.encode())


# ------------------------------------------------------------------------------------------------ server


class ApiServer:
    """Serves the cluster's API on ``hosts`` (same port on each) from a background thread."""

    def __init__(self, cluster: Cluster, hosts: Sequence[str] = ("127.0.0.1",), port: int = 0) -> None:
        self.cluster = cluster
        self.hosts = list(hosts)
        self.port = port  # 0: a free one; a restarted server asks for its old port
        self._kill_execs = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sandbox-apiserver", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"API server failed to start: {self._error}") from self._error
        if not self.port:
            raise RuntimeError("API server did not start within 30 s")

    def stop(self, kill_execs: bool = True) -> None:
        """Stop serving. ``kill_execs=False`` is a server restart: the exec'd processes are not killed, they
        see their stdin close when their streams go, as behind a real API server that goes away."""
        self._kill_execs = kill_execs
        if self.loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=15)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    def _ssl_context(self) -> ssl.SSLContext:
        network = self.cluster.network
        assert network is not None and network.ca is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # TLS 1.2 only. Under TLS 1.3 a client sends its request right behind its Finished message; when both
        # arrive in one read, asyncio's server-side TLS layer (3.11) completes the handshake but leaves the
        # request undelivered until more bytes come, which they never do: the client waits for a response for
        # ever. On a loaded machine that happened about once in ten runs. With TLS 1.2 the server sends the
        # last handshake message, so a request always arrives in a later read. Real API servers speak both.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        names = [*self.hosts, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        names.append("kubernetes.default.svc.cluster.local")
        network.ca.issue_cert(*names, common_name="kube-apiserver").configure_cert(ctx)
        network.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # client certificates authenticate when present
        return ctx

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ctx = self._ssl_context()
        servers = []
        for _attempt in range(20):
            port = self.port
            if not port:
                with socket.socket() as probe:
                    probe.bind((self.hosts[0], 0))
                    port = probe.getsockname()[1]
            try:
                servers = [
                    await asyncio.start_server(self._connection, host, port, ssl=ctx, reuse_address=True)
                    for host in self.hosts
                ]
                break
            except OSError:
                for server in servers:
                    server.close()
                servers = []
                if self.port:
                    await asyncio.sleep(0.1)  # a fixed port: wait for it to be free
        if not servers:
            raise RuntimeError("no free port for the API server")
        self.port = port
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.close()
        procs = list(self._procs)
        if not self._kill_execs:
            for proc in procs:
                if proc.stdin is not None:
                    proc.stdin.close()
            # They exit on their own once their stdin is closed; this loop (and their pipes) ends with the server.
            if procs:
                await asyncio.wait([asyncio.ensure_future(proc.wait()) for proc in procs], timeout=3)
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, WsClosed):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a server bug: say so, and close this connection rather than leave its client hanging
            _log.error("sandbox API server: connection failed", exc_info=True)
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        number = self.cluster.count_connection()
        peer = writer.get_extra_info("peercert") or {}
        cert_user = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        while True:
            try:
                event = await self._next_event(conn, reader)
            except h11.RemoteProtocolError:
                with contextlib.suppress(Exception):
                    writer.write(conn.send(h11.Response(status_code=400, headers=[("Content-Length", "0")])))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            while True:
                more = await self._next_event(conn, reader)
                if isinstance(more, h11.Data):
                    body += more.data
                elif isinstance(more, h11.EndOfMessage) or more is h11.PAUSED:
                    break
                else:
                    return
            target = event.target.decode("latin-1")
            split = urlsplit(target)
            req = Request(
                method=event.method.decode(),
                target=target,
                path=unquote(split.path),
                query=parse_qs(split.query, keep_blank_values=True),
                headers=[(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers],
                body=bytes(body),
                cert_user=cert_user,
                connection=number,
            )
            upgraded = await self._handle(req, conn, reader, writer)
            if upgraded:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    @staticmethod
    async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            return event

    @staticmethod
    def _headers(content_type: str | None, length: int | None) -> list[tuple[str, str]]:
        headers = [
            ("Audit-Id", os.urandom(16).hex()),
            ("Cache-Control", "no-cache, private"),
            ("Date", datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")),
        ]
        if content_type:
            headers.append(("Content-Type", content_type))
        if length is not None:
            headers.append(("Content-Length", str(length)))
        return headers

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        content_type: str | None = "application/json",
    ) -> None:
        reason = http.HTTPStatus(code).phrase.encode() if code in http.HTTPStatus._value2member_map_ else b""
        writer.write(
            conn.send(h11.Response(status_code=code, headers=self._headers(content_type, len(body)), reason=reason))
        )
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _json(self, conn: h11.Connection, writer: asyncio.StreamWriter, code: int, obj: Any) -> None:
        await self._respond(conn, writer, code, json.dumps(obj).encode())

    # -- routing -------------------------------------------------------------------------------------

    def _authenticate(self, req: Request) -> tuple[User | None, str]:
        """(user, name): a bad token is an error (401) even where anonymous access would be allowed."""
        auth = req.header("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            user = self.cluster.authenticate(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return user, user.name
        if req.cert_user and req.cert_user in self.cluster.users:
            return self.cluster.users[req.cert_user], req.cert_user
        return None, "system:anonymous"

    async def _handle(
        self, req: Request, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        prefix = self.cluster.server_prefix
        path = req.path
        call = ApiCall(req.method, path, req.query, None, connection=req.connection)
        self.cluster.record(call)
        if prefix:
            if path != prefix and not path.startswith(prefix + "/"):
                call.code = 404
                await self._json(conn, writer, 404, ApiError(404, "NotFound", "404 page not found").status())
                return False
            path = path[len(prefix) :] or "/"
        info = request_info(req.method, path, req.query)
        call.verb = info.verb
        if info.resource_request:
            call.api_group, call.resource = info.group, info.full_resource
            call.namespace, call.name = info.namespace, info.name
        try:
            user, user_name = self._authenticate(req)
            call.user = user_name
            if info.resource_request:
                checks = [info.verb]
                if info.subresource in ("exec", "attach") and req.method == "GET":
                    checks = ["create", "get"]  # websocket exec: get, plus create since 1.35; both are needed
                for verb in checks:
                    if not user_allows(user, verb, info.group, info.full_resource, info.namespace, info.name):
                        check = copy.copy(info)
                        check.verb = verb
                        raise _forbidden(user_name, check)
            elif not user_allows_path(user, info.verb, path):
                raise ApiError(403, "Forbidden", f'forbidden: User "{user_name}" cannot {info.verb} path "{path}"', {})
            if info.resource_request and info.subresource in ("exec", "attach"):
                from tests.sandbox import spdy  # the SPDY/3.1 exec, for clients without the websocket

                if info.subresource == "exec" and spdy.is_spdy_upgrade(req):
                    return await spdy.serve_exec(self, req, conn, reader, writer, info, call)
                return await self._exec(req, conn, reader, writer, info, call)
            code, body = await self._route(req, path, info, user, conn, writer)
        except ApiError as exc:
            call.code = exc.code
            if conn.our_state is not h11.SEND_RESPONSE:
                raise WsClosed(f"{exc.code} after the response had started") from exc
            await self._json(conn, writer, exc.code, exc.status())
            return False
        except (ConnectionError, WsClosed):
            raise  # the client went away: nothing to answer
        except Exception as exc:  # a bug here must show as a 500, not a hung client
            call.code = 500
            _log.error("sandbox API server: %s %s failed", req.method, req.path, exc_info=True)
            if conn.our_state is not h11.SEND_RESPONSE:
                raise WsClosed("an error after the response had started") from exc  # the connection is closed
            err = ApiError(
                500, "InternalError", f"Internal error occurred: {exc!r}", {"causes": [{"message": repr(exc)}]}
            )
            await self._json(conn, writer, 500, err.status())
            return False
        call.code = code
        if body is not None:
            if isinstance(body, bytes):
                await self._respond(conn, writer, code, body, "text/plain")
            else:
                await self._json(conn, writer, code, body)
        return False

    async def _route(
        self,
        req: Request,
        path: str,
        info: RequestInfo,
        user: User | None,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
    ) -> tuple[int, Any]:
        if not info.resource_request:
            return 200, self._discovery(path)
        resource = RESOURCES.get(info.resource)
        if resource is None or resource.group != info.group or resource.version != info.version:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if resource.namespaced and info.namespace == "" and info.name and info.resource != "namespaces":
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if info.subresource:
            if info.subresource not in SUBRESOURCES.get(info.resource, ()):
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            if info.resource == "pods" and info.subresource == "log":
                return await self._log(req, info, conn, writer)
            return await self._subresource(req, info)
        store = self.cluster.store
        ns = info.namespace if resource.namespaced else ""
        view = tables.requested_view(req.header("accept"), req.query) if req.method == "GET" else tables.View()
        if req.method == "GET" and info.name:
            obj = store.get(info.resource, ns, info.name)
            if obj is None:
                raise ApiError.not_found(info.resource, info.name, info.group)
            if view.table:
                return 200, tables.table(info.resource, [obj], view, obj["metadata"].get("resourceVersion", ""))
            return 200, obj
        if req.method == "GET" and info.verb == "watch":
            await self._watch(req, info, conn, writer)
            return 200, None
        if req.method == "GET":
            label, field_sel = req.query.get("labelSelector", [""])[0], req.query.get("fieldSelector", [""])[0]
            with store.lock:
                items = filter_objects(info.resource, store.list(info.resource, ns or None), label, field_sel)
                rv = store.rv
            items, list_meta = listing.page(items, req.query, rv)
            if view.table:
                token = list_meta.get("continue", "")
                return 200, tables.table(info.resource, items, view, list_meta["resourceVersion"], continue_token=token)
            for item in items:
                item.pop("kind", None)  # type: ignore[attr-defined]
                item.pop("apiVersion", None)  # type: ignore[attr-defined]
            return 200, {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": list_meta,
                "items": items,
            }
        if req.method == "POST" and not info.name:
            return await self._create(req, info, user)
        if req.method == "DELETE" and info.name:
            return await self._delete(req, info)
        if req.method == "PATCH" and info.name and info.resource == "deployments":
            patch = self._body(req)
            if not isinstance(patch, dict):
                raise ApiError.bad_request("the body of the request must be an object")
            return 200, self.cluster.patch_deployment(info.namespace, info.name, patch)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _body(self, req: Request) -> Any:
        if not req.body:
            return {}
        try:
            ctype = (req.header("content-type") or "").lower()
            if ctype.split(";")[0].strip() == protobuf.MEDIA_TYPE:
                return protobuf.decode_object(req.body)
            if "yaml" in ctype:
                return yaml.safe_load(req.body)
            return json.loads(req.body)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError.bad_request(f"the body of the request was in an unknown format: {exc}")

    async def _create_applied(self, body: dict[str, Any], info: RequestInfo) -> dict[str, Any]:
        """A create of what a manifest holds (namespaces, config, services, workloads): the same path as the
        manifest the sandbox starts with, so an API client can set up an application like on a real cluster."""
        resource = RESOURCES[info.resource]
        meta = body.setdefault("metadata", {})
        if resource.namespaced:
            if meta.get("namespace") and meta["namespace"] != info.namespace:
                raise ApiError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = info.namespace
            if self.cluster.store.get("namespaces", "", info.namespace) is None:
                raise ApiError(404, "NotFound", f'namespaces "{info.namespace}" not found',
                               {"name": info.namespace, "kind": "namespaces"})
        name = meta.get("name") or ""
        if not name:
            raise ApiError.invalid(resource.kind, "", "metadata.name: Required value: name is required")
        if self.cluster.store.get(info.resource, info.namespace if resource.namespaced else "", name) is not None:
            raise ApiError(409, "AlreadyExists", f'{info.resource}{"." + resource.group if resource.group else ""} '
                           f'"{name}" already exists', {"name": name, "group": resource.group, "kind": info.resource})
        body["apiVersion"], body["kind"] = resource.api_version, resource.kind
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.cluster.create_objects, [body])
        except ManifestError as exc:
            raise ApiError.invalid(resource.kind, name, str(exc))
        return self.cluster.store.get(info.resource, info.namespace if resource.namespaced else "", name) or body

    async def _create(self, req: Request, info: RequestInfo, user: User | None) -> tuple[int, Any]:
        body = self._body(req)
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request must be an object")
        if info.resource == "selfsubjectaccessreviews":
            return 201, self._access_review(body, user)
        if info.resource in APPLIED_ON_CREATE:
            return 201, await self._create_applied(body, info)
        if info.resource not in ("pods", "jobs"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") and meta["namespace"] != info.namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = info.namespace
        if self.cluster.store.get("namespaces", "", info.namespace) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{info.namespace}" not found',
                {"name": info.namespace, "kind": "namespaces"},
            )
        kind = "Pod" if info.resource == "pods" else "Job"
        name = meta.get("name") or meta.get("generateName") or ""
        try:
            validate_pod_spec(
                kind,
                name,
                body.get("spec") if kind == "Pod" else (body.get("spec") or {}).get("template", {}).get("spec"),
            )
        except ManifestError as exc:
            raise ApiError.invalid(kind, name, str(exc))
        body["apiVersion"] = RESOURCES[info.resource].api_version
        body["kind"] = kind
        if kind == "Pod":
            ns, pod_name = self.cluster.create_pod(body)
            return 201, self.cluster.store.get("pods", ns, pod_name)
        self.cluster.create_job(body)
        return 201, self.cluster.store.get("jobs", info.namespace, meta.get("name") or "") or self._last_job(
            info.namespace
        )

    def _last_job(self, ns: str) -> Any:
        jobs = self.cluster.store.list("jobs", ns)
        return max(jobs, key=lambda j: int(j["metadata"]["resourceVersion"])) if jobs else {}

    async def _delete(self, req: Request, info: RequestInfo) -> tuple[int, Any]:
        body = self._body(req) if req.body else {}
        grace = req.query.get("gracePeriodSeconds", [None])[0]
        if grace is None and isinstance(body, dict):
            grace = body.get("gracePeriodSeconds")
        propagation = req.query.get("propagationPolicy", [None])[0]
        if propagation is None and isinstance(body, dict):
            propagation = body.get("propagationPolicy")
            if propagation is None and body.get("orphanDependents") is False:
                propagation = "Background"
        if info.resource == "namespaces":
            return 200, await asyncio.get_running_loop().run_in_executor(None, self.cluster.delete_namespace,
                                                                         info.name)
        if info.resource == "pods":
            return 200, self.cluster.delete_pod(info.namespace, info.name, float(grace) if grace is not None else None)
        if info.resource == "jobs":
            job = self.cluster.delete_job(info.namespace, info.name, propagation)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": info.name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]},
            }
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _access_review(self, body: dict[str, Any], user: User | None) -> dict[str, Any]:
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes")
        if attrs:
            resource = attrs.get("resource", "")
            if attrs.get("subresource"):
                resource = f"{resource}/{attrs['subresource']}"
            allowed = user_allows(
                user,
                attrs.get("verb", ""),
                attrs.get("group", ""),
                resource,
                attrs.get("namespace", ""),
                attrs.get("name", ""),
            )
        else:
            nra = spec.get("nonResourceAttributes") or {}
            allowed = user_allows_path(user, nra.get("verb", ""), nra.get("path", ""))
        status: dict[str, Any] = {"allowed": allowed}
        if allowed:
            status["reason"] = "sandbox RBAC: allowed by a rule of the user"
        return {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    async def _log(
        self, req: Request, info: RequestInfo, conn: h11.Connection, writer: asyncio.StreamWriter
    ) -> tuple[int, Any]:
        """``pods/log`` (tests/sandbox/logs.py): the log so far, or with ``follow`` a stream until the container
        stops. A container that never started has no log, as the kubelet answers."""
        if req.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        cluster = self.cluster
        _, container = cluster.resolve_container(info.namespace, info.name, req.query.get("container", [""])[0])
        options = logs.LogOptions.from_query(req.query)
        try:
            c = cluster.runtime(info.name, info.namespace).container(container)
        except KeyError:
            c = None
        if options.previous and (c is None or not c.last_state.get("terminated")):
            raise ApiError.bad_request(
                f'previous terminated container "{container}" in pod "{info.name}" not found'
            )
        if c is None or (c.state == "waiting" and not c.started_at):
            reason = c.reason if c is not None else "ContainerCreating"
            raise ApiError.bad_request(
                f'container "{container}" in pod "{info.name}" is waiting to start: {reason}'
            )
        path = cluster.log_path(info.namespace, info.name, container)
        data, offset = logs.read(path, options)
        if not options.follow:
            return 200, data
        proc = c.proc
        console = c.console

        def running() -> bool:
            alive = proc is not None and proc.poll() is None
            return alive or (console is not None and not console.output_done.is_set())

        async def send(chunk: bytes) -> None:
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()

        writer.write(conn.send(h11.Response(status_code=200, headers=self._headers("text/plain", None))))
        if data:
            await send(data)
        await logs.follow(path, offset, len(data), options, send, running)
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return 200, None

    async def _subresource(self, req: Request, info: RequestInfo) -> tuple[int, Any]:
        cluster = self.cluster
        if info.resource != "pods":
            obj = cluster.store.get(info.resource, info.namespace, info.name)
            if obj is None:
                raise ApiError.not_found(info.resource, info.name, info.group)
            return 200, obj
        if info.subresource == "ephemeralcontainers" and not cluster.ephemeral_containers_enabled:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        pod = cluster.store.get("pods", info.namespace, info.name)
        if pod is None:
            raise ApiError.not_found("pods", info.name)
        if info.subresource in ("status",) or req.method == "GET":
            if req.method != "GET":
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return 200, pod
        # ephemeralcontainers: PATCH (strategic / merge / JSON patch) or PUT of the whole pod
        body = self._body(req)
        if req.method == "PUT":
            new_spec = (body or {}).get("spec") or {}
        elif req.method == "PATCH":
            ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
            if ctype in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
                patched = strategic_merge(pod, body)
            elif ctype == "application/merge-patch+json":
                patched = json_merge(pod, body)
            elif ctype == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
                patched = json_patch(pod, body)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, "
                    f'application/strategic-merge-patch+json (got "{ctype}")',
                )
            new_spec = patched.get("spec") or {}
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return 200, cluster.add_ephemeral_containers(info.namespace, info.name, new_spec)

    def _discovery(self, path: str) -> Any:
        path = path.rstrip("/") or "/"
        version = V4_ONLY_VERSION if self.cluster.v4_only else SERVER_VERSION
        if path == "/version":
            return {
                **version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-12-10T00:00:00Z",
                "goVersion": "go1.22.9",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path in ("/healthz", "/livez", "/readyz"):
            return b"ok"
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}],
            }
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g) for g in API_GROUPS],
            }
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in API_GROUPS:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
        if parts == ["api", "v1"] or (
            len(parts) == 3 and parts[0] == "apis" and parts[1] in API_GROUPS and parts[2] == "v1"
        ):
            group = "" if parts[0] == "api" else parts[1]
            return self._resource_list(group)
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    @staticmethod
    def _group(name: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{name}/v1", "version": "v1"}
        return {"name": name, "versions": [gv], "preferredVersion": gv}

    def _resource_list(self, group: str) -> dict[str, Any]:
        resources = []
        for res in RESOURCES.values():
            if res.group != group:
                continue
            resources.append(
                {
                    "name": res.plural,
                    "singularName": res.kind.lower(),
                    "namespaced": res.namespaced,
                    "kind": res.kind,
                    "verbs": sorted(res.verbs),
                    **({"shortNames": list(res.short_names)} if res.short_names else {}),
                }
            )
            for sub in SUBRESOURCES.get(res.plural, ()):
                if sub == "ephemeralcontainers" and not self.cluster.ephemeral_containers_enabled:
                    continue
                kind, verbs = {
                    "exec": ("PodExecOptions", ["create", "get"]),
                    "attach": ("PodAttachOptions", ["create", "get"]),
                    "log": ("Pod", ["get"]),
                    "ephemeralcontainers": ("Pod", ["get", "patch", "update"]),
                    "status": (res.kind, ["get", "patch", "update"]),
                }[sub]
                resources.append(
                    {
                        "name": f"{res.plural}/{sub}",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/v1" if group else "v1",
            "resources": resources,
        }

    # -- watch ---------------------------------------------------------------------------------------

    async def _watch(self, req: Request, info: RequestInfo, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        """A watch stream (tests/sandbox/watch.py has the semantics); objects rendered as the Accept header asks."""
        ns = info.namespace
        by_label = parse_label_selector(req.query.get("labelSelector", [""])[0])
        by_field = parse_field_selector(info.resource, req.query.get("fieldSelector", [""])[0])

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            if ns and obj["metadata"].get("namespace") != ns:
                return False
            return by_label(obj["metadata"].get("labels") or {}) and by_field(obj)

        options = watch.WatchOptions.from_query(req.query)
        resource = RESOURCES[info.resource]
        view = tables.requested_view(req.header("accept"), req.query)
        started = False
        first_row = True

        async def send(kind: str, obj: dict[str, Any]) -> None:
            nonlocal started, first_row
            if not started:
                writer.write(conn.send(h11.Response(status_code=200, headers=self._headers("application/json", None))))
                started = True
            if view.table and kind not in ("ERROR", "BOOKMARK"):
                rv = obj["metadata"].get("resourceVersion", "")
                obj = tables.table(info.resource, [obj], view, rv, columns=first_row)
                first_row = False
            writer.write(conn.send(h11.Data(data=json.dumps({"type": kind, "object": obj}).encode() + b"\n")))
            await writer.drain()

        await watch.serve(
            self.cluster.store,
            info.resource,
            resource.kind,
            resource.api_version,
            ns,
            matches,
            options,
            send,
            self.cluster.watch_bookmark_interval,
        )
        if not started:
            writer.write(conn.send(h11.Response(status_code=200, headers=self._headers("application/json", None))))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    # -- exec ----------------------------------------------------------------------------------------

    async def _exec(
        self,
        req: Request,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: RequestInfo,
        call: ApiCall,
    ) -> bool:
        cluster = self.cluster
        if req.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        query = req.query
        command = query.get("command", [])
        stdin, stdout, stderr, tty = (_flag(query, n) for n in ("stdin", "stdout", "stderr", "tty"))
        if tty and stderr:
            stderr = False  # as the kubelet does: a terminal has no separate stderr
        _pod, container = cluster.resolve_container(info.namespace, info.name, query.get("container", [""])[0])
        if not (stdin or stdout or stderr):
            raise ApiError.bad_request("you must specify at least 1 of stdin, stdout, stderr")
        upgrade = (req.header("upgrade") or "").lower()
        connection = (req.header("connection") or "").lower()
        if "websocket" not in upgrade or "upgrade" not in connection:
            raise ApiError.bad_request("Upgrade request required")
        if req.header("sec-websocket-version") != "13":
            raise ApiError.bad_request("websocket: unsupported version (want Sec-WebSocket-Version: 13)")
        key = req.header("sec-websocket-key")
        if not key:
            raise ApiError.bad_request("websocket: missing Sec-WebSocket-Key")
        offered_header = req.header("sec-websocket-protocol")
        offered = [p.strip() for p in (offered_header or "").split(",") if p.strip()]
        supported = _supported_protocols(cluster.v4_only)
        if not offered:
            chosen = ""  # the kubelet accepts a request without subprotocol as channel.k8s.io
        else:
            chosen = next((p for p in offered if p in supported), None)  # type: ignore[assignment]
            if chosen is None:
                call.code = 403
                writer.write(
                    conn.send(h11.Response(status_code=403, headers=[("Content-Length", "0")], reason=b"Forbidden"))
                )
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                return False
        problem: ExecProblem | None = None
        plan = None
        attached = None
        try:
            if info.subresource == "attach":
                attached = self._attach_target(info.namespace, info.name, container)
            else:
                plan = cluster.plan_exec(info.namespace, info.name, container, command)
        except ExecProblem as exc:
            if chosen != V5:  # the kubelet refuses before upgrading; only v5 upgrades first
                err = ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: {exc.message}",
                    {"causes": [{"message": exc.message}]},
                )
                call.code = 500
                await self._json(conn, writer, 500, err.status())
                return False
            problem = exc
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        if chosen:
            headers.append(("Sec-WebSocket-Protocol", chosen))
        writer.write(
            conn.send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
        )
        await writer.drain()
        call.code = 101
        leftover, _ = conn.trailing_data
        ws = WebSocket(reader, writer, leftover)
        stream = ExecStream(ws, chosen or V1)
        try:
            await stream.send(STDOUT if stdout else STDERR if stderr else ERROR)
            if attached is not None:
                await self._run_attach(stream, attached, info.namespace, info.name, stdin, tty)
            elif problem is not None or plan is None:
                message = problem.message if problem else "internal error"
                await stream.status(
                    _status_body(
                        "Failure", f"Internal error occurred: {message}", "InternalError", 500, [{"message": message}]
                    ),
                    message,
                )
            else:
                await self._run_exec(stream, plan, command, stdin, stdout, stderr, tty)
            await ws.close(1000)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.read(65536), 1.0)
        except WsClosed:
            pass
        return True

    async def _run_exec(
        self, stream: ExecStream, plan: Any, command: list[str], stdin: bool, stdout: bool, stderr: bool, tty: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        master = slave = -1
        if tty:
            master, slave = pty.openpty()
            os.set_blocking(master, False)
            proc = await asyncio.create_subprocess_exec(
                *plan.argv, env=plan.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
            )
            os.close(slave)
        else:
            pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
            proc = await asyncio.create_subprocess_exec(
                *plan.argv,
                env=plan.env,
                stdin=pipe if stdin else devnull,
                stdout=pipe if stdout else devnull,
                stderr=pipe if stderr else devnull,
                start_new_session=True,
            )
        self._procs.add(proc)
        stdin_open = stdin
        last_data = loop.time()  # data either way; websocket pings are answered below this and do not count

        async def pump(source: asyncio.StreamReader | None, channel: int) -> None:
            nonlocal last_data
            if source is None:
                return
            while True:
                data = await source.read(OUTBOUND_CHUNK)
                if not data:
                    return
                last_data = loop.time()
                await stream.send_output(channel, data)

        async def idle_deadline() -> None:
            """The kubelet's streaming-connection-idle-timeout: a stream with no data either way is cut."""
            while True:
                timeout = self.cluster.exec_idle_timeout
                if timeout is not None and loop.time() - last_data > timeout:
                    self.cluster.exec_idle_closes += 1
                    return
                await asyncio.sleep(0.05)

        async def pump_pty() -> None:
            # Non-blocking reads from the loop: a blocking read in a worker thread could outlive the
            # terminal's fd, block on whatever reuses the number, and hang the server's shutdown.
            nonlocal last_data
            readable = asyncio.Event()
            loop.add_reader(master, readable.set)
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(master, OUTBOUND_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:  # EIO once the terminal's last process has gone
                    return
                if not data:
                    return
                last_data = loop.time()
                await stream.send_output(STDOUT, data)

        async def write_pty(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)

        async def inbound() -> None:
            nonlocal stdin_open, last_data
            while True:
                message = await stream.receive()
                if message is None:
                    continue  # an empty message is ignored; a channel byte alone is a 0-byte write
                channel, data = message
                last_data = loop.time()
                if channel == CLOSE and stream.closes_stdin:
                    if len(data) != 1 or data[0] >= 5:
                        await stream.ws.close(1002, "invalid CLOSE message")
                        raise WsClosed("bad CLOSE")
                    if data[0] == STDIN and stdin_open:
                        stdin_open = False
                        if tty:
                            with contextlib.suppress(OSError):
                                os.write(master, b"\x04")
                        elif proc.stdin is not None:
                            proc.stdin.close()
                    continue
                if channel == STDIN and stdin_open and data:
                    if tty:
                        await write_pty(data)
                    elif proc.stdin is not None:
                        proc.stdin.write(data)
                        try:
                            await proc.stdin.drain()  # blocks this loop (pings too) like the real server
                        except (BrokenPipeError, ConnectionResetError):
                            stdin_open = False
                elif channel == RESIZE and tty:
                    with contextlib.suppress(ValueError, KeyError, OSError, TypeError):
                        size = json.loads(data)
                        fcntl.ioctl(
                            master, termios.TIOCSWINSZ, struct.pack("HHHH", size["Height"], size["Width"], 0, 0)
                        )
                # anything else (channels >= 5, output channels) is dropped

        reader_task = asyncio.ensure_future(inbound())
        pumps = [
            asyncio.ensure_future(pump_pty() if tty else pump(proc.stdout, STDOUT)),
            asyncio.ensure_future(pump(None if tty else proc.stderr, STDERR)),
        ]
        idle_task = asyncio.ensure_future(idle_deadline())
        try:
            wait_proc = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({wait_proc, reader_task, idle_task}, return_when=asyncio.FIRST_COMPLETED)
            if idle_task in done and not wait_proc.done():
                # Cut for idleness: the process loses its stdin and its output goes nowhere, as when the
                # kubelet closes the stream; the client sees the websocket close without a status.
                if proc.stdin is not None and not tty:
                    proc.stdin.close()
                for p in pumps:
                    p.cancel()
                await stream.ws.close(1000)
                raise WsClosed("idle timeout")
            if reader_task in done and not wait_proc.done():
                # The client went away: close the process' stdin and stop reading its output, as the
                # kubelet does; the process itself is not killed (it sees EOF / EPIPE and decides).
                exc = reader_task.exception()
                if proc.stdin is not None and not tty:
                    proc.stdin.close()
                for p in pumps:
                    p.cancel()
                if exc is not None and not isinstance(exc, WsClosed):
                    raise exc
                raise WsClosed("client gone")
            code = await wait_proc
            # Output written just before exit is still in the pipes: drain it, but don't wait on a
            # background child that inherited them.
            await asyncio.wait(pumps, timeout=2.0)
            for p in pumps:
                p.cancel()
            for p in pumps:
                if p.done() and not p.cancelled() and isinstance(p.exception(), WsClosed):
                    raise WsClosed("client gone")
            exit_code = 128 - code if code < 0 else code
            if exit_code == 0:
                await stream.status(_status_body("Success"), None)
            else:
                message = (
                    "command terminated with non-zero exit code: "
                    f"error executing command {_go_list(command)}, exit code {exit_code}"
                )
                await stream.status(
                    _status_body(
                        "Failure", message, "NonZeroExitCode", 0, [{"reason": "ExitCode", "message": str(exit_code)}]
                    ),
                    message,
                )
        finally:
            reader_task.cancel()
            idle_task.cancel()
            self._procs.discard(proc)
            if master >= 0:
                loop.remove_reader(master)
                with contextlib.suppress(OSError):
                    os.close(master)
            if proc.returncode is None and not self._stop_requested():
                self._reap_later(proc)

    def _attach_target(self, ns: str, pod: str, container: str) -> Any:
        """The running container an attach joins (the kubelet refuses one that is not running)."""
        try:
            c = self.cluster.runtime(pod, ns).container(container)
        except KeyError:
            c = None
        if c is None or c.state != "running" or c.proc is None:
            raise ExecProblem(f"container {container} is not running, cannot attach")
        return c

    async def _run_attach(self, stream: ExecStream, c: Any, ns: str, pod: str, stdin: bool, tty: bool) -> None:
        """Join a container's console: stdin into it, its output from now on out, until it stops."""
        loop = asyncio.get_running_loop()
        console = c.console
        log_path = self.cluster.log_path(ns, pod, c.name)
        try:
            start = log_path.stat().st_size
        except OSError:
            start = 0
        proc = c.proc

        def running() -> bool:
            return proc.poll() is None or (console is not None and not console.output_done.is_set())

        async def inbound() -> None:
            while True:
                message = await stream.receive()
                if message is None:
                    continue
                channel, data = message
                if channel == CLOSE and stream.protocol == V5:
                    if data[:1] == bytes([STDIN]) and stdin and console is not None and console.stdin_once:
                        console.close_stdin()
                elif channel == STDIN and stdin and console is not None and data:
                    await loop.run_in_executor(None, console.write, data)
                elif channel == RESIZE and tty and console is not None:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        size = json.loads(data)
                        console.resize(int(size["Width"]), int(size["Height"]))

        async def send(data: bytes) -> None:
            await stream.send_output(STDOUT, data)

        reader_task = asyncio.ensure_future(inbound())
        output = asyncio.ensure_future(logs.follow(log_path, start, 0, logs.LogOptions(), send, running))
        try:
            done, _ = await asyncio.wait({reader_task, output}, return_when=asyncio.FIRST_COMPLETED)
            if reader_task in done:
                if console is not None and stdin and console.stdin_once:
                    console.close_stdin()  # stdinOnce: the first attach's end is the end of input
                exc = reader_task.exception()
                if exc is not None and not isinstance(exc, WsClosed):
                    raise exc
                raise WsClosed("client gone")
            output.result()
            await stream.status(_status_body("Success"), None)
        finally:
            reader_task.cancel()
            output.cancel()

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _reap_later(self, proc: asyncio.subprocess.Process) -> None:
        """Keep a process whose client left: it is reaped when it exits (it dies with its pod otherwise)."""
        task = asyncio.ensure_future(proc.wait())
        self._procs.add(proc)
        task.add_done_callback(lambda _t: self._procs.discard(proc))


def _go_list(items: Sequence[str]) -> str:
    """How Go's %v prints a []string: ``[sh -c exit 3]``."""
    return "[" + " ".join(items) + "]"
