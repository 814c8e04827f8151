"""The doctor's version probe of a target's python: an answer in every case, never a traceback or a hang."""

from __future__ import annotations

import asyncio

from mirror_py.kube import doctor


class _SilentChannel:
    """An exec whose process never ends and never prints (a python wrapper that waits for input)."""

    def __init__(self) -> None:
        self.killed = False
        self.input_closed = False

    async def open(self, listener) -> None:
        self.listener = listener

    def close_input(self) -> None:
        self.input_closed = True

    def kill(self) -> None:
        self.killed = True


class _AnsweringChannel(_SilentChannel):
    async def open(self, listener) -> None:
        listener.on_bytes(b"3.11.2\n")
        listener.on_closed(0, None)


def test_a_probe_that_never_answers_is_a_failed_check(monkeypatch):
    monkeypatch.setattr(doctor, "PROBE_TIMEOUT", 0.05)
    channel = _SilentChannel()
    code, out, reason = asyncio.run(doctor._run(channel))
    assert channel.killed and code is None and reason == "no answer within 0.05 s"
    check = doctor.python_check("target deploy/api", "python3", code, out, reason)
    assert not check.ok and "no answer within 0.05 s" in check.fix


def test_the_probe_leaves_stdin_open_so_a_v4_stream_is_not_ended_early():
    channel = _AnsweringChannel()
    assert asyncio.run(doctor._run(channel)) == (0, "3.11.2\n", None)
    assert not channel.input_closed
