"""After a lost agent, the session's incoming subscriptions are restored on the new agent."""

from __future__ import annotations

import os
import signal
import time

from .conftest import agent_of
from .test_incoming import chains, get, serving, wait_for


def _stolen(pod) -> bool:
    """Whether a request to the pod reaches the local app (the steal is in place)."""
    try:
        return get(pod.ip, "/after")["server"] == "local"
    except (OSError, AssertionError):
        return False


def test_steal_is_restored_after_the_agent_is_killed(pod, tmp_path):
    with serving(pod, tmp_path, mode="steal") as app:
        assert get(pod.ip, "/before")["server"] == "local"
        old = agent_of(app.proc.pid)
        os.kill(old, signal.SIGKILL)
        # While there is no agent the pod serves its own traffic (the dead-man helper removed the rules) ...
        assert wait_for(lambda: chains(pod) == [], timeout=5)
        # ... and once the session has a new agent, the subscription is back.
        started = time.monotonic()
        assert wait_for(lambda: _stolen(pod), timeout=10, step=0.2)
        assert time.monotonic() - started < 10
        assert agent_of(app.proc.pid) != old
        counters = app.info()["counters"]  # what `session status` shows: one reconnect, a young agent
        assert counters["reconnects"] == 1 and counters["agent_age"] < counters["age"]
        assert counters["incoming"]["stolen"] >= 2
    assert "reconnected to pid/" in app.stderr
    assert chains(pod) == []
    assert get(pod.ip, "/end")["server"] == "podip"


def test_an_agent_whose_session_goes_silent_gives_the_ports_back(pod, tmp_path):
    """The session freezes without closing its channel (a laptop put to sleep, a network gone without a reset).
    The agent hears nothing for 3 keep-alive intervals (5 s at least) and exits, so the target serves its own
    traffic again instead of sending it to a session that is not there. When the session wakes, it reconnects
    and steals again."""
    with serving(pod, tmp_path, mode="steal", config="[agent]\nkeepalive_interval = 1\n") as app:
        assert get(pod.ip, "/before")["server"] == "local"
        agent = agent_of(app.proc.pid)
        os.kill(app.proc.pid, signal.SIGSTOP)
        try:
            frozen = time.monotonic()

            def agent_gone() -> bool:
                try:
                    with open(f"/proc/{agent}/stat") as f:
                        return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited; its parent is frozen
                except FileNotFoundError:
                    return True

            assert wait_for(agent_gone, timeout=15, step=0.2), "the agent kept running for a silent session"
            assert 4 < time.monotonic() - frozen < 12
            assert chains(pod) == [] and get(pod.ip, "/meanwhile")["server"] == "podip"
        finally:
            os.kill(app.proc.pid, signal.SIGCONT)
        assert wait_for(lambda: _stolen(pod), timeout=15, step=0.2)
    assert "reconnected to pid/" in app.stderr
