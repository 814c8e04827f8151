"""Liveness: protocol pings keep an idle channel in use and find an agent that stopped answering."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from mirror_py.session.agent_link import AgentLink
from mirror_py.transport.process import ProcessChannel
from mirror_py_agent import bootstrap


def _link(interval: float, timeout: float) -> AgentLink:
    link = AgentLink(ProcessChannel(bootstrap.command(sys.executable), "a local agent", sys.executable), 10)
    link.ping_interval = interval
    link.PING_TIMEOUT = timeout
    return link


def test_idle_healthy_channel_is_kept_and_pinged():
    async def main() -> tuple[str | None, float, float]:
        link = _link(0.2, 1.0)
        await link.start()
        first = link._last_received
        await asyncio.sleep(2.5)
        result = (link.failure, first, link._last_received)
        await link.close()
        return result

    failure, first, last = asyncio.run(main())
    assert failure is None
    assert last > first + 2.0  # pongs kept arriving while nothing else was said


def test_an_agent_that_stops_answering_ends_the_channel():
    async def main() -> tuple[str | None, bool, float]:
        link = _link(0.2, 1.0)
        await link.start()
        pid = link.hello.info["pid"]
        os.kill(pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(link.closed.wait(), 10)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        elapsed = loop.time() - started
        result = (link.failure, link.closed.is_set(), elapsed)
        await link.close()
        return result

    failure, closed, elapsed = asyncio.run(main())
    assert closed and failure is not None and "stopped answering" in failure
    assert elapsed < 5


def test_the_agents_silence_limit_follows_the_sessions_keepalive():
    from mirror_py_agent.protocol import Hello
    from mirror_py_agent.server import silence_limit

    def hello(info: dict) -> Hello:
        return Hello(1, [], 1 << 20, info)

    assert silence_limit(hello({"keepalive": 20})) == 60.0  # three missed pings
    assert silence_limit(hello({"keepalive": 0.5})) == 5.0  # never shorter than a brief stall
    for info in ({}, {"keepalive": 0}, {"keepalive": -1}, {"keepalive": True}, {"keepalive": "20"}):
        assert silence_limit(hello(info)) is None  # a session that does not say it pings is never timed out
    assert silence_limit(None) is None
