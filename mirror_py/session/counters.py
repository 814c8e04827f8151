"""What a session did, counted where it happens, for ``mirror-py session status`` and ``%mirror status``.

Every counter is a plain integer increment on a path that already does far more work (an RPC, a relay write),
so counting costs nothing measurable. Routing decisions are made in the shims, not here: a shim keeps its own
counts per destination and sends them along with its next request to the session (mirror_py/shim/routes.py),
so a connection that stays local costs no round trip to be counted.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

#: Where a route's count is kept: (protocol, address, port, remote?, the rule that decided).
RouteKey = tuple[str, str, int, bool, str]
DEFAULT_REMOTE = "outgoing default: remote"  # the rule of a connect request that names none
MAX_ROUTES = 4096  # destinations kept; beyond, new ones are counted under "other destinations"


class SessionCounters:
    def __init__(self) -> None:
        self.started = time.time()
        self.agent_since: float | None = None
        self.reconnects = 0
        self.routes: Counter[RouteKey] = Counter()
        self.names: dict[tuple[str, int], str] = {}  # address -> the name the app asked for, when it gave one
        self.other_routes = 0
        self.dns_lookups = 0
        self.files_read = 0
        self.files_written = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.incoming: Counter[str] = Counter()  # by mode: mirror, steal, listen (reverse port-forward)
        self.errors: Counter[str] = Counter()  # error replies to shims, by errno name
        self._sent_before = 0  # channel bytes of the agents before the current one
        self._received_before = 0

    def add_routes(self, batch: Any) -> None:
        """Takes a shim's batch: ``[[proto, ip, port, name or null, remote, why, count], ...]``; anything
        malformed is ignored (a report must never fail the request it rides on)."""
        if not isinstance(batch, list):
            return
        for item in batch[:MAX_ROUTES]:
            try:
                proto, ip, port, name, remote, why, count = item
                key = (str(proto), str(ip), int(port), bool(remote), str(why))
                count = int(count)
            except (TypeError, ValueError):
                continue
            if key not in self.routes and len(self.routes) >= MAX_ROUTES:
                self.other_routes += count
                continue
            self.routes[key] += count
            if name:
                self.names[(key[1], key[2])] = str(name)

    def count_connect(self, host: str, port: int, name: Any, why: Any) -> None:
        """A shim's blocking remote connect, which reports its own route (mirror_py/shim/routes.py)."""
        key = ("tcp", host, port, True, str(why) if why else DEFAULT_REMOTE)
        if key in self.routes or len(self.routes) < MAX_ROUTES:
            self.routes[key] += 1
            if name:
                self.names[(host, port)] = str(name)
        else:
            self.other_routes += 1

    def count_fs(self, req: dict, result: Any) -> None:
        """A file operation done in the target: opens by what they may do, and the bytes moved."""
        fn = req.get("fn")
        if fn in ("open", "read"):
            data = getattr(result, "data", None)  # an open may bring the whole of a small file with it
            if data is not None:
                self.bytes_read += len(data)
        if fn == "open":
            flags = req.get("flags")
            if isinstance(flags, int):
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    self.files_read += 1
                else:
                    self.files_written += 1
        elif fn == "write":
            if isinstance(result, int):
                self.bytes_written += result

    def agent_changed(self, old: Any) -> None:
        """A new agent took over (the first, or after a reconnect): keep what the old channel carried."""
        if old is not None:
            self._sent_before += old.conn.data_sent
            self._received_before += old.conn.data_received
        self.agent_since = time.time()

    def snapshot(self, link: Any, dns_stats: dict, fs_stats: dict) -> dict:
        """Everything as JSON-ready values; ages in seconds."""
        now = time.time()
        sent = self._sent_before + (link.conn.data_sent if link is not None else 0)
        received = self._received_before + (link.conn.data_received if link is not None else 0)
        routes = []
        for (proto, ip, port, remote, why), count in sorted(self.routes.items(), key=lambda kv: -kv[1]):
            routes.append({"proto": proto, "address": ip, "port": port, "name": self.names.get((ip, port)),
                           "to": "pod" if remote else "local", "rule": why, "count": count})
        return {
            "age": round(now - self.started, 1),
            "agent_age": round(now - self.agent_since, 1) if self.agent_since else None,
            "reconnects": self.reconnects,
            "connections": routes,
            "other_connections": self.other_routes,
            "bytes": {"to_pod": sent, "from_pod": received},
            "dns": {"lookups": self.dns_lookups, "cache_hits": dns_stats.get("hits", 0) + dns_stats.get("shared", 0)},
            "files": {"opened_for_reading": self.files_read, "opened_for_writing": self.files_written,
                      "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                      "metadata_cache_hits": fs_stats.get("hits", 0)},
            "incoming": {"mirrored": self.incoming["mirror"], "stolen": self.incoming["steal"],
                         "reverse_forwarded": self.incoming["listen"]},
            "errors": dict(self.errors),
        }
