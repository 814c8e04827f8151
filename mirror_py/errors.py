"""Errors that reach the user as one clear line, never as a traceback."""

from __future__ import annotations


class MirrorError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""
