"""The Kubernetes exec websocket as a channel to the agent's stdin/stdout.

Follows the API server's behaviour exactly: offers ``v5.channel.k8s.io`` then ``v4.channel.k8s.io`` in one
header, never fragments or compresses, sends stdin as channel-0 binary frames, ends stdin with the v5 CLOSE
frame ``[255, 0]`` (v4 has no half-close: the connection itself is closed), reads stdout (1), stderr (2) and
the one status message (3) that carries the exit code. Never sends resize frames: with tty=false they stall
the server's read loop.

:class:`ExecChannel`, what the rest of mirror-py uses, tries that websocket and falls back to SPDY/3.1
(spdy_exec.py) when the upgrade is refused in a way SPDY gets past, as kubectl does (:func:`falls_back`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import MirrorError
from ..kube import proxy as proxies
from .channel import Channel, ChannelListener
from .dial import ProxyRefused, open_connection
from .stdin_queue import QueuedStdin

log = logging.getLogger("mirror_py.session")

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255


def exec_url(host: str, namespace: str, pod: str, container: str | None, command: list[str]) -> str:
    """wss://HOST[/prefix]/api/v1/namespaces/NS/pods/POD/exec?command=..&...; all four stream flags sent."""
    parts = urlsplit(host)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/exec"
    query = [("command", c) for c in command]
    if container:
        query.append(("container", container))
    query += [("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
    return urlunsplit((scheme, parts.netloc, path, qs, ""))


def parse_status(raw: bytes) -> tuple[int | None, str | None]:
    """The exit code and, for failures other than a plain non-zero exit, the server's message."""
    try:
        status = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return None, raw.decode("utf-8", "replace")[:300]
    if not isinstance(status, dict):
        return None, None
    if status.get("status") == "Success":
        return 0, None
    causes = ((status.get("details") or {}).get("causes")) or []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message")), None
            except (TypeError, ValueError):
                break
    message = status.get("message") or status.get("reason") or "unknown failure"
    code = 127 if "executable file not found" in message or "no such file or directory" in message else None
    return code, message


def ssl_context(cfg: Any) -> ssl.SSLContext | None:
    """TLS settings exactly as the kubeconfig gave them to the official client's Configuration."""
    if not str(cfg.host).startswith("https"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx


def auth_headers(cfg: Any) -> dict[str, str]:
    # auth_settings() runs the refresh hook: exec plugins and expiring tokens get a fresh token here.
    settings = cfg.auth_settings() or {}
    token = settings.get("BearerToken") or {}
    value = token.get("value")
    return {"Authorization": value} if value else {}


def describe_rejection(status_code: int, body: bytes, namespace: str, pod: str) -> str:
    message = ""
    try:
        message = json.loads(body.decode("utf-8", "replace")).get("message", "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()[:300]
    if status_code == 403 and not message:
        return "the API server accepted none of the exec protocols offered (v5, v4): is it older than 1.30?"
    if status_code == 403:
        return (f"exec into pod {namespace}/{pod} is forbidden: {message}; mirror-py's exec agent needs "
                f"get and create on pods/exec in namespace {namespace}")
    if status_code == 401:
        return f"the API server rejected the credentials (401 Unauthorized): {message}"
    if status_code == 404:
        return f"pod {namespace}/{pod} not found: {message}"
    return f"exec into pod {namespace}/{pod} failed ({status_code}): {message}"


def _connect_on(transport: asyncio.BaseTransport | None) -> Any:
    """websockets' ``connect``, or one whose connection is ``transport`` (already connected, TLS done):
    the upgrade is then its first round trip. Everything else (the handshake, its checks, redirects' refusal)
    is websockets' own. websockets 17 opens its connection in ``open_tcp_connection``, 15 and 16 in
    ``create_connection``: both are taken over."""
    from websockets.asyncio.client import connect

    if transport is None:
        return connect

    def adopt(connection: Any) -> Any:
        nonlocal transport
        if transport is None:
            raise ConnectionError("the connection opened ahead was used already")
        transport.set_protocol(connection)
        connection.connection_made(transport)
        transport = None
        return connection

    class _On(connect):  # type: ignore[misc,valid-type]
        async def open_tcp_connection(self) -> Any:
            return adopt(self.factory(self.ws_uri))

        async def create_connection(self) -> Any:
            from websockets.uri import parse_uri

            return adopt(self.protocol_factory(parse_uri(self.uri)))

    return _On


class UpgradeRefused(MirrorError):
    """The API server (or something in front of it) answered the exec websocket upgrade with something other
    than a usable websocket: ``status`` is the HTTP status (101 for a broken handshake)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebSocketExecChannel(QueuedStdin, Channel):
    """The exec websocket alone; :class:`ExecChannel` is what the rest of mirror-py uses."""

    no_python_hint = ("use --agent-mode ephemeral (its image brings python3), or point --agent-python at the "
                      "container's interpreter")

    def __init__(self, configuration: Any, namespace: str, pod: str, container: str | None, command: list[str],
                 description: str, python: str = "python3", open_timeout: float = 30.0,
                 warm: Any = None) -> None:
        self.cfg = configuration
        self.warm = warm  # a WarmConnection (transport/warm.py) the upgrade may use instead of connecting
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.command = command
        self.description = description
        self.python = python
        self.open_timeout = open_timeout
        self.ws: Any = None
        self.protocol: str | None = None
        self._init_stdin()
        self._tasks: list[asyncio.Task] = []
        self._exit: tuple[int | None, str | None] = (None, None)

    async def open(self, listener: ChannelListener) -> None:
        from websockets.exceptions import InvalidHeader, InvalidStatus, NegotiationError, WebSocketException

        self.listener = listener
        warm = None
        if self.warm is not None:
            warm, self.warm = await self.warm.take(), None
        if warm is not None:
            try:
                await self._open(warm)
                return
            except MirrorError:
                raise  # the server answered the upgrade: its answer stands
            except (asyncio.TimeoutError, TimeoutError) as exc:  # no answer within open_timeout: that bound holds
                raise MirrorError(f"cannot open an exec stream to pod {self.namespace}/{self.pod} at "
                                  f"{self.cfg.host}: {exc}") from None
            except (InvalidHeader, NegotiationError) as exc:  # a 101 that is no websocket this client accepts
                raise UpgradeRefused(101, f"the exec websocket upgrade failed: {exc}") from None
            except Exception as exc:  # the connection died while it waited: connect anew, as without it
                log.debug("the upgrade on the connection opened ahead failed (%r); connecting anew", exc)
        try:
            if proxies.of(self.cfg) is not None:  # the proxy's tunnel is opened here, the upgrade runs on it
                transport, _waiting = await open_connection(self.cfg, self.open_timeout)
                await self._open(transport)
            else:
                await self._open(None)
        except ProxyRefused as exc:
            raise MirrorError(f"cannot open an exec stream to pod {self.namespace}/{self.pod}: {exc}") from None
        except InvalidStatus as exc:
            resp = exc.response
            text = describe_rejection(resp.status_code, resp.body or b"", self.namespace, self.pod)
            raise UpgradeRefused(resp.status_code, text) from None
        except (InvalidHeader, NegotiationError) as exc:
            raise UpgradeRefused(101, f"the exec websocket upgrade failed: {exc}") from None
        except (OSError, asyncio.TimeoutError, WebSocketException, ssl.SSLError) as exc:
            raise MirrorError(f"cannot open an exec stream to pod {self.namespace}/{self.pod} at "
                              f"{self.cfg.host}: {exc}") from None

    async def _open(self, warm: asyncio.BaseTransport | None) -> None:
        """The upgrade, on ``warm`` when given (an InvalidStatus from it becomes the MirrorError at once)."""
        from websockets.exceptions import InvalidStatus

        url = exec_url(self.cfg.host, self.namespace, self.pod, self.container, self.command)
        kwargs: dict[str, Any] = {}
        ctx = ssl_context(self.cfg) if warm is None else None
        if ctx is not None:
            kwargs["ssl"] = ctx
            if getattr(self.cfg, "tls_server_name", None):
                kwargs["server_hostname"] = self.cfg.tls_server_name
        connector = _connect_on(warm)
        try:
            self.ws = await connector(
                url,
                subprotocols=[V5, V4],  # type: ignore[list-item]
                # a token refresh may run an exec credential plugin (a cloud CLI taking seconds): off the loop,
                # where the session's other streams keep flowing meanwhile
                additional_headers=await asyncio.to_thread(auth_headers, self.cfg),
                compression=None,
                proxy=None,  # a proxy's tunnel is opened by transport/dial.py, never by the websocket library
                open_timeout=self.open_timeout,
                ping_interval=20,
                ping_timeout=None,  # a busy server legitimately stops answering pings; liveness is ours
                max_size=None,
                max_queue=64,
                write_limit=1 << 20,
                **kwargs,
            )
        except InvalidStatus as exc:
            if warm is None:
                raise
            resp = exc.response
            raise UpgradeRefused(resp.status_code, describe_rejection(resp.status_code, resp.body or b"",
                                                                      self.namespace, self.pod)) from None
        self.protocol = self.ws.subprotocol
        log.info("exec stream open (%s)", self.protocol)
        self._tasks = [asyncio.ensure_future(self._reader()), asyncio.ensure_future(self._writer())]

    # -------------------------------------------------------------------------------------------- writing
    async def _writer(self) -> None:
        try:
            await self._pump_stdin(lambda chunk: self.ws.send(b"\x00" + chunk))
            if self.protocol == V5:
                await self.ws.send(bytes((CLOSE, STDIN)))
            else:
                await self.ws.close()  # v4 cannot half-close: ending the stream ends stdin
        except Exception as exc:  # the reader reports the closure; nothing to send on a dead socket
            log.debug("exec writer stopped: %r", exc)

    # -------------------------------------------------------------------------------------------- reading
    async def _reader(self) -> None:
        from websockets.exceptions import ConnectionClosed

        reason: str | None = None
        try:
            async for message in self.ws:
                if isinstance(message, str) or not message:
                    continue
                channel, payload = message[0], message[1:]
                if channel == STDOUT:
                    if payload:
                        self.listener.on_bytes(payload)
                elif channel == STDERR:
                    if payload:
                        self.listener.on_stderr(payload)
                elif channel == STATUS:
                    if payload:
                        self._exit = parse_status(payload)
        except ConnectionClosed as exc:
            if self._exit == (None, None) and exc.rcvd is not None and exc.rcvd.code != 1000:
                reason = f"the exec stream closed: {exc.rcvd.code} {exc.rcvd.reason}".strip()
        except Exception as exc:
            reason = f"the exec stream failed: {exc!r}"
        finally:
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            code, message = self._exit
            self._closed.set()
            self.listener.on_closed(code, message or reason)

    def kill(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            self._tasks.append(asyncio.ensure_future(self.ws.close()))


# ------------------------------------------------------------------------------------------------ fallback
#: Answers to the websocket upgrade that mean "no exec websocket for this client here", which SPDY can get past:
#: 403: RBAC grants create but not get on pods/exec (the websocket is a GET, the SPDY upgrade a POST), or the
#:      server accepts none of the offered subprotocols; 405, 426, 501: the server or a proxy in front of it does
#:      not do websocket upgrades; 101: it switched protocols but not to a websocket this client accepts.
#: Every other answer (401, 404, 400, 5xx, no answer at all) would come back the same over SPDY: it is reported
#: as it is, without a second connection.
FALLBACK_STATUSES = frozenset({101, 403, 405, 426, 501})
_announced: set[str] = set()


def falls_back(refusal: UpgradeRefused) -> bool:
    """Whether a refused exec websocket is retried over SPDY/3.1 (docs/agent-modes.md, "Exec over SPDY/3.1")."""
    return refusal.status in FALLBACK_STATUSES


class ExecChannel(Channel):
    """Pod exec as kubectl does it: the websocket first, SPDY/3.1 when the websocket upgrade is refused in a
    way SPDY can get past (:data:`FALLBACK_STATUSES`). Whichever answers is the channel; the session cannot
    tell them apart."""

    no_python_hint = WebSocketExecChannel.no_python_hint

    def __init__(self, configuration: Any, namespace: str, pod: str, container: str | None, command: list[str],
                 description: str, python: str = "python3", open_timeout: float = 30.0,
                 warm: Any = None) -> None:
        self.description = description
        self.python = python
        self.chosen: Channel = WebSocketExecChannel(configuration, namespace, pod, container, command,
                                                    description, python, open_timeout, warm)
        self._spdy_args = (configuration, namespace, pod, container, command, description, python, open_timeout)

    @property
    def protocol(self) -> str | None:
        """The websocket subprotocol, or ``SPDY/3.1+v4.channel.k8s.io`` after a fallback."""
        protocol = getattr(self.chosen, "protocol", None)
        return protocol if isinstance(self.chosen, WebSocketExecChannel) else f"SPDY/3.1+{protocol}"

    async def open(self, listener: ChannelListener) -> None:
        try:
            await self.chosen.open(listener)
            return
        except UpgradeRefused as refusal:
            if not falls_back(refusal):
                raise
            host = str(self._spdy_args[0].host)
            log.debug("exec websocket refused: %s", refusal)
            if host not in _announced:  # once per API server and process: every exec stream would repeat it
                _announced.add(host)
                what = "upgraded to no usable websocket" if refusal.status == 101 else f"HTTP {refusal.status}"
                log.info("the API server refused the exec websocket (%s); exec over SPDY/3.1, as kubectl does", what)
        from .spdy_exec import SpdyExecChannel

        self.chosen = SpdyExecChannel(*self._spdy_args)
        await self.chosen.open(listener)

    def write(self, data: bytes) -> None:
        self.chosen.write(data)

    def close_input(self) -> None:
        self.chosen.close_input()

    async def wait_closed(self, timeout: float) -> bool:
        return await self.chosen.wait_closed(timeout)

    def kill(self) -> None:
        self.chosen.kill()
