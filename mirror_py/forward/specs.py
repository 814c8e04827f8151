"""Forward specs as users write them for ssh and kubectl: ``[BIND:]PORT:HOST:HOSTPORT``.

A bad spec is a :class:`SpecError` whose text is the one line the user sees.
"""

from __future__ import annotations

from dataclasses import dataclass


class SpecError(ValueError):
    """A forward spec that cannot be used; ``str()`` says which and why."""


@dataclass(frozen=True)
class Forward:
    """``bind:port`` listens; connections go to ``host:host_port`` (a name resolved where it is reached)."""

    bind: str
    port: int
    host: str
    host_port: int

    def __str__(self) -> str:
        return f"{show_host(self.bind)}:{self.port} -> {show_host(self.host)}:{self.host_port}"


def show_host(host: str) -> str:
    """An address as it is written before a port: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def _split(text: str) -> list[str]:
    """Colon-separated fields, where ``[...]`` keeps an IPv6 address's colons in one field."""
    fields: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "[":
            if depth:
                raise SpecError(f"{text!r}: nested '['")
            depth = 1
        elif ch == "]":
            if not depth:
                raise SpecError(f"{text!r}: ']' without '['")
            depth = 0
        elif ch == ":" and not depth:
            fields.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise SpecError(f"{text!r}: '[' without ']'")
    fields.append(current)
    return fields


def _port(text: str, spec: str, what: str, zero_ok: bool) -> int:
    if not text.isdigit():
        raise SpecError(f"{spec!r}: {what} {text!r} is not a port number")
    port = int(text)
    if not (0 if zero_ok else 1) <= port <= 65535:
        allowed = "0 (any free port) to 65535" if zero_ok else "1 to 65535"
        raise SpecError(f"{spec!r}: {what} {port} is out of range ({allowed})")
    return port


def parse(spec: str, default_bind: str, listen_zero_ok: bool = True) -> Forward:
    """``PORT:HOST:HOSTPORT`` or ``BIND:PORT:HOST:HOSTPORT``; an empty or 0 listening port means any free one
    (the forwarder says which it got)."""
    fields = _split(spec.strip())
    if len(fields) == 3:
        fields.insert(0, default_bind)
    if len(fields) != 4:
        raise SpecError(f"{spec!r}: expected [BIND:]PORT:HOST:HOSTPORT, like 15432:postgres:5432")
    bind, port, host, host_port = fields
    if not host:
        raise SpecError(f"{spec!r}: no host to forward to")
    return Forward(bind or default_bind, _port(port or "0", spec, "port", listen_zero_ok), host,
                   _port(host_port, spec, "port of the destination", False))
