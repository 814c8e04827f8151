"""The agent's memory stays within agent.memory_budget plus its base, whatever reaches the pod, while the session
does not read (it is stopped with SIGSTOP: the channel's pipe fills, as over a link that stalled), and the target
keeps serving meanwhile. The agent's peak RSS is the kernel's own high-water mark (VmHWM), reset just before
each flood."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .conftest import MIRROR_PY, ROOT, agent_of, terminate
from .test_incoming import PORT, Served, _wait_ready, serving

MIB = 1 << 20
BUDGET = 8 * MIB
# The budget counts the bytes the agent holds, not what Python's allocator keeps around them or the moment a
# frame exists twice while it is written: a margin of half the test budget, far below what each flood took
# before there was a budget (69 MiB and 95 to 127 MiB here).
SLACK = 4 * MIB
CONFIG = f'[agent]\nmemory_budget = "{BUDGET // MIB}MiB"\n'
NOTICE = "to keep its memory within agent.memory_budget (8 MiB)"

UDP_APP = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"hello", ("127.0.0.1", 9999))
s.recvfrom(100)
print("READY " + json.dumps({"sockname": list(s.getsockname()[:2]),
                             "session": os.environ.get("MIRROR_PY_SESSION")}), flush=True)
time.sleep(600)
"""


def _status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out




@contextmanager
def stopped(pid: int):
    """The session stops reading its channel (and everything else) while the block runs."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def captured_backlog(agent: int) -> int:
    """Bytes waiting in the packet sockets of the agent's network namespace (its capture), not yet read."""
    lines = Path(f"/proc/{agent}/net/packet").read_text().splitlines()[1:]
    return sum(int(line.split()[6]) for line in lines if line.strip())


def peak_during(agent: int, flood) -> tuple[int, int]:
    """(RSS before, peak RSS while ``flood`` ran and the agent read what it left) of the agent, in bytes. A
    mirroring agent reads its capture at idle priority, so it may still be catching up when the clients are
    done: the peak is read once the capture's backlog is empty and the agent has handled its last batch."""
    Path(f"/proc/{agent}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status(agent)["VmRSS"]
    flood()
    for _ in range(200):
        if not captured_backlog(agent):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    return base, _status(agent)["VmHWM"]


def test_udp_flood_on_a_relay_socket_is_dropped_and_counted(pod, tmp_path):
    """Anyone who reaches the pod can send to the agent's relay socket (it is bound on every address). With
    the session not reading, 94 MiB of datagrams used to pile up in the agent's queue toward the channel."""
    conf = tmp_path / "budget.toml"
    conf.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--config", str(conf), "--",
                             sys.executable, "-c", UDP_APP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(ROOT), start_new_session=True)
    try:
        ready = _wait_ready(proc)
        relay_port = ready["sockname"][1]  # the app's socket reports the target's view: the agent's socket
        agent = agent_of(proc.pid)

        def flood() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                payload = os.urandom(60 * 1024)
                for _ in range(1600):
                    s.sendto(payload, (pod.ip, relay_port))

        with stopped(proc.pid):
            base, peak = peak_during(agent, flood)
        assert peak - base < BUDGET + SLACK, f"the agent grew by {(peak - base) / MIB:.1f} MiB"
        budget = Served(proc, tmp_path / "unused.log", ready).stats()["budget"]
        assert budget["limit"] == BUDGET
        assert budget["datagrams_dropped"] > 0, budget
    finally:
        err = terminate(proc, timeout=20)
    assert err.count("dropped UDP datagrams") == 1, err
    assert NOTICE in err, err


def _post(host: str, body: bytes, results: list) -> None:
    """One client of the pod: a POST whose answer must come back whole (the pod's server hashes the body)."""
    import http.client

    c = http.client.HTTPConnection(host, PORT, timeout=20)
    try:
        c.request("POST", "/upload", body=body)
        r = c.getresponse()
        results.append((r.status, json.loads(r.read())))
    finally:
        c.close()


def test_mirrored_copies_over_a_stalled_session_are_cut_and_the_target_serves_on(pod, tmp_path):
    """32 uploads of 3 MiB each (4 clients at a time) reach the mirrored port while the session does not read:
    each copy used to wait in the agent whole (up to 16 MiB each). Now copies past the budget are cut; the
    pod's own server answers every client in full meanwhile."""
    body = os.urandom(3 * MIB)
    digest = hashlib.sha256(body).hexdigest()
    with serving(pod, tmp_path, mode="mirror", config=CONFIG) as served:
        agent = agent_of(served.proc.pid)
        results: list = []

        def client() -> None:
            for _ in range(8):
                _post(pod.ip, body, results)

        def flood() -> None:
            clients = [threading.Thread(target=client) for _ in range(4)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()

        with stopped(served.proc.pid):
            base, peak = peak_during(agent, flood)
            assert len(results) == 32
            assert all(status == 200 and ans["body_sha256"] == digest for status, ans in results)
        budget = served.stats()["budget"]
        assert peak - base < BUDGET + SLACK, f"the agent grew by {(peak - base) / MIB:.1f} MiB"
        assert budget["copies_cut"] > 0, budget
    assert served.stderr.count("cut mirrored copies") == 1, served.stderr
