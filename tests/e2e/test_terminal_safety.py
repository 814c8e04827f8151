"""What the target prints never reaches the user's terminal as control sequences."""

from __future__ import annotations

import os
import sys

from mirror_py.terminal import printable

from .conftest import run_mirror


def test_printable_shows_controls_as_visible_escapes():
    assert printable("ok\ttab\nline") == "ok\ttab\nline"
    assert printable("\x1b]0;owned\x07\x1b[2Jx\x9b31m\x7f") == "\\x1b]0;owned\\x07\\x1b[2Jx\\x9b31m\\x7f"


def test_an_agent_that_prints_escape_sequences_cannot_drive_the_terminal(pod, tmp_path):
    # An agent interpreter that retitles the window, clears the screen and fails: its words are shown, inert.
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nprintf '\\033]0;owned\\007\\033[2Jagent broke\\n' >&2\nexit 3\n")
    os.chmod(fake, 0o755)
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", "pass"], extra=["--agent-python", str(fake)])
    assert res.code != 0
    assert "agent broke" in res.stderr, res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "\\x1b]0;owned\\x07" in res.stderr
