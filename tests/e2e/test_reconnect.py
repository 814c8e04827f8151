"""After a lost agent, the session's incoming subscriptions are restored on the new agent."""

from __future__ import annotations

import os
import signal
import time

from .test_incoming import chains, get, serving, wait_for


def _agent_of(session_pid: int) -> int:
    with open(f"/proc/{session_pid}/task/{session_pid}/children") as f:
        for child in f.read().split():
            with open(f"/proc/{child}/cmdline", "rb") as c:
                if b"-I" in c.read().split(b"\0"):
                    return int(child)
    raise AssertionError("no agent process under the session")


def test_steal_is_restored_after_the_agent_is_killed(pod, tmp_path):
    with serving(pod, tmp_path, mode="steal") as app:
        assert get(pod.ip, "/before")["server"] == "local"
        old = _agent_of(app.proc.pid)
        os.kill(old, signal.SIGKILL)
        # While there is no agent the pod serves its own traffic (the dead-man helper removed the rules) ...
        assert wait_for(lambda: chains(pod) == [], timeout=5)
        # ... and once the session has a new agent, the subscription is back.
        started = time.monotonic()

        def stolen_again() -> bool:
            try:
                return get(pod.ip, "/after")["server"] == "local"
            except (OSError, AssertionError):
                return False

        assert wait_for(stolen_again, timeout=10, step=0.2)
        assert time.monotonic() - started < 10
        assert _agent_of(app.proc.pid) != old
    assert "reconnected to pid/" in app.stderr
    assert chains(pod) == []
    assert get(pod.ip, "/end")["server"] == "podip"
