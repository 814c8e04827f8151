"""The limiter that keeps a long reconnect outage from flooding stderr."""

from __future__ import annotations

from mirror_py.session.repeats import RepeatLimiter


def test_new_messages_are_said_at_once_and_repeats_only_now_and_then():
    now = [0.0]
    limiter = RepeatLimiter(30.0, clock=lambda: now[0])
    said = []
    for second in range(0, 121, 2):  # a reconnect attempt every 2 s for about two minutes, always the same reason
        now[0] = float(second)
        if limiter.should_say("cannot reach the Kubernetes API server"):
            said.append((second, limiter.take_held()))
    assert said == [(0, 0), (30, 14), (60, 14), (90, 14), (120, 14)]

    now[0] = 121.0
    assert limiter.should_say("deployment staging/api has no Running and Ready pod")  # a new reason: at once
    assert limiter.take_held() == 0
    now[0] = 122.0
    assert not limiter.should_say("deployment staging/api has no Running and Ready pod")
    assert limiter.should_say("cannot reach the Kubernetes API server")  # back to the old reason: news again
    assert limiter.take_held() == 0  # the held repeat was of the other message
