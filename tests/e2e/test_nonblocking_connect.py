"""A non-blocking connect through mirror-py never blocks the caller, and its outcome arrives the kernel's way.

The far end sits behind a slow link from the pod (tests/sandbox/badlink.py: 100 ms each way, so the agent's
connect takes a 200 ms round trip), and a black hole is an address behind a link that loses every packet. The
app runs through mirror-py with the pod as target; each check is a semantic one with a generous bound (half a
round trip for a stall, a second of slack for a timeout), never a speed measurement. A watchdog in each app
reports a loop that stayed blocked instead of letting the test wait for the kernel's two-minute connect timeout.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.sandbox.badlink import BadLink

from .conftest import ROOT, run_mirror

DELAY = 0.1  # each way between the pod and the far server
RTT = 2 * DELAY
ECHO_PORT, CLOSED_PORT = 7000, 7001

WATCHDOG = r"""
import json, os, sys, threading
def _stuck():
    print(json.dumps({"stuck": True}), flush=True)
    os._exit(3)
_watchdog = threading.Timer(15, _stuck)
_watchdog.daemon = True
_watchdog.start()
"""

TICKER = WATCHDOG + r"""
import asyncio, time
host, port = sys.argv[1], int(sys.argv[2])

async def ticker(stop, gaps):
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.monotonic()
        gaps.append(now - last)
        last = now

async def main():
    stop, gaps = asyncio.Event(), []
    task = asyncio.ensure_future(ticker(stop, gaps))
    await asyncio.sleep(0.05)
    del gaps[:]
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        took, result = time.monotonic() - start, type(exc).__name__
    else:
        took = time.monotonic() - start
        writer.write(b"ping\n")
        await writer.drain()
        result = (await reader.readline()).decode().strip()
        result = [result, list(writer.get_extra_info("peername")[:2])]
        writer.close()
    stop.set()
    await task
    return {"result": result, "connect_took": took, "longest_stall": max(gaps)}

print(json.dumps(asyncio.run(main())))
"""

WAIT_FOR = WATCHDOG + r"""
import asyncio, time
host = sys.argv[1]

async def main():
    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.open_connection(host, 80), 0.5)
        result = "connected"
    except asyncio.TimeoutError:
        result = "TimeoutError"
    except OSError as exc:
        result = type(exc).__name__
    return {"result": result, "took": time.monotonic() - start}

print(json.dumps(asyncio.run(main())))
"""

BLOCKING_TIMEOUT = WATCHDOG + r"""
import socket, time
s = socket.socket()
s.settimeout(0.5)
start = time.monotonic()
try:
    s.connect((sys.argv[1], 80))
    result = "connected"
except socket.timeout as exc:
    result = ["timeout", exc.errno]
except OSError as exc:
    result = type(exc).__name__
print(json.dumps({"result": result, "took": time.monotonic() - start}))
"""

# The agent stops answering (stopped here with SIGSTOP: the session's other child processes are the agent's).
STALLED_AGENT = WATCHDOG + r"""
import os, signal, socket, time
me, session = os.getpid(), os.getppid()

def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found

agent = children(session)
s = socket.socket()
s.settimeout(0.5)
for pid in agent:
    os.kill(pid, signal.SIGSTOP)
start = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    result = "connected"
except socket.timeout as exc:
    result = ["timeout", exc.errno]
except OSError as exc:
    result = type(exc).__name__
finally:
    took = time.monotonic() - start
    for pid in agent:
        os.kill(pid, signal.SIGCONT)
print(json.dumps({"result": result, "took": took, "stopped": len(agent)}))
"""

SELECTORS = WATCHDOG + r"""
import errno, selectors, socket, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setblocking(False)
start = time.monotonic()
first = s.connect_ex((host, port))
returned_after = time.monotonic() - start
again = s.connect_ex((host, port))  # asked again while in flight
with selectors.DefaultSelector() as sel:
    sel.register(s, selectors.EVENT_WRITE)
    ready = bool(sel.select(10))
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
out = {"first": errno.errorcode.get(first, first), "again": errno.errorcode.get(again, again),
       "returned_after": returned_after, "writable": ready, "so_error": errno.errorcode.get(err, err)}
