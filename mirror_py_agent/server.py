"""The agent's main loop: one channel on stdin/stdout, every request served concurrently.

The agent exits when its channel closes (stdin EOF), closing every connection it opened.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sys
from typing import Any

from . import dns, env, files, incoming, listeners, net, placement
from . import protocol as p
from .budget import Budget, describe, valid_limit
from .relay import Mux, errno_name, error_text

CAPABILITIES = ["tcp", "udp", "dns", "dns_watch", "env", "fs", "incoming", "listens"]
_F_SETPIPE_SZ = 1031
# A session pings at least every ``keepalive`` seconds (it says how often in its hello). Silence for this many
# intervals means it is gone without closing the channel (a laptop asleep, a network dropped without a reset):
# the agent then exits, so stolen ports go back to the target instead of waiting for a 4-hour idle timeout.
SILENCE_INTERVALS = 3
MIN_SILENCE = 5.0


class _ChannelWriter(asyncio.Protocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def pause_writing(self) -> None:
        self.agent.mux.pause_channel()

    def resume_writing(self) -> None:
        self.agent.mux.resume_channel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.finish()


class _ChannelReader(asyncio.Protocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def data_received(self, data: bytes) -> None:
        self.agent.on_bytes(data)

    def eof_received(self) -> bool:
        self.agent.finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.finish()


class Agent:
    def __init__(self, write: Any, queued: Any = None) -> None:
        """``queued`` measures the bytes waiting in the channel's writer: they count against the budget."""
        self.conn = p.Connection("agent", capabilities=CAPABILITIES, info=_info())
        self.budget = Budget(notify=self._notify)
        self.budget.add_gauge(self.conn.queued_bytes)  # frames not yet handed to the writer
        if queued is not None:
            self.budget.add_gauge(queued)
        self.mux = Mux(self.conn, write, self.budget)
        self.done = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task] = set()
        self.last_heard = asyncio.get_running_loop().time()
        self.conn.send_hello()
        self.mux.flush()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _notify(self, kind: str, message: str) -> None:
        """Tells the session, once per kind of loss, why data is missing: an error without a request id,
        which every session version shows as a warning."""
        self.conn.send_error(None, "ENOBUFS", message)
        self.mux.flush()

    def on_hello(self, hello: p.Hello) -> None:
        """Takes the session's settings; a session that sends none (an older one) leaves the defaults."""
        asked = hello.info.get("memory_budget")
        if asked is None:
            return
        limit = valid_limit(asked)
        if limit is None:
            print(f"mirror-py agent: ignoring memory_budget {asked!r}; keeping {describe(self.budget.limit)}",
                  file=sys.stderr)
            return
        self.budget.limit = limit

    def on_bytes(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        for ev in self.conn.receive_data(data):
            if self.mux.dispatch(ev):
                continue
            if isinstance(ev, p.Hello):
                self.on_hello(ev)
            elif isinstance(ev, p.Request):
                task = asyncio.ensure_future(self.serve(ev))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(ev, p.ConnectionFailed):
                self.conn.send_error(None, "EPROTO", f"closing the channel: {ev.message}")
                self.mux.flush()
                self.finish()
                return
        self.mux.flush()

    async def serve(self, req: p.Request) -> None:
        try:
            if req.op == "connect":
                result, relay = await net.connect_tcp(req.args, self.mux)
                self.conn.send_reply(req.id, result)
                self.mux.flush()
                relay.start()
                return
            handler = _HANDLERS.get(req.op)
            if handler is None:
                self.conn.send_error(req.id, "ENOTSUP", f"unknown operation {req.op!r}")
            else:
                self.conn.send_reply(req.id, await handler(req.args, self.mux))
        except (KeyError, TypeError, ValueError) as exc:
            self.conn.send_error(req.id, "EINVAL", f"bad arguments for {req.op}: {exc}")
        except (OSError, asyncio.TimeoutError) as exc:  # a TimeoutError is no OSError before Python 3.11
            self.conn.send_error(req.id, errno_name(exc), error_text(exc))
        except Exception as exc:  # an agent bug must fail one request, never the channel
            self.conn.send_error(req.id, "EIO", f"agent error in {req.op}: {exc!r}")
        self.mux.flush()


async def _resolve(args: dict, mux: Mux) -> Any:
    return await dns.resolve(args)


async def _dns_watch(args: dict, mux: Mux) -> dict:
    return await dns.watch(args)


async def _environ(args: dict, mux: Mux) -> dict:
    return env.read_environ(args)


async def _files(args: dict, mux: Mux) -> Any:
    return await files.serve(args)


async def _place(args: dict, mux: Mux) -> dict:
    # Runs on the event loop thread, not in an executor: setns() applies to the calling thread only, and the
    # executor's threads must be started after it (they inherit the namespaces of the thread that starts them).
    return placement.place(args)


async def _listens(args: dict, mux: Mux) -> dict:
    return listeners.listens(args)


async def _ping(args: dict, mux: Mux) -> dict:
    return {}


_HANDLERS = {
    "dns": _resolve,
    "dns_watch": _dns_watch,
    "environ": _environ,
    "fs": _files,
    "udp_open": net.open_udp,
    "noop": _ping,
    "listens": _listens,
    "place": _place,
    "incoming_subscribe": incoming.subscribe,
    "incoming_unsubscribe": incoming.unsubscribe,
    "incoming_stats": incoming.stats,
    "incoming_clean": incoming.clean,
    "incoming_check": incoming.check,
}


def _info() -> dict:
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
    }


