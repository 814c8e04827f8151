"""The ``mirror-py port-forward`` command (registered on the main group by mirror_py/cli.py)."""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from ..errors import MirrorError
from . import discover
from .client import CallFailed, SessionGone
from .forwarder import Forwarder, ListenError
from .specs import Forward, SpecError, parse


def _parse_all(specs: tuple[str, ...], reverses: tuple[str, ...], address: str) -> tuple[list, list]:
    forwards = [parse(s, address) for s in specs]
    # A port in the target listens on all its addresses unless the spec names one: a pod-side client reaches
    # the pod by its IP or its service, rarely by loopback.
    back = [parse(s, "0.0.0.0") for s in reverses]
    if not forwards and not back:
        raise SpecError("nothing to forward: give PORT:HOST:HOSTPORT (like 15432:postgres:5432) or "
                        "--reverse PORT:HOST:HOSTPORT")
    return forwards, back


def register(main: click.Group, target_options, setup_logging, load, fail, stopped) -> None:
    """Adds the command to ``main``; the shared flag set and helpers come from mirror_py/cli.py."""

    @main.command("port-forward")
    @target_options
    @click.option("--reverse", "reverses", multiple=True, metavar="[BIND:]PORT:HOST:HOSTPORT",
                  help="listen on PORT in the target and forward each connection to HOST:HOSTPORT on this machine")
    @click.option("--address", default="127.0.0.1", show_default=True,
                  help="the address on this machine that forwards listen on, unless a spec names one")
    @click.argument("specs", nargs=-1, metavar="[BIND:]PORT:HOST:HOSTPORT...")
    @click.pass_context
    def port_forward(ctx: click.Context, config_file: str | None, verbose: int, reverses: tuple[str, ...],
                     address: str, specs: tuple[str, ...], **flags: object) -> None:
        """Forward local ports to what the target reaches (names resolved in the target), and with --reverse
        ports of the target to this machine. Shares the agent of a running `session start` for the same
        target, else starts its own until Ctrl-C.

        Example: mirror-py port-forward --target deploy/api 15432:postgres:5432 16379:redis:6379
        """
        setup_logging(verbose)
        try:
            forwards, back = _parse_all(specs, reverses, address)
        except SpecError as exc:
            fail(str(exc))
        cfg = load(ctx, config_file, flags)
        from ..session.session import StartInterrupted

        try:
            asyncio.run(_run(cfg, forwards, back))
        except MirrorError as exc:
            fail(str(exc))
        except StartInterrupted as exc:
            stopped(exc)
        except KeyboardInterrupt:
            sys.exit(130)


async def _run(cfg, forwards: list[Forward], reverses: list[Forward]) -> None:
    import logging

    from ..session.session import Session, start_interruptibly

    progress = logging.getLogger("mirror_py.progress")
    t = cfg.target
    key = discover.target_key(t.path, t.namespace, t.context, t.kubeconfig) if t.path else None
    found = await discover.find(key)
    session = None
    if found is not None:
        path, info = found
        progress.warning("using the running session for %s (pid %s)", info.get("target"), info.get("pid"))
    else:
        session = Session(cfg)
        session.mode = "port-forward"
        await start_interruptibly(session)
        assert session.rpc is not None
        path = session.rpc.path
    forwarder = Forwarder(path, forwards, reverses)
    try:
        try:
            lines = await forwarder.start()
        except ListenError as exc:
            raise MirrorError(str(exc)) from None
        except CallFailed as exc:
            raise MirrorError(f"cannot listen in the target: {exc.message}") from None
        except SessionGone as exc:
            raise MirrorError(str(exc)) from None
        for line in lines:
            click.echo(line)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(forwarder.gone.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if forwarder.gone.is_set():
            raise MirrorError(f"{forwarder.gone_reason}; port-forward stops")
    finally:
        await forwarder.close()
        if session is not None:
            await session.close()

