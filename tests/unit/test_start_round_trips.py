"""A session's start spends as few sequential round trips to the agent as it can: the placement's first
request (the target's environment, or entering its namespaces) is on the wire right behind the hello, before
the agent has answered anything, so its answer comes back with the agent's hello."""

from __future__ import annotations

import asyncio

import pytest

from mirror_py import config as config_mod
from mirror_py.kube.placement import Placement
from mirror_py.session import session as session_mod
from mirror_py.session.agent_link import RemoteError
from mirror_py_agent import bootstrap
from mirror_py_agent import protocol as p


class _AgentChannel:
    """A channel whose far end is a protocol Connection the test drives by hand."""

    description = "a test agent"
    python = "python3"
    no_python_hint = ""

    def __init__(self) -> None:
        self.out = bytearray()
        self.listener = None
        self.input_closed = False

    async def open(self, listener) -> None:
        self.listener = listener

    def write(self, data: bytes) -> None:
        self.out += data

    def close_input(self) -> None:
        self.input_closed = True
        self.listener.on_closed(0, None)

    async def wait_closed(self, timeout: float) -> bool:
        return True

    def kill(self) -> None:
        pass


async def _environment(link) -> dict:
    return await link.request("environ", {"own": True})


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _events_before_any_answer(channel: _AgentChannel, agent: p.Connection) -> list[p.Event]:
    bundle = bootstrap.bundle()
    assert bytes(channel.out[: len(bundle)]) == bundle
    events = agent.receive_data(bytes(channel.out[len(bundle):]))
    del channel.out[:]
    return events


def test_the_placements_first_request_goes_out_with_the_hello():
    async def main():
        session = session_mod.Session(config_mod.Config())
        channel = _AgentChannel()
        start = asyncio.ensure_future(session._start_placed(Placement(channel, "exec", _environment)))
        await _settle()
        agent = p.Connection("agent")
        seen = _events_before_any_answer(channel, agent)  # the agent has said nothing yet
        agent.send_hello()
        requests = [e for e in seen if isinstance(e, p.Request)]
        for request in requests:
            agent.send_reply(request.id, {"HOME": "/root", "MODE": "pod"})
        channel.listener.on_bytes(agent.data_to_send())
        if not requests:  # the request comes only now, after the hello's answer: answer it so start() ends
            await _settle()
            for ev in agent.receive_data(bytes(channel.out)):
                if isinstance(ev, p.Request):
                    agent.send_reply(ev.id, {"HOME": "/root", "MODE": "pod"})
            channel.listener.on_bytes(agent.data_to_send())
        link, _placed, env = await asyncio.wait_for(start, 5)
        await link.close()
        return seen, env

    seen, env = asyncio.run(main())
    assert [type(e).__name__ for e in seen] == ["Hello", "Request"]
    assert seen[1].op == "environ"
    assert env == {"HOME": "/root", "MODE": "pod"}


def test_a_failed_start_leaves_no_unretrieved_pipelined_request(caplog):
    """The agent dies before its hello: the start fails with the agent's own reason, and the request that went
    out with the hello ends quietly with it."""
    async def main():
        session = session_mod.Session(config_mod.Config())
        channel = _AgentChannel()
        start = asyncio.ensure_future(session._start_placed(Placement(channel, "exec", _environment)))
        await _settle()
        channel.listener.on_stderr(b"boom: the agent could not start\n")
        channel.listener.on_closed(1, None)
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(start, 5)
        await _settle()
        return info.value

    error = asyncio.run(main())
    assert not isinstance(error, RemoteError)
    assert "exited during start-up" in str(error) and "boom" in str(error)
    assert "never retrieved" not in caplog.text