def silence_limit(hello: p.Hello | None) -> float | None:
    """Seconds of silence after which the session counts as gone; None for a session that does not ping."""
    keepalive = hello.info.get("keepalive") if hello is not None else None
    if isinstance(keepalive, bool) or not isinstance(keepalive, (int, float)) or not keepalive > 0:
        return None
    return max(SILENCE_INTERVALS * float(keepalive), MIN_SILENCE)


async def _watch_silence(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    while not agent.done.done():
        limit = silence_limit(agent.conn.peer_hello)
        if limit is not None and loop.time() - agent.last_heard > limit:
            print(f"mirror-py agent: nothing from the session for {limit:g} s; exiting", file=sys.stderr)
            agent.finish()
            return
        await asyncio.sleep(1.0 if limit is None else min(1.0, limit / 5))


async def _serve(in_fd: int, out_fd: int) -> None:
    loop = asyncio.get_running_loop()
    for fd in (in_fd, out_fd):
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
    out_pipe = os.fdopen(out_fd, "wb", buffering=0)
    in_pipe = os.fdopen(in_fd, "rb", buffering=0)
    writer = _ChannelWriter(None)  # type: ignore[arg-type]
    writer_transport, _ = await loop.connect_write_pipe(lambda: writer, out_pipe)
    agent = Agent(writer_transport.write, writer_transport.get_write_buffer_size)
    writer.agent = agent
    await loop.connect_read_pipe(lambda: _ChannelReader(agent), in_pipe)
    watchdog = asyncio.ensure_future(_watch_silence(agent))
    await agent.done
    watchdog.cancel()
    await incoming.close_all()  # before the streams end: stolen ports go back to the target first
    agent.mux.close_all()
    files.close_all()
    for task in list(agent.tasks):
        task.cancel()
    try:
        writer_transport.close()
    except Exception:
        pass


def announce(token: str) -> None:
    """Tells the idle program of this agent's container (mirror_py/kube/placement.py) that its agent started, on
    the abstract socket it listens on: it then waits for this process to end, however short its life. Nothing
    listening (an exec agent, which has no idle program) is fine."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(b"\0mirror-py-idle-" + token.encode())
    except OSError:
        pass
    finally:
        sock.close()


def main() -> None:
    """Serves the channel on stdin/stdout; anything else printed goes to stderr, never into the channel."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("mirror-py-"):
        announce(sys.argv[1])  # the token of a placed agent's container (ephemeral, job, targetless)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        asyncio.run(_serve(0, out_fd))
    except KeyboardInterrupt:
        pass
