"""The reconnect supervisor survives any failure of an attempt: it says so once and keeps trying."""

from __future__ import annotations

import asyncio
import logging

from mirror_py import config as config_mod
from mirror_py.session import session as session_mod


class _Link:
    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.failure = "its channel closed"
        self.mux = object()
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


class _Listener:
    mux = None


def test_an_unexpected_exception_in_a_reconnect_is_reported_and_retried(monkeypatch, caplog):
    monkeypatch.setattr(session_mod, "RECONNECT_FIRST_DELAY", 0.01)
    monkeypatch.setattr(session_mod, "RECONNECT_MAX_DELAY", 0.01)
    session = session_mod.Session(config_mod.Config())
    lost, fresh = _Link(), _Link()
    session.link, session.listener = lost, _Listener()
    attempts: list[int] = []

    async def connect_agent() -> None:
        attempts.append(1)
        if len(attempts) <= 3:
            raise KeyError("items")  # not a MirrorError, RemoteError or OSError
        session.link = fresh

    async def nothing(link: object) -> None:
        return None

    monkeypatch.setattr(session, "_connect_agent", connect_agent)
    monkeypatch.setattr(session, "_restore_udp", nothing)
    monkeypatch.setattr(session.incoming, "restore", nothing)

    async def main() -> None:
        supervisor = asyncio.ensure_future(session._supervise())
        lost.closed.set()
        for _ in range(500):
            if session.link is fresh:
                break
            await asyncio.sleep(0.01)
        session._closing = True
        fresh.closed.set()
        await asyncio.wait_for(supervisor, 5)

    with caplog.at_level(logging.INFO, logger="mirror_py.progress"):
        asyncio.run(main())
    assert session.link is fresh and len(attempts) == 4
    said = [r.getMessage() for r in caplog.records if r.name == "mirror_py.progress"]
    failed = [m for m in said if m.startswith("reconnect failed")]
    assert len(failed) == 1, said  # the same failure three times is said once
    assert "KeyError: 'items' (unexpected" in failed[0]
    assert said[-1].startswith("reconnected to")


def test_a_failed_restore_closes_the_new_agent_before_the_next_attempt(monkeypatch):
    session = session_mod.Session(config_mod.Config())
    first = _Link()
    session.listener = _Listener()

    async def connect_agent() -> None:
        session.link = first

    async def broken(link: object) -> None:
        raise RuntimeError("restore failed")

    monkeypatch.setattr(session, "_connect_agent", connect_agent)
    monkeypatch.setattr(session, "_restore_udp", broken)

    async def main() -> None:
        try:
            await session._reconnect_once()
        except RuntimeError:
            return
        raise AssertionError("the restore failure was swallowed")

    asyncio.run(main())
    assert first.closes == 1


def test_a_start_that_hangs_ends_at_its_bound_after_its_own_cleanup(monkeypatch):
    """Each step of a start has its own bound; the whole start has one too, so a step nobody bounded (an agent
    that says hello and then never answers) cannot hang ``mirror-py exec``, connect() or the shim's auto-start."""
    cfg = config_mod.Config()
    cfg.agent.startup_timeout = 0.1
    session = session_mod.Session(cfg)
    cleaned: list[str] = []

    async def hanging_start() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.append("cleanup ran")
            raise

    monkeypatch.setattr(session, "start", hanging_start)

    async def main() -> str:
        try:
            await asyncio.wait_for(session_mod.start_interruptibly(session), 10)
        except session_mod.MirrorError as exc:
            return str(exc)
        return "started"

    message = asyncio.run(main())
    assert message.startswith("the session did not start within 0.3 s (3 x agent.startup_timeout); nothing was left")
    assert cleaned == ["cleanup ran"]
