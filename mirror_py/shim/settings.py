"""What the shim needs to decide local vs remote, read once from the session's environment variable.

Parsed on first use, not at start-up: ``python -c pass`` under mirror-py must cost next to nothing.
"""

from __future__ import annotations

import os
from typing import Any

ENV_VAR = "MIRROR_PY_SHIM_SETTINGS"


class Settings:
    __slots__ = ("c_extensions", "dns_enabled", "dns_filter", "fs", "ignore_ports", "incoming_mode", "local_listeners",
                 "outgoing_enabled", "outgoing_filter", "port_mapping", "tcp", "udp")

    def __init__(self, data: dict[str, Any]) -> None:
        from .rules import NameFilter, TrafficFilter

        out = data.get("outgoing", {})
        dns = data.get("dns", {})
        self.outgoing_enabled = bool(out.get("enabled", True))
        self.tcp = bool(out.get("tcp", True))
        self.udp = bool(out.get("udp", True))
        self.outgoing_filter = TrafficFilter.from_json(out.get("filter") or {})
        # Which laptop listeners keep a loopback connect local (mirror_py.shim.local_listeners).
        self.local_listeners = str(out.get("local_listeners", "session"))
        self.dns_enabled = bool(dns.get("enabled", True))
        self.dns_filter = NameFilter.from_json(dns.get("filter") or {})
        # Incoming: which listening ports get the target's traffic (absent: none, for hand-written settings).
        inc = data.get("incoming") or {}
        self.incoming_mode = str(inc.get("mode", "off"))
        self.port_mapping = {int(local): int(remote) for local, remote in inc.get("port_mapping") or ()}
        self.ignore_ports = frozenset(int(p) for p in inc.get("ignore_ports") or ())
        # Files: the raw section; mirror_py.shim.file_rules builds its decisions from it at first use.
        self.fs = data.get("fs") or {"mode": "local"}
        # C extensions through their GOT slots (mirror_py.shim.clayer); on unless the session says otherwise.
        self.c_extensions = bool((data.get("interpose") or {}).get("c_extensions", True))


_cached: list[Settings] = []


def get() -> Settings:
    if _cached:
        return _cached[0]
    import json

    raw = os.environ.get(ENV_VAR)
    settings = Settings(json.loads(raw) if raw else {})
    _cached.append(settings)
    return settings


def reset(data: dict[str, Any] | None = None) -> None:
    """Drops the cached settings (tests, and a session that changes them)."""
    _cached.clear()
    if data is not None:
        _cached.append(Settings(data))
