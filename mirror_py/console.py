"""What mirror-py itself writes on the user's stderr: one updating line for the start-up steps on a terminal,
plain lines everywhere else, and color only where color is welcome.

- On a terminal (a tty whose TERM is not ``dumb``), the start-up steps (target found, agent streaming, agent
  ready) share one line that each step overwrites; the last (``agent ready``) stays. Any other message first
  ends that line, so it never lands in the middle of a step, and after start-up every message is a line of its
  own: the app's output must never be appended to a half-written line of ours.
- Anywhere else (a pipe, a file, CI, an IDE's console, TERM=dumb), every step is a plain line and no escape
  sequence is written.
- Color (the ``error:`` of a failure) only on such a terminal, and never when ``NO_COLOR`` is set to anything
  non-empty (https://no-color.org).

Everything goes through :func:`mirror_py.terminal.printable` first: messages carry text from the target.
"""

from __future__ import annotations

import logging
import os
from typing import TextIO

from .terminal import printable

_CLEAR = "\r\033[K"  # to the line's start, and erase it
_RED = "\033[1;31m"
_RESET = "\033[0m"
#: Progress messages that end the start-up: shown as a line that stays, and the updating line is done.
FINAL_STEPS = ("agent ready",)


def live(stream: TextIO) -> bool:
    """Can ``stream`` take an updating line (a terminal that understands cursor movement)?"""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def colored(stream: TextIO) -> bool:
    return live(stream) and not os.environ.get("NO_COLOR")


class Console:
    """mirror-py's lines on one stream (stderr), with at most one transient line open at a time."""

    def __init__(self, stream: TextIO) -> None:
        self.reset(stream)

    def reset(self, stream: TextIO) -> None:
        """Writes on ``stream`` from now on, with what the terminal (and NO_COLOR) allow now."""
        self.stream = stream
        self.live = live(stream)
        self.color = colored(stream)
        self.open = False  # a transient line is on screen, without its newline
        self.started = False  # the start-up is over: no more transient lines

    def follow(self, stream: TextIO) -> Console:
        """This console on ``stream``, reset only when the stream changed (a test runner swaps sys.stderr)."""
        if stream is not self.stream:
            self.reset(stream)
        return self

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail the session
            pass

    def step(self, text: str) -> None:
        """A start-up step: overwrites the previous one on a terminal, a line of its own elsewhere."""
        if not self.live or self.started:
            self.line(text)
            return
        self._write(_CLEAR + printable(text))
        self.open = True

    def line(self, text: str) -> None:
        """A message that stays."""
        head = _CLEAR if self.open else ""
        self.open = False
        self._write(head + printable(text) + "\n")

    def error(self, text: str) -> None:
        """``mirror-py: error: text``, the error in red where color is welcome."""
        self.end()
        label = f"{_RED}error:{_RESET}" if self.color else "error:"
        self._write(f"mirror-py: {label} {printable(text)}\n")

    def end(self) -> None:
        """Erase a transient line (an error or a signal interrupts the start-up)."""
        if self.open:
            self._write(_CLEAR)
            self.open = False


#: ``extra=`` of a progress step that only tells the user to wait (the agent is streaming): shown on the
#: updating line of a terminal and with -v, left out of plain output, where it would only be noise.
TRANSIENT = {"transient": True}


class MessageHandler(logging.Handler):
    """mirror-py's log records, each a line of its own."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "transient", False) and logging.getLogger("mirror_py").level >= logging.WARNING:
            return
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not kill the session
            text = str(record.msg)
        self.console.line("mirror-py: " + text)


class ProgressHandler(MessageHandler):
    """The start-up steps: one updating line on a terminal until the agent is ready."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.levelno >= logging.WARNING:
            super().emit(record)
        elif text.startswith(FINAL_STEPS):
            self.console.line("mirror-py: " + text)
            self.console.started = True
        else:
            self.console.step("mirror-py: " + text)
