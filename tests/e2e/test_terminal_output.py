"""What mirror-py writes on the user's terminal: the start-up steps on one updating line that ends before the
app writes, plain lines where the output is not a terminal (or TERM=dumb), and color only where NO_COLOR
allows it."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import MIRROR_PY, ROOT
from .ptys import run_on_pty

APP = "print('app says hi')"
CLEAR = b"\r\x1b[K"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_") and k != "NO_COLOR"}
    env.update({"PYTHONPATH": str(ROOT), "TERM": "xterm-256color", **extra})
    return env


def test_start_up_is_one_updating_line_that_ends_before_the_app(pod):
    code, out = run_on_pty([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c", APP],
                           _env())
    assert code == 0, out
    ready = out.index(b"mirror-py: agent ready in ")
    steps = out[:ready]
    # Every step overwrote the one before on the same line: no newline until the agent is ready.
    assert steps.startswith(CLEAR + b"mirror-py: streaming the agent to pid/") and b"\n" not in steps, out
    assert steps.endswith(CLEAR), out
    assert out[ready:].split(b"\r\n")[1] == b"app says hi", out  # the app starts on a line of its own


def test_plain_lines_off_a_terminal_and_on_a_dumb_one(pod):
    argv = [*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c", APP]
    piped = subprocess.run(argv, capture_output=True, timeout=120, env=_env())
    code, dumb = run_on_pty(argv, _env(TERM="dumb"))
    assert piped.returncode == 0 and code == 0
    for err in (piped.stderr, dumb.replace(b"\r\n", b"\n")):
        assert b"\x1b" not in err and b"\r" not in err, err
        # The steps that only say "wait" (the agent streaming) are for the updating line; what stays is said.
        lines = err.decode().splitlines()
        assert lines[0].startswith("mirror-py: agent ready in "), lines
        assert not [line for line in lines if line.startswith("mirror-py: streaming")], lines


def test_errors_are_red_unless_no_color(pod):
    argv = [*MIRROR_PY, "exec", "--target", "pid/999999999", "--", "true"]
    code, colored = run_on_pty(argv, _env())
    assert code == 1 and b"mirror-py: \x1b[1;31merror:\x1b[0m " in colored, colored
    code, plain = run_on_pty(argv, _env(NO_COLOR="1"))
    assert code == 1 and b"\x1b[" not in plain and plain.startswith(b"mirror-py: error: "), plain
