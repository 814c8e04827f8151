"""Benchmark clients: each subcommand does one measurement the way an app would and prints one JSON line.

``benchmarks/core.py`` runs every subcommand twice with the same arguments: directly from the host
namespace against the pod IP, and under ``mirror-py exec --target pid/<pod>``.  Only the standard library
is used, so the script runs unchanged in both places.

    sink    HOST PORT MIB                 one stream of MIB MiB to the sink; MB/s from connect to its reply
    rtt     HOST PORT COUNT WARMUP        1-byte request/response round trips over one connection
    connect HOST PORT COUNT WARMUP        connect() latency (each connection is closed right after)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable

BLOCK = 1 << 20  # bytes handed to sendall() at a time


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def _summary_us(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(ns / 1000.0 for ns in samples_ns)
    return {
        "count": len(values),
        "p50_us": _percentile(values, 0.50),
        "p99_us": _percentile(values, 0.99),
        "min_us": values[0],
        "max_us": values[-1],
        "mean_us": sum(values) / len(values),
    }


def sink(host: str, port: str, mib: str) -> dict:
    """Send ``mib`` MiB on one TCP stream; the sink answers "sha256hex count" after our EOF."""
    total_blocks = int(mib)
    block = os.urandom(BLOCK)
    expected = hashlib.sha256()
    for _ in range(total_blocks):  # the digest is computed before the clock starts
        expected.update(block)
    view = memoryview(block)

    start = time.perf_counter()
    s = socket.create_connection((host, int(port)), timeout=120)
    connected = time.perf_counter()
    for _ in range(total_blocks):
        s.sendall(view)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    elapsed = time.perf_counter() - start
    s.close()
    remote_hex, count = reply.decode().split()
    sent = total_blocks * BLOCK
    if remote_hex != expected.hexdigest() or int(count) != sent:
        raise RuntimeError(f"sink saw {count} bytes / {remote_hex}, sent {sent} / {expected.hexdigest()}")
    return {
        "bytes": sent,
        "seconds": elapsed,
        "connect_ms": (connected - start) * 1000,
        "mb_per_s": sent / elapsed / 1e6,
        "verified": True,
    }


def rtt(host: str, port: str, count: str, warmup: str) -> dict:
    """Round trips of one byte over one connection to the echo server (Nagle off, like an RPC client)."""
    n, w = int(count), int(warmup)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send, recv, clock = s.send, s.recv, time.perf_counter_ns
    payload = b"x"
    for _ in range(w):
        send(payload)
        if recv(1) != payload:
            raise RuntimeError("echo mismatch during warm-up")
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        send(payload)
        got = recv(1)
        samples[i] = clock() - t0
        if got != payload:
            raise RuntimeError("echo mismatch")
    s.close()
    return _summary_us(samples)


def connect(host: str, port: str, count: str, warmup: str) -> dict:
    """Time connect() alone; the socket is created before and closed after the timed call."""
    n, w = int(count), int(warmup)
    address = (host, int(port))
    clock = time.perf_counter_ns

    def once() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t0 = clock()
            s.connect(address)
            return clock() - t0
        finally:
            s.close()

    for _ in range(w):
        once()
    cycle_start = clock()
    samples = [once() for _ in range(n)]
    cycle_ns = clock() - cycle_start
    out = _summary_us(samples)
    out["cycle_mean_us"] = cycle_ns / n / 1000.0  # socket() + connect() + close(), per connection
    return out


COMMANDS: dict[str, Callable[..., dict]] = {"sink": sink, "rtt": rtt, "connect": connect}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    result = COMMANDS[argv[0]](*argv[1:])
    shim = sys.modules.get("mirror_py.shim")
    # Lets the driver check that the "direct" run really was direct and the other one really interposed.
    result["shim_active"] = bool(shim is not None and shim.active())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
