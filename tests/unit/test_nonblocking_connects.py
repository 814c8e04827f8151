"""The session's half of a non-blocking connect (mirror_py/session/connects.py), with real kernel sockets and a
stand-in for the agent: the app's socket waits not writable, then the kernel itself reports the outcome; the
door shrugs off bad messages."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import socket
import tempfile

import pytest

from mirror_py.session.agent_link import RemoteError
from mirror_py.session.connects import Connects
from mirror_py.session.relays import TcpRelayListener


class _Mux:
    def __init__(self) -> None:
        self.streams: dict = {}


class _Link:
    """Answers a connect when the test says so: with a reply, or with the target's error."""

    def __init__(self) -> None:
        self.mux = _Mux()
        self.answer: asyncio.Future | None = None
        self.asked = asyncio.Event()
        self._sid = 1

    def new_stream_id(self) -> int:
        self._sid += 2
        return self._sid

    async def request(self, op: str, args: dict, opens_stream: int | None = None,
                      timeout: float | None = None) -> dict:
        assert op == "connect"
        self.answer = asyncio.get_running_loop().create_future()
        self.asked.set()
        return await self.answer


def _writable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([], [sock], [], timeout)[1])


async def _setup(tmp: str):
    link = _Link()
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen()
    listener = TcpRelayListener(link.mux)  # type: ignore[arg-type]
    listener.addresses = {socket.AF_INET: relay.getsockname()}
    connects = Connects(lambda: link, lambda: listener)  # type: ignore[arg-type,return-value]
    await connects.start(os.path.join(tmp, "connect.sock"))
    door = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    door.connect(connects.path)
    return link, relay, connects, door


def _app_socket(connects: Connects) -> tuple[socket.socket, list]:
    """What the shim does: bind, connect to the holding endpoint, return the request for the door."""
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.setblocking(False)
    hold = connects.info()["hold"][str(int(socket.AF_INET))]
    assert app.connect_ex(tuple(hold)) == errno.EINPROGRESS
    return app, list(app.getsockname())


@pytest.mark.parametrize("answer", ["ok", "EHOSTUNREACH", "ECONNREFUSED"])
def test_the_kernel_reports_the_outcome_only_when_the_target_answered(answer):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            link, relay, connects, door = await _setup(tmp)
            app, local = _app_socket(connects)
            request = {"op": "connect", "host": "10.0.0.1", "port": 80, "local": local}
            socket.send_fds(door, [json.dumps(request).encode()], [app.fileno()])
            await asyncio.wait_for(link.asked.wait(), 5)
            await asyncio.sleep(0.3)
            waiting = _writable(app, 0), app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert connects.outcome(tuple(local)) == {"pending": True}
            if answer == "ok":
                link.answer.set_result({"peer": ["10.0.0.1", 80], "sock": ["10.0.0.9", 40000]})
            else:
                link.answer.set_exception(RemoteError(answer, os.strerror(getattr(errno, answer))))
            await asyncio.sleep(0.05)
            done = await asyncio.to_thread(_writable, app, 5)
            err = app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcome = connects.outcome(tuple(local))
            peer = None
            if answer == "ok":
                relay.setblocking(False)
                accepted, peer = relay.accept()
                accepted.close()
            app.close()
            door.close()
            connects.close()
            relay.close()
            return waiting, done, err, outcome, peer, local

    waiting, done, err, outcome, peer, local = asyncio.run(main())
    assert waiting == (False, 0)  # in flight: not writable, no error
    assert done
    if answer == "ok":
        assert err == 0 and list(peer) == local  # the relay knows the app's socket by its address
        assert outcome == {"peer": ["10.0.0.1", 80], "sock": ["10.0.0.9", 40000]}
    else:
        assert err == errno.ECONNREFUSED  # the kernel's word; the shim's getsockopt gives the target's
        assert outcome["errno"] == answer


def test_a_closed_app_socket_is_forgotten_and_bad_messages_are_ignored():
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            link, relay, connects, door = await _setup(tmp)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for body, fds in ((b"not json", []), (b"[1]", []), (json.dumps({"op": "connect"}).encode(), []),
                              (json.dumps({"op": "connect", "local": ["127.0.0.1", 1], "host": "h",
                                           "port": 1}).encode(), [udp.fileno()]),
                              (json.dumps({"op": "nonsense", "local": ["127.0.0.1", 1]}).encode(), [])):
                socket.send_fds(door, [body], fds)
            await asyncio.sleep(0.1)
            assert not connects.pending and link.answer is None
            app, local = _app_socket(connects)
            socket.send_fds(door, [json.dumps({"op": "connect", "host": "10.0.0.1", "port": 80,
                                               "local": local}).encode()], [app.fileno()])
            await asyncio.wait_for(link.asked.wait(), 5)
            app.close()
            door.send(json.dumps({"op": "forget", "local": local}).encode())
            await asyncio.sleep(0.1)
            left = dict(connects.pending), dict(connects.outcomes)
            door.close()
            connects.close()
            relay.close()
            udp.close()
            return left

    assert asyncio.run(main()) == ({}, {})
