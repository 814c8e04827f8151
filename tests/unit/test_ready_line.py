"""Waiting for a session process's ready line ends: a session that hangs is stopped and named in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirror_py.shim import ready_line


def _session(body: str) -> subprocess.Popen:
    program = "import json, signal, sys, time\nsay = lambda m: (print(json.dumps(m)), sys.stdout.flush())\n" + body
    return subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE)


@pytest.fixture(autouse=True)
def short_bounds(monkeypatch):
    monkeypatch.setattr(ready_line, "FIRST_LINE_TIMEOUT", 1.0)
    monkeypatch.setattr(ready_line, "MARGIN", 0.5)


def test_ready_after_starting():
    proc = _session('say({"starting": {"within": 5}}); time.sleep(0.2); say({"env": {"A": "1"}, "info": {}})')
    assert ready_line.read_ready(proc) == {"env": {"A": "1"}, "info": {}}
    proc.wait(5)


def test_exit_without_a_line_is_none():
    proc = _session('say({"starting": {"within": 5}}); sys.exit(1)')
    assert ready_line.read_ready(proc) is None


def test_silent_session_is_stopped_after_the_first_line_timeout():
    proc = _session("time.sleep(60)")
    with pytest.raises(ready_line.SessionNotReady, match="did not manage to say it was starting; it was stopped"):
        ready_line.read_ready(proc)
    assert proc.poll() == -15


def test_session_past_its_own_bound_is_stopped():
    proc = _session('say({"starting": {"within": 0.3}}); time.sleep(60)')
    with pytest.raises(ready_line.SessionNotReady, match=r"to start within its own bound of 0\.3 s"):
        ready_line.read_ready(proc)
    assert proc.poll() == -15


def test_a_session_that_ignores_sigterm_is_killed():
    proc = _session('signal.signal(signal.SIGTERM, signal.SIG_IGN); say({"starting": {"within": 0.1}}); '
                    "time.sleep(60)")
    with pytest.raises(ready_line.SessionNotReady):
        ready_line.read_ready(proc)
    assert proc.poll() == -9
