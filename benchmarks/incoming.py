"""mirror-py incoming benchmark: what the target's own clients see while a local app mirrors or steals its port.

Run as root from anywhere (it builds its own sandbox pod from network namespaces and removes it after):

    .venv/bin/python benchmarks/incoming.py            # full run, about four minutes
    .venv/bin/python benchmarks/incoming.py --quick    # shorter runs, about a minute

The pod runs an HTTP service on port 8090: a single-threaded asyncio server that renders a 2.6 KB JSON document
for each request (about 50 us of CPU, the shape of a small Python API endpoint); one core is its capacity.
A load generator in the host's network namespace — the pod's clients, the way another node reaches it —
first keeps ``--connections`` keep-alive connections busy for ``--seconds`` after a warm-up (saturating: the
pod's capacity, requests/s and latency percentiles), then sends requests back to back on one connection (light
load: latency). It is ``wrk`` when installed (``apt-get install wrk``: a C client, so the client is not the
bottleneck), else a Python asyncio client. Four scenarios run in the same session, alternating, ``--repeat``
times each:

- **none**: no mirror-py at all;
- **mirror**: a local app listens under ``mirror-py exec --incoming mirror``; the pod answers, the app gets copies;
- **steal**: the same with ``--incoming steal``: the local app answers every request;
- **filtered steal**: steal with ``http_filter.header = "^x-user: me$"``; the load carries no such header, so
  every request is parsed by the agent and forwarded to the pod's app (the cost for everyone else).

The machine has few cores, so the pod gets its own: the pod's service and the agent (which lives in the pod)
run on CPU 0, everything else — load generator, session, local app — on the others. With the service
saturating CPU 0, requests/s is the pod's capacity, and the pod's CPU seconds per 1,000 requests (service +
agent, from /proc) is the capacity cost measured on the pod's side, whatever the clients do. Each scenario
checks who answered with a few requests of its own.

Prints a markdown table on stdout (progress on stderr); ``--json FILE`` keeps every raw result.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PORT = 8090
ITEMS = 40  # items in each response of the pod's service
AIM_MIRROR_CAPACITY_LOSS = 0.10
FILTER = '[network.incoming]\nmode = "steal"\n[network.incoming.http_filter]\nheader = "^x-user: me$"\n'
SCENARIOS = ("none", "mirror", "steal", "filtered steal")

FULL = {"seconds": 8.0, "warmup": 2.0, "connections": 8, "light_seconds": 4.0, "repeat": 3}
QUICK = {"seconds": 3.0, "warmup": 1.0, "connections": 8, "light_seconds": 2.0, "repeat": 1}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- load client
async def _load(host: str, port: int, connections: int, seconds: float, warmup: float) -> dict:
    request = f"GET /bench HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    servers: dict[str, int] = {}
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def worker() -> None:
        nonlocal errors
        while loop.time() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while loop.time() < stop:
                    t0 = time.perf_counter()
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    body = await reader.readexactly(length)
                    t1 = time.perf_counter()
                    if loop.time() >= measure_from:
                        latencies.append(t1 - t0)
                        name = body[body.find(b'"server": "') + 11:].split(b'"', 1)[0].decode()
                        servers[name] = servers.get(name, 0) + 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
            finally:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    n = len(latencies)
    return {"requests": n, "rps": n / seconds, "p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
            "servers": servers, "errors": errors}


def wrk(host: str, port: int, connections: int, seconds: float) -> dict:
    """One wrk run: requests/s and the latency percentiles it reports."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-H",
                          "X-User: other", f"http://{host}:{port}/bench"], capture_output=True, text=True,
                         timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    text = out.stdout
    pct = {}
    for line in text.split("Latency Distribution", 1)[1].splitlines()[1:5]:
        label, value = line.split()
        pct[label] = _ms(value)
    total = int(text.split(" requests in ", 1)[0].split()[-1])
    errors = sum(int(n) for n in _numbers_after(text, "Socket errors:")) + sum(
        int(n) for n in _numbers_after(text, "Non-2xx or 3xx responses:"))
    return {"requests": total, "rps": float(text.split("Requests/sec:", 1)[1].split()[0]), "p50_ms": pct["50%"],
            "p99_ms": pct["99%"], "errors": errors}


