"""``pods/log``: a container's output, with the options ``kubectl logs`` sends.

The container runtime writes each container's stdout and stderr into one file (tests/sandbox/cluster.py); this
module cuts what a request asks for out of it — ``tailLines``, ``limitBytes``, ``sinceSeconds`` — and with
``follow=true`` keeps the response open, sending what the container writes, until the container stops, as the
kubelet does. ``kubectl logs -f`` depends on that: a response that ends at once looks like a finished container.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tests.sandbox.manifest import ApiError

POLL = 0.05


@dataclass
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_seconds: int | None = None
    previous: bool = False

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> LogOptions:
        def number(name: str) -> int | None:
            text = query.get(name, [""])[0]
            if not text:
                return None
            try:
                value = int(text)
            except ValueError:
                raise ApiError.bad_request(f'invalid value "{text}" for {name}') from None
            if value < 0 or (value == 0 and name != "tailLines"):
                raise ApiError.invalid("PodLogOptions", "", f"{name}: Invalid value: {value}: must be greater than 0")
            return value

        def flag(name: str) -> bool:
            return query.get(name, ["false"])[0].lower() not in ("", "0", "false")

        return cls(flag("follow"), number("tailLines"), number("limitBytes"), number("sinceSeconds"), flag("previous"))


def select(data: bytes, options: LogOptions, modified: float) -> bytes:
    """What a non-following request returns of the log so far. ``sinceSeconds`` is judged by the file's last
    write (the sandbox keeps no time per line): a log untouched for longer is empty, otherwise whole."""
    if options.since_seconds is not None and time.time() - modified > options.since_seconds:
        data = b""
    if options.tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-options.tail_lines :]) if options.tail_lines > 0 else b""
    if options.limit_bytes is not None:
        data = data[: options.limit_bytes]
    return data


def read(path: Path, options: LogOptions) -> tuple[bytes, int]:
    """(the selected part of the log, the offset a follow continues from)."""
    try:
        data = path.read_bytes()
        modified = path.stat().st_mtime
    except OSError:
        return b"", 0
    return select(data, options, modified), len(data)


async def follow(
    path: Path, offset: int, sent: int, options: LogOptions, send: Callable[[bytes], Awaitable[None]],
    running: Callable[[], bool],
) -> None:
    """Send what is appended to the log after ``offset`` while the container runs (and what it wrote last)."""
    while True:
        alive = running()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        if data:
            offset += len(data)
            if options.limit_bytes is not None:
                data = data[: max(0, options.limit_bytes - sent)]
            if data:
                sent += len(data)
                await send(data)
            if options.limit_bytes is not None and sent >= options.limit_bytes:
                return
            continue
        if not alive:
            return
        await asyncio.sleep(POLL)
