"""Ways a session outlives or serves more than one command.

- ``stdin``: behind ``mirror_py.connect()``; ends when the caller closes our stdin.
- ``daemon``: ``mirror-py session start``; runs until ``mirror-py session stop`` (or SIGTERM).
- ``lease``: started by the shim for ``PYTHONPATH=… MIRROR_PY_TARGET=… python app.py``; every interposed
  process of the tree holds a connection to the lease socket, and the session ends when the last one closes.

In every mode the session first says how long its start may take, then prints one JSON line: the environment
changes for the app, the session's description and notes for the user (mirror_py/shim/ready_line.py).
The processes interposed later learn the rest from the environment they inherit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from .. import config as config_mod
from .session import Session, start_bound, start_interruptibly

LEASE_GRACE = 30.0  # seconds a lease-mode session waits for its first holder


class _Leases:
    def __init__(self) -> None:
        self.count = 0
        self.ever = False
        self.changed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        self.ever = True
        try:
            await reader.read()  # a holder never sends anything: EOF means it exited
        finally:
            self.count -= 1
            writer.close()
            self.changed.set()


async def serve(cfg: config_mod.Config, mode: str) -> None:
    session = Session(cfg)
    session.mode = mode
    stop = asyncio.Event()
    leases = _Leases()
    # Whoever waits for our ready line learns at once how long the start may take (mirror_py/shim/ready_line.py).
    def starting(within: float) -> None:
        sys.stdout.write(json.dumps({"starting": {"within": within}}) + "\n")
        sys.stdout.flush()

    starting(start_bound(cfg))
    try:
        await start_interruptibly(session, on_extend=starting)  # a slow image pull: a new bound for the waiter
        assert session.rpc is not None and session.dir is not None
        extra: dict[str, str] = {}
        if mode == "lease":
            path = os.path.join(session.dir, "leases.sock")
            await asyncio.start_unix_server(leases.serve, path)
            os.chmod(path, 0o600)
            extra["MIRROR_PY_LEASE"] = path
        env = session.app_environment(os.environ)
        env.update(extra)
        changed = {k: v for k, v in env.items() if os.environ.get(k) != v}

        async def env_handler(req: dict) -> dict:
            return {"env": changed}

        async def shutdown_handler(req: dict) -> dict:
            asyncio.get_running_loop().call_soon(stop.set)
            return {}

        session.rpc.handlers["env"] = env_handler
        session.rpc.handlers["shutdown"] = shutdown_handler
        info = {"target": session.target_description, "session": session.rpc.path, "pid": os.getpid()}
        # The starter shows the notes: this process's stderr is not the user's terminal.
        notes = [session.kept_note] if session.kept_note else []
        sys.stdout.write(json.dumps({"env": changed, "info": info, "notes": notes}) + "\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        if mode == "stdin":
            await _stdin_closed_or(stop)
            return
        _detach(os.path.join(session.dir, "session.log"))
        if mode == "daemon":
            await stop.wait()
            return
        deadline = loop.time() + LEASE_GRACE
        while not stop.is_set():
            if leases.ever and leases.count == 0:
                return
            if not leases.ever and loop.time() > deadline:
                return
            leases.changed.clear()
            try:
                await asyncio.wait_for(leases.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        await session.close()


async def _stdin_closed_or(stop: asyncio.Event) -> None:
    """Until the caller closes our stdin (connect()'s session ended) or a signal says stop. The event loop
    watches the descriptor: a thread blocked in read() would keep the process alive after a SIGTERM."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            stop.set()

    try:
        loop.add_reader(fd, readable)
    except PermissionError:  # a regular file (or /dev/null) cannot be watched, and its read never waits
        sys.stdin.buffer.read()
        return
    os.set_blocking(fd, False)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(fd)


def _detach(log_path: str) -> None:
    """The starter has read our one line: stop writing to its pipes, keep messages in the session's log."""
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