def _ms(value: str) -> float:
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def _numbers_after(text: str, label: str) -> list[str]:
    if label not in text:
        return []
    line = text.split(label, 1)[1].splitlines()[0]
    return [w.strip(",") for w in line.split() if w.strip(",").isdigit()]


def render(server: str) -> bytes:
    """One response of the pod's service (and of the local app, which does the same work): a JSON document of
    ITEMS items, about 2.6 KB and 50 us of CPU here — the shape of a small Python API endpoint."""
    items = [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "price": i * 1.5} for i in range(ITEMS)]
    body = json.dumps({"server": server, "items": items}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def server_main(argv: list[str]) -> None:
    """The pod's service: asyncio, keep-alive, one rendered document per request."""
    port = int(argv[0])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(render("pod"))
        except (asyncio.IncompleteReadError, OSError, asyncio.LimitOverrunError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024)
        print("READY", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def load_main(argv: list[str]) -> None:
    host, port, connections, seconds, warmup = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), float(argv[4])
    print(json.dumps(asyncio.run(_load(host, port, connections, seconds, warmup))))


# ---------------------------------------------------------------------------------------------- local app
def app_main(argv: list[str]) -> None:
    """The local app: the pod's service, run locally, counting what reaches it (copies included)."""
    port, count_file = int(argv[0]), argv[1]
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                seen += 1
                reply = render("local")  # the same work as the pod's service
                if not writer.is_closing():  # a mirrored copy may be cut off (reset) while its replies flow
                    writer.write(reply)
        except (asyncio.IncompleteReadError, OSError, asyncio.LimitOverrunError):
            writer.close()

    def count(*_: object) -> None:
        Path(count_file + ".tmp").write_text(str(seen))
        os.replace(count_file + ".tmp", count_file)

    def done(*_: object) -> None:
        count()
        os._exit(0)

    async def main() -> None:
        server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, count)
        print(f"READY {os.getpid()} {os.environ.get('MIRROR_PY_SESSION', '-')}", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- the pod
def _pod_pids(netns: str) -> list[int]:
    ident = os.stat(f"/run/netns/{netns}")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
                pids.append(int(entry))
    return pids


def _pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


BOOST = -10


def _boost(pids: list[int]) -> None:
    """The machine may be shared (other jobs, other test runs): the pod's processes and the load generator
    get a higher priority than the rest — both the process's threads and its session's scheduling group. A
    mirroring agent keeps the idle class it chose for itself."""
    for pid in pids:
        try:
            if os.sched_getscheduler(pid) == os.SCHED_IDLE:
                continue
            Path(f"/proc/{pid}/autogroup").write_text(str(BOOST))
        except OSError:
            pass
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), BOOST)
        except OSError:
            pass


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (all threads, live and gone)
    return total / tick


def _mirror_py() -> list[str]:
    script = Path(sys.executable).with_name("mirror-py")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mirror_py"]


def _agent_stats(path: str) -> dict:
    """The agent's counters for the subscription (captured packets, kernel drops, copies given up)."""
    import socket
    import struct

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            body = json.dumps({"op": "incoming_stats"}).encode()
            s.sendall(struct.pack(">I", len(body)) + body)
            f = s.makefile("rb")
            (size,) = struct.unpack(">I", f.read(4))
            subs = json.loads(f.read(size)).get("ok", {}).get("subs", {})
    except (OSError, ValueError):
        return {}
    return next(iter(subs.values()), {})


