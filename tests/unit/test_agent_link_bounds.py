"""A request the session gave up on (its time ran out, or the app that wanted it went away) does not leave the
agent's stream behind: when the late reply opens it, the session closes it."""

from __future__ import annotations

import asyncio

import pytest

from mirror_py.session.agent_link import AgentLink
from mirror_py_agent import protocol as p


class _Channel:
    description = "a test channel"

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


def _pair() -> tuple[AgentLink, _Channel, p.Connection]:
    channel = _Channel()
    link = AgentLink(channel)  # type: ignore[arg-type]
    agent = p.Connection("agent")
    link.conn.send_hello()
    agent.receive_data(link.conn.data_to_send())
    agent.send_hello()
    link.on_bytes(agent.data_to_send())
    channel.out.clear()
    return link, channel, agent


def _answer_late(link: AgentLink, channel: _Channel, agent: p.Connection, sid: int) -> list[p.Event]:
    """The agent's connect succeeds after the session stopped waiting; what the session says then."""
    request = next(e for e in agent.receive_data(bytes(channel.out)) if isinstance(e, p.Request))
    channel.out.clear()
    agent.open_stream(sid)
    agent.send_reply(request.id, {"peer": ["10.0.0.1", 80], "sock": ["10.0.0.9", 4000]})
    link.on_bytes(agent.data_to_send())
    return agent.receive_data(bytes(channel.out))


@pytest.mark.parametrize("how", ["timeout", "cancelled"])
def test_a_stream_opened_for_a_request_given_up_is_closed(how):
    async def main():
        link, channel, agent = _pair()
        sid = link.new_stream_id()
        if how == "timeout":
            with pytest.raises(asyncio.TimeoutError):
                await link.request("connect", {"sid": sid}, opens_stream=sid, timeout=0.05)
        else:
            task = asyncio.ensure_future(link.request("connect", {"sid": sid}, opens_stream=sid))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        events = _answer_late(link, channel, agent, sid)
        return sid, events, link.conn.is_open(sid)

    sid, events, still_open = asyncio.run(main())
    closed = [e for e in events if isinstance(e, p.StreamClosed)]
    assert [(e.stream, e.errno) for e in closed] == [(sid, "ECONNABORTED")]
    assert not still_open


def test_an_answered_request_leaves_its_stream_open():
    async def main():
        link, channel, agent = _pair()
        sid = link.new_stream_id()
        task = asyncio.ensure_future(link.request("connect", {"sid": sid}, opens_stream=sid, timeout=5))
        await asyncio.sleep(0)
        events = _answer_late(link, channel, agent, sid)
        return await task, events, link.conn.is_open(sid)

    reply, events, still_open = asyncio.run(main())
    assert reply["peer"] == ["10.0.0.1", 80]
    assert not [e for e in events if isinstance(e, p.StreamClosed)] and still_open
