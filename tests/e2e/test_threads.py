"""Many threads through one session at once: every answer reaches the thread that asked."""

from __future__ import annotations

import json
import sys

import pytest

from tests.sandbox.netpod import Network, Pod, PodSpec

from .conftest import PROBE, run_mirror

THREADS = 32


@pytest.fixture(scope="module")
def busy_pod(network: Network) -> Pod:
    # Each thread has its own name (a distinct loopback address that the echo server on 0.0.0.0 answers on)
    # and its own file of its own length.
    hosts = {f"t{i}.pod.internal": f"127.0.1.{i + 1}" for i in range(THREADS)}
    files = {f"/srv/threads/{i}": f"thread {i}\n" * (i + 1) for i in range(THREADS)}
    files["/etc/nsswitch.conf"] = "hosts: files\n"
    return network.add_pod(PodSpec(name="busy", hosts=hosts, files=files, servers=True))


def test_32_threads_doing_dns_connects_and_file_reads_at_once(busy_pod):
    res = run_mirror(f"pid/{busy_pod.pid}", [sys.executable, PROBE, "threads", str(THREADS)])
    assert res.code == 0, res.stderr
    assert res.json == {"threads": THREADS, "wrong": [], "failed": []}
    native = json.loads(busy_pod.exec_output([sys.executable, PROBE, "threads", str(THREADS)]).splitlines()[-1])
    assert native == res.json
