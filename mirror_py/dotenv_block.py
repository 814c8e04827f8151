"""The block of a dotenv file that joins a running session: what ``session start --write-env`` writes and
``session stop --write-env`` takes out again.

IDEs start programs with variables from a dotenv file (VS Code's Python extension reads
``${workspaceFolder}/.env``; PyCharm's run configurations, python-dotenv and pytest-dotenv read the same
format), so a shared session is joined from an IDE by a few lines in that file. They are the variables that make
a plain ``python app.py`` interposed and tell it where the session is; the target's environment is not among
them: the interposed process asks the session for it at start-up (``MIRROR_PY_FETCH_ENV``), so the pod's
secrets never land on disk.

The file is the user's: mirror-py owns only the lines between its two marker comments. Writing takes an
earlier block out and appends the new one, so starting again leaves one block, and the block's variables
come last (readers let a later line win); removing takes out exactly the block and leaves every other byte
as it was. Values are written so that every reader of the format reads them the same:
bare when they hold only plain characters, else in single quotes; a value no reader agrees on (a quote, a
backslash, a newline, ``${``) is refused rather than written ambiguously.
"""

from __future__ import annotations

import os
import re

BEGIN = "# >>> mirror-py session: written by `mirror-py session start --write-env`, removed by `session stop` >>>"
# The same marker when the file did not end with a newline and the block added one before itself: removing
# the block then takes that newline out too, so the file goes back to its exact bytes.
BEGIN_AFTER_ADDED_NEWLINE = BEGIN[:-4] + " (newline added above) >>>"
END = "# <<< mirror-py session <<<"

# The variables an interposed process needs to join a running session, in the order they are written.
JOIN_VARIABLES = ("PYTHONPATH", "MIRROR_PY_SESSION", "MIRROR_PY_SHIM_LIB", "MIRROR_PY_FETCH_ENV")

_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class DotenvError(ValueError):
    """A value or file that cannot be written or read as asked; the message is one line for the user."""


def quote(value: str) -> str:
    """``value`` as every dotenv reader reads it back unchanged (see the module docstring)."""
    if _BARE.match(value):
        return value
    if any(c in value for c in "'\\\n\r\0") or "${" in value:
        raise DotenvError(f"cannot write {value!r} to a dotenv file so that every reader agrees on it")
    return f"'{value}'"


def render(variables: dict[str, str], newline: str = "\n") -> str:
    """The block's lines (markers included), each ending with ``newline``."""
    lines = [BEGIN]
    for name, value in variables.items():
        if not _NAME.match(name):
            raise DotenvError(f"{name!r} is not a variable name")
        lines.append(f"{name}={quote(value)}")
    lines.append(END)
    return "".join(line + newline for line in lines)


def _find(text: str) -> tuple[int, int, bool] | None:
    """``(start, end, added_newline)`` of the block in ``text`` (end past its last line end), None when
    there is none. A begin marker without its end is an error: the user edited the block."""
    at = 0
    while True:
        start = text.find("# >>> mirror-py session", at)
        if start < 0:
            return None
        if start == 0 or text[start - 1] == "\n":
            break
        at = start + 1
    line_end = text.find("\n", start)
    first = text[start:line_end if line_end >= 0 else len(text)].rstrip("\r")
    if first not in (BEGIN, BEGIN_AFTER_ADDED_NEWLINE):
        raise DotenvError(f"an unknown mirror-py marker line: {first!r}; remove the block by hand")
    end_at = text.find("\n" + END, start)
    if end_at < 0:
        raise DotenvError("mirror-py's block has no end marker; remove the block by hand")
    stop = text.find("\n", end_at + 1)
    stop = len(text) if stop < 0 else stop + 1
    added = first == BEGIN_AFTER_ADDED_NEWLINE
    if added and start > 0 and text[start - 1] == "\n":
        start -= 1
        if start > 0 and text[start - 1] == "\r":
            start -= 1
    return start, stop, added


def without_block(text: str) -> str:
    """``text`` with mirror-py's block taken out, every other byte as it was."""
    found = _find(text)
    if found is None:
        return text
    start, stop, _ = found
    return text[:start] + text[stop:]


def block_values(text: str) -> dict[str, str]:
    """The variables mirror-py's block in ``text`` sets (empty when there is no block)."""
    from .config import ConfigError, parse_env_file

    found = _find(text)
    if found is None:
        return {}
    try:
        return parse_env_file(text[found[0]:found[1]].lstrip("\r\n"))
    except ConfigError as exc:
        raise DotenvError(str(exc)) from None


def with_block(text: str, variables: dict[str, str]) -> str:
    """``text`` with mirror-py's block holding ``variables`` at its end: an earlier block is taken out first,
    so the file holds one block, and its variables come after (and so win over) any line of the user's."""
    text = without_block(text)
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        return text + newline + render(variables, newline).replace(BEGIN, BEGIN_AFTER_ADDED_NEWLINE, 1)
    return text + render(variables, newline)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DotenvError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # surrogateescape: bytes that are not UTF-8 go back out exactly as they came in
        return data.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape decodes any bytes
        raise DotenvError(f"{path} is not a text file") from None


def _write(path: str, text: str, mode: int | None) -> None:
    """Replaces the file at once (a reader never sees half a file), keeping its permissions."""
    tmp = f"{path}.mirror-py-{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode & 0o7777)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
        if mode is not None:
            os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DotenvError(f"cannot write {path}: {exc.strerror or exc}") from None


def _mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def join_variables(text: str, session_env: dict[str, str]) -> dict[str, str]:
    """What the block holds for a session whose app environment is ``session_env``: the session's own
    variables, and a PYTHONPATH of the shim's directory followed by the PYTHONPATH the user's own lines set
    (the block comes after them, so it must carry theirs on)."""
    from .config import ConfigError, parse_env_file

    shim = session_env["PYTHONPATH"].split(os.pathsep)[0]
    try:
        theirs = parse_env_file(without_block(text)).get("PYTHONPATH", "")
    except ConfigError as exc:
        raise DotenvError(str(exc)) from None
    out = {"PYTHONPATH": shim + (os.pathsep + theirs if theirs else "")}
    for name in JOIN_VARIABLES[1:]:
        if name == "MIRROR_PY_FETCH_ENV":
            out[name] = "1"
        elif name in session_env:
            out[name] = session_env[name]
    return out


def write(path: str, session_env: dict[str, str]) -> dict[str, str]:
    """Writes (or rewrites) mirror-py's block in the dotenv file at ``path``; returns what it holds."""
    text = _read(path) or ""
    variables = join_variables(text, session_env)
    _write(path, with_block(text, variables), _mode(path))
    return variables


def held(path: str) -> dict[str, str]:
    """The variables mirror-py's block in the file at ``path`` sets (empty: no file, or no block)."""
    return block_values(_read(path) or "")


def remove(path: str) -> dict[str, str]:
    """Takes mirror-py's block out of the file at ``path``; returns what it held (empty: there was none)."""
    text = _read(path)
    if text is None:
        return {}
    held = block_values(text)
    if _find(text) is not None:
        _write(path, without_block(text), _mode(path))
    return held