def _app_count(app_pid: int | None, count_file: Path, settle: float) -> int | None:
    """How many requests reached the local app so far, after ``settle`` seconds for copies still on the way."""
    if app_pid is None:
        return None
    time.sleep(settle)
    count_file.unlink(missing_ok=True)
    os.kill(app_pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if count_file.exists():
            return int(count_file.read_text())
        time.sleep(0.01)
    return None


def _phase(host: str, cfg: dict, connections: int, seconds: float, cpus: set[int]) -> dict:
    if cfg["wrk"]:
        return _in_cpus(cpus, lambda: wrk(host, PORT, connections, seconds))
    return _client(host, {**cfg, "connections": connections, "seconds": seconds, "warmup": 0.0}, cpus)


def run_scenario(name: str, pod: Any, cfg: dict, pod_cpus: set[int], other_cpus: set[int], tmp: Path) -> dict:
    """One scenario: a saturating load (``connections`` keep-alive connections) for capacity, then a light one
    (one connection, requests back to back) for latency; copies counted after each."""
    session = None
    app_pid = None
    count_file = tmp / f"seen-{time.monotonic_ns()}"
    if name != "none":
        args = ["exec", "--target", f"pid/{pod.pid}"]
        if name == "filtered steal":
            conf = tmp / "filter.toml"
            conf.write_text(FILTER)
            args += ["--config", str(conf)]
        else:
            args += ["--incoming", name]
        errors = open(tmp / f"session-{time.monotonic_ns()}.log", "w+")  # a file: a full pipe would block the app
        session = subprocess.Popen(
            [*_mirror_py(), *args, "--", sys.executable, __file__, "_app", str(PORT), str(count_file)],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=str(ROOT),
            preexec_fn=lambda: os.sched_setaffinity(0, other_cpus), start_new_session=True)
        line = session.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY"):
            session.kill()
            session.wait()
            errors.seek(0)
            raise RuntimeError(f"{name}: the local app did not start: {errors.read()[-3000:]}")
        app_pid = int(line.split()[1])
        session_socket = line.split()[2]
        time.sleep(0.5)
    pids = _pod_pids(pod.netns)
    _pin(pids, pod_cpus)  # the agent joined the pod: it runs on the pod's CPU
    _boost(pids)
    probe = _client(pod.ip, {**cfg, "connections": 2, "seconds": 0.3, "warmup": 0.0}, other_cpus)
    _phase(pod.ip, cfg, cfg["connections"], cfg["warmup"], other_cpus)
    seen0 = _app_count(app_pid, count_file, 1.0)
    cpu_before = _cpu_seconds(pids)
    result = _phase(pod.ip, cfg, cfg["connections"], cfg["seconds"], other_cpus)
    cpu = _cpu_seconds(_pod_pids(pod.netns)) - cpu_before
    seen1 = _app_count(app_pid, count_file, 2.0)
    light = _phase(pod.ip, cfg, 1, cfg["light_seconds"], other_cpus)
    seen2 = _app_count(app_pid, count_file, 1.0)
    result["light_p50_ms"], result["light_p99_ms"], result["light_requests"] = (
        light["p50_ms"], light["p99_ms"], light["requests"])
    result["servers"] = probe["servers"]
    result["errors"] += probe["errors"] + light["errors"]
    result["pod_cpu_s_per_1000"] = cpu / result["requests"] * 1000 if result["requests"] else float("nan")
    result["pod_cpu_busy"] = cpu / cfg["seconds"]
    if seen0 is not None and seen1 is not None and seen2 is not None:
        result["app_saw_saturating"] = seen1 - seen0
        result["app_saw_light"] = seen2 - seen1
    if session is not None:
        result["agent"] = _agent_stats(session_socket)
        session.send_signal(signal.SIGTERM)
        try:
            session.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(session.pid, signal.SIGKILL)
            session.communicate()
        errors.seek(0)
        result["session_stderr"] = errors.read()[-2000:]
        errors.close()
    return result


def _in_cpus(cpus: set[int], fn: Any) -> Any:
    """Runs ``fn`` with this process (and the child it starts) on ``cpus``."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, before)


def _client(host: str, cfg: dict, cpus: set[int]) -> dict:
    load = subprocess.run([sys.executable, __file__, "_load", host, str(PORT), str(cfg["connections"]),
                           str(cfg["seconds"]), str(cfg["warmup"])], capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus), timeout=600)
    if load.returncode != 0:
        raise RuntimeError(f"the load generator failed: {load.stderr[-3000:]}")
    return json.loads(load.stdout.strip().splitlines()[-1])


def _copies(result: dict) -> str:
    if "app_saw_saturating" not in result:
        return ""
    agent = result.get("agent") or {}
    where = ""
    if agent.get("mode") == "mirror":
        where = (f"; agent: {agent.get('packets', 0):,} packets captured, {agent.get('dropped', 0):,} dropped by "
                 f"the kernel, {agent.get('lost', 0):,} copies given up")
    return (f"; the app saw {result['app_saw_saturating']:,} of {result['requests']:,} (saturating), "
            f"{result['app_saw_light']:,} of {result['light_requests']:,} (light){where}")


def _copy_share(runs: list[dict], kind: str) -> str:
    counted = [r for r in runs if f"app_saw_{kind}" in r]
    if not counted:
        return "not counted"
    seen = sum(r[f"app_saw_{kind}"] for r in counted)
    sent = sum(r["requests"] if kind == "saturating" else r["light_requests"] for r in counted)
    return f"{seen / sent:.0%} of {sent:,}" if sent else "-"


def check(name: str, result: dict) -> str | None:
    servers = result["servers"]
    expected = {"none": "pod", "mirror": "pod", "steal": "local", "filtered steal": "pod"}[name]
    if set(servers) != {expected}:
        return f"{name}: answered by {servers}, expected only {expected!r}"
    if result["errors"]:
        return f"{name}: {result['errors']} client errors"
    return None


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_load"]:
        load_main(argv[1:])
        return 0
    if argv[:1] == ["_app"]:
        app_main(argv[1:])
        return 0
    if argv[:1] == ["_server"]:
        server_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, one repeat")
    parser.add_argument("--seconds", type=float, help="measured seconds per run")
    parser.add_argument("--connections", type=int, help="concurrent keep-alive client connections")
    parser.add_argument("--repeat", type=int, help="runs per scenario; figures are medians")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    parser.add_argument("--python-client", action="store_true", help="use the Python load client even with wrk")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/incoming.py builds network namespaces and must run as root", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from core import machine  # the same machine description as the core benchmark

    from tests.sandbox.netpod import Network, PodSpec

    cfg = dict(QUICK if args.quick else FULL)
    cfg["wrk"] = shutil.which("wrk") is not None and not args.python_client
    for key in ("seconds", "connections", "repeat"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cpus = sorted(os.sched_getaffinity(0))
    pod_cpus = {cpus[0]}
    other_cpus = set(cpus[1:]) or pod_cpus
    info = machine()
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in SCENARIOS}
    problems: list[str] = []
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with Network.create() as net, tempfile.TemporaryDirectory() as tmp:
        pod = net.add_pod(PodSpec(name="bench", servers=False))
        service = pod.run([sys.executable, __file__, "_server", str(PORT)], stdout=subprocess.PIPE,
                          preexec_fn=lambda: os.sched_setaffinity(0, pod_cpus))
        if not service.stdout.readline().startswith(b"READY"):  # type: ignore[union-attr]
            raise RuntimeError("the pod's service did not start")
        _pin(_pod_pids(pod.netns), pod_cpus)
        _boost([os.getpid()])  # the load generator is this process's child
        log(f"pod ready: ip {pod.ip}; pod on CPU {sorted(pod_cpus)}, clients and session on {sorted(other_cpus)}")
        run_scenario("none", pod, {**cfg, "seconds": 1.0, "warmup": 1.0}, pod_cpus, other_cpus, Path(tmp))  # warm
        for rep in range(cfg["repeat"]):
            order = SCENARIOS if rep % 2 == 0 else tuple(reversed(SCENARIOS))
            for name in order:
                result = run_scenario(name, pod, cfg, pod_cpus, other_cpus, Path(tmp))
                runs[name].append(result)
                problem = check(name, result)
                if problem:
                    problems.append(problem)
                log(f"{name:14} run {rep + 1}/{cfg['repeat']}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} "
                    f"ms, p99 {result['p99_ms']:.2f} ms, pod CPU {result['pod_cpu_s_per_1000']:.3f} s/1000 req "
                    f"(busy {result['pod_cpu_busy']:.0%}); 1 connection: p50 {result['light_p50_ms']:.3f} ms, "
                    f"p99 {result['light_p99_ms']:.3f} ms" + _copies(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg, "machine": info, "runs": runs}, indent=1) + "\n")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = {key: med("none", key) for key in ("rps", "p50_ms", "p99_ms", "pod_cpu_s_per_1000", "light_p50_ms",
                                               "light_p99_ms")}
    print(f"## mirror-py incoming benchmark, {datetime.date.today().isoformat()} "
          f"({'--quick' if args.quick else 'full'} mode)")
    print()
    print(f"- CPU: {info['cpu']}, {info['cores']}; the pod (service + agent) pinned to CPU {sorted(pod_cpus)}; "
          f"load generator, session and local app on {sorted(other_cpus)}; the pod's processes and the load "
          f"generator at nice {BOOST}, above the session and the local app (they stand for the laptop, another "
          "machine) and other work on the machine; a mirroring agent keeps the idle class it chooses")
    end_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"- Memory: {info['memory']}; load average (1/5/15 min) at start: {info['load']}, at end: {end_load}")
    print(f"- Python: {info['python']}; kernel: {info['kernel']}")
    client = "wrk (one thread)" if cfg["wrk"] else "a Python asyncio client"
    print(f"- Load: {client} in the host's network namespace against the pod IP. Saturating: {cfg['connections']} "
          f"keep-alive connections, requests back to back for {cfg['seconds']:g} s after {cfg['warmup']:g} s warm-up. "
          f"Light: one connection for {cfg['light_seconds']:g} s. Median of {cfg['repeat']} runs per scenario, "
          "scenarios alternating")
    print()
    print("| Scenario | Requests/s | vs none | p50 (ms) | p99 (ms) | Pod CPU busy | Pod CPU s / 1,000 req | "
          "1 conn p50 (ms) | 1 conn p99 (ms) | Copies at the app (saturating; light) | Answered by |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name in SCENARIOS:
        rps = med(name, "rps")
        answered = ", ".join(sorted({s for r in runs[name] for s in r["servers"]}))
        copies = "-"
        if name == "mirror":
            copies = "; ".join(_copy_share(runs[name], kind) for kind in ("saturating", "light"))
        print(f"| {name} | {rps:,.0f} | {rps / base['rps'] - 1:+.1%} | {med(name, 'p50_ms'):.2f} | "
              f"{med(name, 'p99_ms'):.2f} | {med(name, 'pod_cpu_busy'):.0%} | {med(name, 'pod_cpu_s_per_1000'):.4f} | "
              f"{med(name, 'light_p50_ms'):.3f} | "
              f"{med(name, 'light_p99_ms'):.3f} | {copies} | {answered} |")
    print()
    loss = 1 - med("mirror", "rps") / base["rps"]
    print(f"Aim: mirroring costs the target < {AIM_MIRROR_CAPACITY_LOSS:.0%} of its capacity: "
          f"{'met' if loss < AIM_MIRROR_CAPACITY_LOSS else '**not met**'} (saturating requests/s {-loss:+.1%}; "
          f"light p50 {med('mirror', 'light_p50_ms') - base['light_p50_ms']:+.3f} ms, "
          f"p99 {med('mirror', 'light_p99_ms') - base['light_p99_ms']:+.3f} ms).")
    print()
    print("Per-run requests/s: " + "; ".join(
        f"{name}: " + ", ".join(f"{r['rps']:,.0f}" for r in runs[name]) for name in SCENARIOS) + ".")
    print()
    print(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
