"""The session's counters and the status lines made from them: a shim's route report is taken whatever it
holds (a bad one is ignored, never fails the request it rides on), and the status reads as documented."""

from __future__ import annotations

import os

from mirror_py.session.counters import MAX_ROUTES, SessionCounters
from mirror_py.session.rpc_server import Binary
from mirror_py.session.status_text import render


def test_route_batches_add_up_and_bad_items_are_ignored():
    c = SessionCounters()
    c.add_routes([["tcp", "10.0.3.7", 5432, "postgres", True, "outgoing default: remote", 2]])
    c.add_routes([["tcp", "10.0.3.7", 5432, None, True, "outgoing default: remote", 1],
                  ["tcp", "10.0.3.7"], "junk", None, ["tcp", "1.2.3.4", "x", None, True, "r", 1]])
    c.add_routes({"not": "a list"})
    rows = c.snapshot(None, {}, {})["connections"]
    assert rows == [{"proto": "tcp", "address": "10.0.3.7", "port": 5432, "name": "postgres", "to": "pod",
                     "rule": "outgoing default: remote", "count": 3}]


def test_destinations_beyond_the_bound_are_counted_together():
    c = SessionCounters()
    c.add_routes([["udp", f"10.0.{i // 256}.{i % 256}", 53, None, True, "r", 1] for i in range(MAX_ROUTES)])
    c.add_routes([["udp", "192.0.2.1", 53, None, True, "r", 5]])
    snap = c.snapshot(None, {}, {})
    assert len(snap["connections"]) == MAX_ROUTES and snap["other_connections"] == 5


def test_files_are_counted_by_what_they_were_opened_for():
    c = SessionCounters()
    c.count_fs({"fn": "open", "flags": os.O_RDONLY}, Binary({"h": 1}, b"abc"))
    c.count_fs({"fn": "open", "flags": os.O_WRONLY | os.O_CREAT}, {"h": 2})
    c.count_fs({"fn": "read"}, Binary(None, b"12345"))
    c.count_fs({"fn": "write"}, 7)
    files = c.snapshot(None, {}, {})["files"]
    assert files == {"opened_for_reading": 1, "opened_for_writing": 1, "bytes_read": 8, "bytes_written": 7,
                     "metadata_cache_hits": 0}


def test_status_lines():
    c = SessionCounters()
    c.add_routes([["tcp", "127.0.0.1", 5678, None, False, "this process listens there", 1]])
    c.errors["ECONNREFUSED"] += 2
    info = {"target": "pod staging/api-1 (container app)", "agent": {"python": "3.12.1", "pid": 7},
            "pod": {"namespace": "staging", "name": "api-1", "container": "app"}, "agent_mode": "ephemeral",
            "mode": "daemon", "pid": 42, "counters": c.snapshot(None, {"hits": 3}, {})}
    lines = render(info)
    assert lines[0] == "target pod staging/api-1 (container app)"
    assert lines[1] == "  pod         staging/api-1, container app"
    assert lines[2].startswith("  agent       ephemeral mode, python 3.12.1 (pid 7), up ")
    assert "  connections" in lines
    assert "  errors      ECONNREFUSED 2" in lines
    assert any(line.endswith("-> local       1  this process listens there") for line in lines), lines