if err == 0:
    s.setblocking(True)
    s.sendall(b"select\n")
    out["echo"] = s.recv(100).decode().strip()
    out["peer"] = list(s.getpeername()[:2])
print(json.dumps(out))
"""


def _wait_for_port(address: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise


@pytest.fixture(scope="module")
def far():
    """An echo server 100 ms (each way) from the pod; nothing listens on CLOSED_PORT there."""
    with BadLink(delay=DELAY, loss=0.0) as link:
        server = subprocess.Popen(
            link.argv([sys.executable, "-m", "tests.sandbox.servers", "tcp-echo", "--bind", f"0.0.0.0:{ECHO_PORT}"]),
            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(link.address, ECHO_PORT)
            yield link.address
        finally:
            server.terminate()
            server.wait(10)


@pytest.fixture(scope="module")
def hole():
    """An address that drops every packet: a connect to it never hears back."""
    with BadLink(delay=0.0, loss=1.0) as link:
        yield link.address


def _run(pod, app: str, *args: str) -> dict:
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", app, *args], timeout=60)
    assert res.code == 0, f"mirror-py exited {res.code}: {res.stdout}\n{res.stderr}"
    out = res.json
    assert not out.get("stuck"), "the app's event loop or connect stayed blocked for 15 s"
    return out


def test_the_event_loop_keeps_ticking_while_a_connect_crosses_a_slow_link(pod, far):
    out = _run(pod, TICKER, far, str(ECHO_PORT))
    assert out["result"] == ["ping", [far, ECHO_PORT]]
    assert out["connect_took"] >= RTT * 0.9, out  # the connect really waited for the far end
    assert out["longest_stall"] < RTT / 2, out


def test_a_refused_connect_raises_at_the_await_and_never_stalls_the_loop(pod, far):
    out = _run(pod, TICKER, far, str(CLOSED_PORT))
    assert out["result"] == "ConnectionRefusedError"
    assert out["connect_took"] >= RTT * 0.9, out  # the refusal came from the far end, a round trip away
    assert out["longest_stall"] < RTT / 2, out


def test_refused_by_the_pods_own_loopback(pod):
    out = _run(pod, TICKER, "127.0.0.1", "1")
    assert out["result"] == "ConnectionRefusedError"


def test_wait_for_times_out_on_time_against_a_black_hole(pod, hole):
    out = _run(pod, WAIT_FOR, hole)
    assert out["result"] == "TimeoutError"
    assert out["took"] < 0.5 + 1.0, out


def test_a_blocking_socket_timeout_holds_against_a_black_hole(pod, hole):
    out = _run(pod, BLOCKING_TIMEOUT, hole)
    assert out["result"] == ["timeout", None]
    assert out["took"] < 0.5 + 1.0, out


def test_a_blocking_socket_timeout_holds_when_the_agent_does_not_answer(pod):
    out = _run(pod, STALLED_AGENT, "127.0.0.1", str(ECHO_PORT))
    assert out["stopped"] >= 1
    assert out["result"] == ["timeout", None]
    assert out["took"] < 0.5 + 1.0, out


def test_the_classic_select_pattern_connects(pod, far):
    out = _run(pod, SELECTORS, far, str(ECHO_PORT))
    assert (out["first"], out["again"], out["writable"], out["so_error"]) == ("EINPROGRESS", "EALREADY", True, 0)
    assert out["returned_after"] < RTT / 2, out
    assert out["echo"] == "select" and out["peer"] == [far, ECHO_PORT]


def test_the_classic_select_pattern_sees_a_refusal_in_so_error(pod, far):
    out = _run(pod, SELECTORS, far, str(CLOSED_PORT))
    assert (out["first"], out["again"], out["writable"], out["so_error"]) == (
        "EINPROGRESS", "EALREADY", True, "ECONNREFUSED")
    assert out["returned_after"] < RTT / 2, out
