"""Text from the target made safe for the user's terminal.

Whatever the target says reaches the laptop's terminal: the agent's stderr, error messages from its files and
sockets, names it reports. A compromised or merely noisy target could put escape sequences in them that
retitle the window, rewrite what the user reads, or (on some terminals) answer back with keystrokes. Every line
mirror-py prints goes through :func:`printable`, which shows control characters as visible escapes instead of
sending them.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 controls (a lone 0x9b is a CSI on some terminals).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """``text`` with every control character except tab and newline shown as ``\\xNN``."""
    return _CONTROL.sub(_escape, text)
