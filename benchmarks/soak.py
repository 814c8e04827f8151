"""mirror-py soak benchmark: many concurrent tunneled connections under steady load for minutes (issue 7).

Run as root from anywhere (it builds its own sandbox pod from network namespaces and removes it after):

    .venv/bin/python benchmarks/soak.py            # full run: 1,000 connections, 100,000 requests, 600 s
    .venv/bin/python benchmarks/soak.py --quick    # 1,000 connections, 10,000 requests, 60 s

One client process runs under ``mirror-py exec --target pid/<pod> -- python benchmarks/soak.py client ...``.
It opens ``--connections`` TCP connections to the pod's echo server (port 7000) through mirror-py, keeps all of
them open for the whole run, and spreads ``--requests`` small round trips (a 64-byte line out, the same line
back) evenly over the connections and over ``--duration`` seconds. Every exception and every wrong echo counts
as an error. Meanwhile this script samples VmRSS of the session (the ``mirror-py exec`` process), the agent (its
``python3 -I -c ...`` descendant) and the app every ``--interval`` seconds.

Prints the machine, then a markdown table (stdout); progress goes to stderr. ``--json FILE`` keeps every
sample. Exit status 1 if a request failed, a connection was lost, or fewer requests were done than asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FULL = {"duration": 600.0, "requests": 100_000, "connections": 1_000}
QUICK = {"duration": 60.0, "requests": 10_000, "connections": 1_000}
MSG_LEN = 64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft (and if possible the hard) fd limit; children (session, agent, app) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ------------------------------------------------------------------------------------------------- client


async def _client(host: str, port: int, connections: int, requests: int, duration: float) -> dict[str, Any]:
    errors: list[str] = []
    error_count = 0
    done = 0
    lost = 0

    def fail(what: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < 20:
            errors.append(what)

    # Open every connection first (at most 100 connects in flight) and keep them all open.
    gate = asyncio.Semaphore(100)

    async def open_one(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with gate:
            try:
                return await asyncio.open_connection(host, port)
            except Exception as exc:
                fail(f"connect {i}: {exc!r}")
                return None

    t_open = time.monotonic()
    opened = await asyncio.gather(*(open_one(i) for i in range(connections)))
    open_s = time.monotonic() - t_open
    streams = [s for s in opened if s is not None]
    print(json.dumps({"event": "open", "connections": len(streams), "open_s": open_s}), flush=True)

    per_conn = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]
    interval = duration * connections / max(requests, 1)  # seconds between two requests on one connection
    start = time.monotonic()

    async def worker(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal done, lost
        offset = interval * i / connections  # stagger the connections evenly within one interval
        for j in range(per_conn[i]):
            delay = start + offset + j * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            line = f"{i:05d}:{j:07d}:".encode().ljust(MSG_LEN - 1, b"x") + b"\n"
            try:
                writer.write(line)
                await writer.drain()
                got = await asyncio.wait_for(reader.readexactly(MSG_LEN), 30)
            except Exception as exc:
                fail(f"conn {i} request {j}: {exc!r}")
                lost += 1
                return
            if got != line:
                fail(f"conn {i} request {j}: wrong echo {got[:24]!r}")
            else:
                done += 1
        writer.close()
        try:
            await writer.wait_closed()
        except Exception as exc:
            fail(f"conn {i} close: {exc!r}")

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            print(json.dumps({"event": "progress", "t": time.monotonic() - start, "done": done,
                              "errors": error_count}), flush=True)

    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(streams)))
    ticker.cancel()
    return {"event": "result", "connections_asked": connections, "connections_open": len(streams),
            "open_s": open_s, "requests_asked": requests, "requests_done": done, "errors": error_count,
            "lost_connections": lost, "error_samples": errors, "run_s": time.monotonic() - start,
            "shim_active": _shim_active()}


def _shim_active() -> bool:
    mod = sys.modules.get("mirror_py.shim")
    return bool(mod and mod.active())


def client_main(argv: list[str]) -> int:
    host, port, connections, requests, duration = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    raise_nofile(connections * 2 + 256)
    result = asyncio.run(_client(host, port, connections, requests, duration))
    print(json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ sampler


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def find_roles(session_pid: int) -> dict[str, int | None]:
    agent = app = None
    for pid in _descendants(session_pid):
        cmd = _cmdline(pid)
        if len(cmd) >= 3 and Path(cmd[0]).name.startswith("python") and "-I" in cmd and "-c" in cmd:
            agent = pid
        elif any(Path(a).name == "soak.py" for a in cmd) and "client" in cmd:
            app = pid
    return {"session": session_pid, "agent": agent, "app": app}


# ------------------------------------------------------------------------------------------------ runner


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.core import mirror_py_command
    from tests.sandbox.netpod import TCP_ECHO_PORT, Network, PodSpec

    limits = raise_nofile(cfg["connections"] * 4 + 1024)
    log(f"RLIMIT_NOFILE now {limits[0]} (soft) / {limits[1]} (hard)")
    samples: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    log("building the sandbox pod (network namespace, bridge, servers)")
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="soak", servers=True))
        log(f"pod ready: ip {pod.ip}, pid {pod.pid}")
        cmd = [*mirror_py_command(), "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, str(Path(__file__)),
               "client", pod.ip, str(TCP_ECHO_PORT), str(cfg["connections"]), str(cfg["requests"]),
               str(cfg["duration"])]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                                stdin=subprocess.DEVNULL)
        stderr_tail: list[str] = []

        def drain_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                stderr_tail.append(line)
                del stderr_tail[:-200]

        def read_stdout() -> None:
            nonlocal result
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                msg = json.loads(line)
                msg["wall"] = time.monotonic() - t0
                if msg.get("event") == "result":
                    result = msg
                else:
                    events.append(msg)
                    if msg.get("event") == "open":
                        log(f"{msg['connections']} connections open in {msg['open_s']:.1f} s")
                    elif int(msg["t"]) % 60 < 10:
                        log(f"t={msg['t']:.0f} s: {msg['done']:,} requests done, {msg['errors']} errors")

        threads = [threading.Thread(target=f, daemon=True) for f in (drain_stderr, read_stdout)]
        for t in threads:
            t.start()
        roles: dict[str, int | None] = {"session": proc.pid, "agent": None, "app": None}
        while proc.poll() is None:
            if roles["agent"] is None or roles["app"] is None or rss_kib(roles["agent"]) is None:
                roles = find_roles(proc.pid)
            sample = {"t": time.monotonic() - t0}
            for role, pid in roles.items():
                sample[f"{role}_rss_kib"] = rss_kib(pid)
                sample[f"{role}_fds"] = fd_count(pid)
            if proc.poll() is None and roles["agent"] is not None:  # from the moment the session has an agent
                samples.append(sample)
            deadline = time.monotonic() + cfg["interval"]
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        for t in threads:
            t.join(timeout=10)
        wall = time.monotonic() - t0
        log(f"client exited {proc.returncode} after {wall:.0f} s")
        if result is None or proc.returncode != 0:
            tail = "".join(stderr_tail)[-4000:]
            raise RuntimeError(f"soak client exited {proc.returncode} without a result:\n{tail}")
    return {"result": result, "samples": samples, "events": events, "wall_s": wall, "pod_ip": pod.ip,
            "nofile": limits, "stderr_tail": stderr_tail[-50:]}


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def rss_summary(samples: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """Start = the first sample (the session's agent is up); 1 min = the sample nearest 60 s after it."""
    vals = [(s["t"], s[f"{role}_rss_kib"], s[f"{role}_fds"]) for s in samples if s[f"{role}_rss_kib"] is not None]
    if not vals:
        return {}
    minute = min(vals, key=lambda v: abs(v[0] - (vals[0][0] + 60)))
    return {"start": vals[0][1], "start_t": vals[0][0], "minute": minute[1], "end": vals[-1][1],
            "max": max(v[1] for v in vals), "fds_max": max((v[2] or 0) for v in vals)}


def report(cfg: dict[str, Any], out: dict[str, Any], mach: dict[str, str], load_end: str) -> str:
    res, samples = out["result"], out["samples"]
    roles = {role: rss_summary(samples, role) for role in ("session", "agent", "app")}
    lines = [
        f"- CPU: {mach['cpu']}, {mach['cores']}",
        f"- Memory: {mach['memory']}; load average (1/5/15 min) at start: {mach['load']}, at end: {load_end}",
        f"- Python: {mach['python']}",
        f"- Kernel: {mach['kernel']}",
        f"- Client: one asyncio process under `mirror-py exec --target pid/<pod>`, {cfg['connections']:,} TCP "
        f"connections to the echo server at {out['pod_ip']}:7000, {MSG_LEN}-byte round trips; RLIMIT_NOFILE "
        f"{out['nofile'][0]}; RSS sampled every {cfg['interval']:.0f} s ({len(samples)} samples)",
        "",
        "| Measurement | Value |",
        "|---|---:|",
        f"| Requests done / asked | {res['requests_done']:,} / {res['requests_asked']:,} |",
        f"| Errors (exceptions or wrong echoes) | {res['errors']} |",
        f"| Connections open / asked (all kept open for the run) | {res['connections_open']:,} / "
        f"{res['connections_asked']:,} |",
        f"| Connections lost during the run | {res['lost_connections']} |",
        f"| Time to open all connections (s) | {res['open_s']:.1f} |",
        f"| Request phase duration (s), asked {cfg['duration']:.0f} | {res['run_s']:.1f} |",
        f"| Request rate (per s) | {res['requests_done'] / max(res['run_s'], 1e-9):,.0f} |",
    ]
    for role, label in (("session", "Session (`mirror-py exec`)"), ("agent", "Agent (`python3 -I -c`)"),
                        ("app", "App (client)")):
        r = roles[role]
        if not r:
            lines.append(f"| {label} RSS | not found |")
            continue
        lines.append(f"| {label} RSS start (t={r['start_t']:.0f} s) / end / max (MiB) | {_mib(r['start'])} / "
                     f"{_mib(r['end'])} / {_mib(r['max'])} |")
        lines.append(f"| {label} RSS growth, 1 min -> end / start -> end (KiB) | {r['end'] - r['minute']:+,} / "
                     f"{r['end'] - r['start']:+,} |")
        lines.append(f"| {label} open fds, max | {r['fds_max']:,} |")
    lines.append(f"| Total wall time of the mirror-py process (s) | {out['wall_s']:.0f} |")
    if res["error_samples"]:
        lines += ["", "First errors:", *(f"- `{e}`" for e in res["error_samples"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 s and 10,000 requests")
    parser.add_argument("--duration", type=float, help="seconds of the request phase (default 600)")
    parser.add_argument("--requests", type=int, help="requests over the whole run (default 100,000)")
    parser.add_argument("--connections", type=int, help="concurrent connections (default 1,000)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the sandbox pod needs network namespaces")
    cfg: dict[str, Any] = dict(QUICK if args.quick else FULL, interval=args.interval)
    for key in ("duration", "requests", "connections"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    sys.path.insert(0, str(ROOT))
    from benchmarks.core import machine

    mach = machine()
    log(f"soak: {cfg['connections']:,} connections, {cfg['requests']:,} requests over {cfg['duration']:.0f} s")
    out = run(cfg)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(report(cfg, out, mach, load_end))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg, "machine": mach, **out}, indent=1))
    res = out["result"]
    ok = res["errors"] == 0 and res["requests_done"] == res["requests_asked"] and res["lost_connections"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
