"""The idle program of agent containers ends once its agent has come and gone, however short the agent's life.

It looks for processes carrying its token every ``poll`` seconds; a session whose agent started and ended
between two looks (a quick script) used to leave it waiting for an agent until ``give_up`` (5 minutes): an
ephemeral container still running long after the session. The agent now says hello on the idle program's
abstract socket as it starts.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

from mirror_py.kube import placement

ROOT = Path(__file__).resolve().parents[2]


def _listening(name: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/unix") as f:
            if any(line.rstrip().endswith("@" + name) for line in f):
                return True
        time.sleep(0.02)
    return False


def test_an_agent_that_came_and_went_between_two_looks_ends_the_idle_program():
    token = "mirror-py-" + secrets.token_hex(6)
    idle = subprocess.Popen([sys.executable, "-I", "-c", placement.IDLE, token, "3", "120"])
    try:
        assert _listening("mirror-py-idle-" + token), "the idle program never listened for its agent"
        # A whole agent life (its command line carries the token) inside one poll interval.
        subprocess.run([sys.executable, "-c", "import sys; from mirror_py_agent.server import announce; "
                        "announce(sys.argv[1])", token], check=True, cwd=str(ROOT), timeout=30)
        assert idle.wait(timeout=30) == 0
    finally:
        if idle.poll() is None:
            idle.kill()
            idle.wait()


def test_an_exec_agent_with_no_idle_program_announces_to_nobody():
    from mirror_py_agent.server import announce

    announce("mirror-py-" + secrets.token_hex(6))  # nothing listens: no error, no wait
