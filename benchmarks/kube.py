"""mirror-py on Kubernetes: session start per agent mode, and the exec websocket channel against the local one.

Run as root from anywhere (it starts its own sandbox cluster from ``examples/k8s/sandbox.yaml`` plus a
``bench`` pod defined below, and removes everything after):

    .venv/bin/python benchmarks/kube.py            # full run, about 70 seconds
    .venv/bin/python benchmarks/kube.py --quick    # smaller counts, about 30 seconds

Session start: wall time from starting ``mirror-py exec --target deploy/api --agent-mode MODE -- python -c
"print(1)"`` until the app's first stdout line arrives, and until the process has exited, for the agent
modes exec, ephemeral and job; the same command with ``--target pid/<api container pid>`` (the agent reached
through local pipes instead of the API server) is the baseline, and plain ``python -c "print(1)"`` the
reference.

Channel: the same client code (``benchmarks/clients.py``, plus the ``source`` client below) run three ways
against the ``bench`` pod's IP: directly from the host (no mirror-py), through mirror-py with the agent
reached over the exec websocket (``--target deploy/api --agent-mode exec``) and through mirror-py with the
agent reached over local pipes (``--target pid/<the same api pod>``).  Both mirror-py runs put the agent in
the same pod's network namespace, so the only difference is the channel.  Each figure is a median; the runs
of the three ways alternate.

The sandbox API server runs in this process (a background thread), so the script also records that thread's
CPU time during every websocket run: it relays every byte of the channel.

Prints the machine, then a markdown table (stdout); progress goes to stderr.  ``--json FILE`` keeps every raw
result.  ``kube.py source HOST PORT MIB`` is the download client that the benchmark runs itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "benchmarks" / "clients.py"
MANIFEST = ROOT / "examples" / "k8s" / "sandbox.yaml"
SERVERS = ROOT / "tests" / "sandbox" / "servers.py"
NAMESPACE = "staging"
ECHO_PORT, SINK_PORT, SOURCE_PORT = 7000, 7001, 7002
MODES = ("exec", "ephemeral", "job")
CHANNELS = ("direct", "local", "websocket")

FULL = {"start_runs": 5, "mib": 256, "rtt": 10_000, "rtt_warmup": 1_000, "repeat": 3}
QUICK = {"start_runs": 2, "mib": 64, "rtt": 2_000, "rtt_warmup": 200, "repeat": 1}

BLOCK = 1 << 20
PATTERN = bytes(range(256)) * (BLOCK // 256)  # what the source server sends, over and over

# The download server in the bench pod: reads "N\n", sends N bytes of PATTERN, closes.
SOURCE_SERVER = (
    "import socket, threading\n"
    "block = memoryview(bytes(range(256)) * 4096)\n"
    "def serve(conn):\n"
    "    try:\n"
    "        with conn:\n"
    "            n = int(conn.makefile('rb').readline())\n"
    "            while n > 0:\n"
    "                k = min(n, len(block))\n"
    "                conn.sendall(block[:k])\n"
    "                n -= k\n"
    "    except (OSError, ValueError):\n"
    "        pass\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {SOURCE_PORT}))\n"
    "s.listen(64)\n"
    "while True:\n"
    "    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()\n"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_manifest() -> str:
    """examples/k8s/sandbox.yaml plus a ``bench`` Deployment (echo, sink, source) and its Service."""

    def container(name: str, port: int, command: list[str]) -> dict[str, Any]:
        return {"name": name, "image": "python:3.12-slim", "command": command,
                "ports": [{"containerPort": port}], "readinessProbe": {"tcpSocket": {"port": port}}}

    labels = {"app": "bench"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench", "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     container("echo", ECHO_PORT, ["python3", str(SERVERS), "tcp-echo", "--bind",
                                                   f"0.0.0.0:{ECHO_PORT}"]),
                     container("sink", SINK_PORT, ["python3", str(SERVERS), "tcp-sink", "--bind",
                                                   f"0.0.0.0:{SINK_PORT}"]),
                     container("source", SOURCE_PORT, ["python3", "-c", SOURCE_SERVER]),
                 ]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench", "namespace": NAMESPACE},
        "spec": {"selector": labels, "ports": [{"name": f"p{p}", "port": p, "targetPort": p}
                                                for p in (ECHO_PORT, SINK_PORT, SOURCE_PORT)]},
    }
    # JSON is YAML: no quoting trouble with the inline server.
    return MANIFEST.read_text() + "".join(f"\n---\n{json.dumps(doc)}\n" for doc in (deployment, service))


# ------------------------------------------------------------------------------------------ source client


def source_client(host: str, port: str, mib: str) -> dict[str, Any]:
    """Download ``mib`` MiB on one TCP stream; MB/s from before connect() until the server's EOF."""
    total = int(mib) * BLOCK
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    start = time.perf_counter()
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(f"{total}\n".encode())
    got = 0
    head = b""
    tail = b""
    while True:
        n = s.recv_into(view)
        if not n:
            break
        if got < 4096:
            head += bytes(view[: min(n, 4096 - got)])
        tail = (tail + bytes(view[max(0, n - 4096) : n]))[-4096:]
        got += n
    elapsed = time.perf_counter() - start
    s.close()
    # TCP guarantees the bytes in between; the count and both ends show the stream was neither cut nor mixed.
    if got != total or head != PATTERN[: len(head)] or tail != PATTERN[-len(tail):]:
        raise RuntimeError(f"source sent {got} bytes (expected {total}) or a wrong pattern")
    return {"bytes": got, "seconds": elapsed, "mb_per_s": got / elapsed / 1e6, "verified": True}


def source_main(argv: Sequence[str]) -> int:
    result = source_client(*argv)
    shim = sys.modules.get("mirror_py.shim")
    result["shim_active"] = bool(shim is not None and shim.active())
    print(json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ runs


class Bench:
    """The running cluster and how to reach the api pod each way."""

    def __init__(self, cluster: Any) -> None:
        from core import mirror_py_command

        self.cluster = cluster
        self.api_pod = cluster.pod_names(NAMESPACE, "api-")[0]
        self.api_pid = cluster.container_pid(self.api_pod, "app", NAMESPACE)
        self.bench_ip = cluster.pod(cluster.pod_names(NAMESPACE, "bench-")[0], NAMESPACE).ip
        self.env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
        self.mirror = mirror_py_command()
        thread = cluster.apiserver._thread
        self.apiserver_tid: int | None = getattr(thread, "native_id", None)

    def prefix(self, how: str) -> list[str]:
        """mirror-py's part of a command line: a Kubernetes agent mode, ``local`` (pid/), or nothing."""
        if how == "direct":
            return []
        if how == "local":
            return [*self.mirror, "exec", "--target", f"pid/{self.api_pid}", "--"]
        mode = "exec" if how == "websocket" else how
        return [*self.mirror, "exec", "--target", "deploy/api", "-n", NAMESPACE, "--agent-mode", mode, "--"]

    def apiserver_cpu(self) -> float:
        """CPU seconds used so far by the sandbox API server's thread (it relays every exec stream)."""
        if self.apiserver_tid is None:
            return float("nan")
        try:
            fields = Path(f"/proc/self/task/{self.apiserver_tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def timed_start(self, how: str) -> dict[str, float]:
        """Seconds from starting the command to: the target line, the agent line, the first stdout line, exit."""
        cmd = [*self.prefix(how), sys.executable, "-c", "print(1)"]
        marks: dict[str, float] = {}
        errors: list[bytes] = []
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=str(ROOT))
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                now = time.perf_counter() - start
                errors.append(line)
                if line.startswith(b"mirror-py: target "):
                    marks.setdefault("target", now)
                elif line.startswith(b"mirror-py: agent ready"):
                    marks.setdefault("agent", now)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        assert proc.stdout is not None
        first = proc.stdout.readline()
        marks["first_line"] = time.perf_counter() - start
        proc.stdout.read()
        code = proc.wait()
        marks["exit"] = time.perf_counter() - start
        watchdog.cancel()
        reader.join(10)
        if code != 0 or first.strip() != b"1":
            raise RuntimeError(f"{how}: exit {code}, first line {first!r}:\n{b''.join(errors).decode()[-3000:]}")
        return marks

    def client(self, how: str, args: Sequence[str]) -> dict[str, Any]:
        """One fresh client process; its JSON result plus the wall time and the API server's CPU during it."""
        script = [str(Path(__file__).resolve())] if args[0] == "source" else [str(CLIENTS)]
        cmd = [*self.prefix(how), sys.executable, *script, *args]
        cpu0, start = self.apiserver_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=self.env, cwd=str(ROOT),
                              stdin=subprocess.DEVNULL)
        wall, cpu = time.perf_counter() - start, self.apiserver_cpu() - cpu0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{how} client {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1])
        if result.get("shim_active") != (how != "direct"):
            raise RuntimeError(f"{how} client ran with shim_active={result.get('shim_active')}")
        result["process_s"] = wall
        result["apiserver_cpu_s"] = cpu
        return result


def start_benchmark(bench: Bench, runs: int, raw: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    ways = ("direct", "local", *MODES)
    for how in ways:  # untimed: page cache, .pyc files, first use of each code path
        bench.timed_start(how)
    samples: dict[str, dict[str, list[float]]] = {how: {} for how in ways}
    for i in range(runs):
        order = ways[i % len(ways):] + ways[: i % len(ways)]
        for how in order:
            marks = bench.timed_start(how)
            for key, value in marks.items():
                samples[how].setdefault(key, []).append(value)
            log(f"start {how:9} run {i + 1}/{runs}: first line {marks['first_line'] * 1000:.0f} ms, "
                f"exit {marks['exit'] * 1000:.0f} ms")
    raw["start"] = samples
    return samples


def channel_benchmark(bench: Bench, cfg: dict[str, int], raw: dict[str, Any]) -> dict[str, Any]:
    ip = bench.bench_ip
    for how in CHANNELS:  # untimed warm-up of each path
        bench.client(how, ["sink", ip, str(SINK_PORT), "8"])
    kinds = {
        "sink": ["sink", ip, str(SINK_PORT), str(cfg["mib"])],
        "source": ["source", ip, str(SOURCE_PORT), str(cfg["mib"])],
        "rtt": ["rtt", ip, str(ECHO_PORT), str(cfg["rtt"]), str(cfg["rtt_warmup"])],
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {h: [] for h in CHANNELS} for k in kinds}
    for kind, args in kinds.items():
        for rep in range(cfg["repeat"]):
            order = CHANNELS[rep % 3:] + CHANNELS[: rep % 3]
            for how in order:
                result = bench.client(how, args)
                runs[kind][how].append(result)
                shown = ", ".join(f"{k}={v:.1f}" for k, v in result.items()
                                  if k in ("mb_per_s", "p50_us", "p99_us", "apiserver_cpu_s", "process_s"))
                log(f"{kind:6} {how:9} run {rep + 1}/{cfg['repeat']}: {shown}")
    raw["channel"] = runs
    return runs


RESOLVE_PROBE = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import mirror_py.cli\n"
    "from mirror_py.kube import api, targets\n"
    "t1 = time.perf_counter()\n"
    "kube = api.load(None, None, sys.argv[1])\n"
    "t2 = time.perf_counter()\n"
    "ref = targets.parse('deploy/api')\n"
    "targets.resolve(kube, ref)\n"
    "t3 = time.perf_counter()\n"
    "targets.resolve(kube, ref)\n"
    "t4 = time.perf_counter()\n"
    "print(json.dumps({'import': t1 - t0, 'kubeconfig': t2 - t1, 'first_resolve': t3 - t2, "
    "'second_resolve': t4 - t3}))\n"
)


def resolve_probe(bench: Bench, runs: int) -> dict[str, float] | None:
    """Seconds mirror-py spends before it can start any agent, in a fresh interpreter: importing the CLI, loading
    the kubeconfig, and resolving deploy/api (the same two API requests, first and second time)."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", RESOLVE_PROBE, NAMESPACE], capture_output=True, text=True,
                              timeout=120, env=bench.env, cwd=str(ROOT), stdin=subprocess.DEVNULL)
        if proc.returncode != 0:  # internals of mirror-py; the benchmark does not depend on them
            log(f"resolve probe skipped: {proc.stderr.strip()[-500:]}")
            return None
        for key, value in json.loads(proc.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def frame_decode_ceiling() -> float | None:
    """MB/s at which the sandbox API server's websocket reader decodes masked client frames, on one core.

    The client side of the exec websocket must mask every frame (RFC 6455); the sandbox server unmasks in pure
    Python.  Four 256 KiB frames, the size mirror-py sends, through the server's own reader.
    """
    try:
        from tests.sandbox.apiserver import WebSocket
    except ImportError:
        return None
    payload = os.urandom(256 * 1024)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    frame = bytes((0x82, 0x80 | 127)) + len(payload).to_bytes(8, "big") + mask + masked

    async def decode() -> float:
        reader = asyncio.StreamReader()
        for _ in range(4):
            reader.feed_data(frame)
        reader.feed_eof()
        ws = WebSocket(reader, None, b"")  # type: ignore[arg-type]  # never writes for data frames
        start = time.perf_counter()
        for _ in range(4):
            _, data = await ws.read_message()
            if data != payload:
                raise RuntimeError("frame decoded wrongly")
        return 4 * len(payload) / (time.perf_counter() - start) / 1e6

    try:
        return asyncio.run(decode())
    except Exception as exc:  # an internal of the sandbox; the benchmark does not depend on it
        log(f"frame decode measurement skipped: {exc!r}")
        return None


# ------------------------------------------------------------------------------------------------ table


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def table(cfg: dict[str, int], start: dict[str, dict[str, list[float]]],
          chan: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    rows: list[tuple[str, str, str, str, str]] = []
    direct_first = _med(start["direct"]["first_line"]) * 1000
    direct_exit = _med(start["direct"]["exit"]) * 1000
    local_first = _med(start["local"]["first_line"]) * 1000
    local_exit = _med(start["local"]["exit"]) * 1000
    for mode in MODES:
        first = _med(start[mode]["first_line"]) * 1000
        rows.append((f"Session start to the app's first line, `--agent-mode {mode}` (ms)", _num(direct_first),
                     _num(local_first), _num(first), f"{first / local_first:.1f}x"))
    for mode in MODES:
        total = _med(start[mode]["exit"]) * 1000
        rows.append((f"Session total process time, `--agent-mode {mode}` (ms)", _num(direct_exit),
                     _num(local_exit), _num(total), f"{total / local_exit:.1f}x"))

    def med(kind: str, how: str, key: str) -> float:
        return _med([float(r[key]) for r in chan[kind][how]])

    for kind, label in (("sink", f"Throughput, 1 TCP stream, {cfg['mib']} MiB to the sink in the pod (MB/s)"),
                        ("source", f"Download, 1 TCP stream, {cfg['mib']} MiB from a source in the pod (MB/s)")):
        d, loc, ws = (med(kind, h, "mb_per_s") for h in CHANNELS)
        rows.append((label, _num(d), _num(loc), _num(ws, 1 if ws < 100 else 0), f"{ws / loc:.2f}x"))
    for pct in ("50", "99"):
        d, loc, ws = (med("rtt", h, f"p{pct}_us") for h in CHANNELS)
        rows.append((f"1-byte round trip p{pct}, echo in the pod (us)", _num(d, 1), _num(loc, 1), _num(ws, 1),
                     f"{ws / loc:.1f}x"))

    head = ("Measurement", "Direct (no mirror-py)", "Local channel (`pid/`)", "Websocket channel (exec stream)",
            "Ratio websocket / local")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {d} | {loc} | {ws} | {ratio} |" for name, d, loc, ws, ratio in rows]
    return lines


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "source":
        return source_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a quick sanity run)")
    parser.add_argument("--start-runs", type=int, help="timed session starts per agent mode")
    parser.add_argument("--mib", type=int, help="MiB per throughput stream")
    parser.add_argument("--rtt", type=int, help="timed 1-byte round trips per run")
    parser.add_argument("--repeat", type=int, help="client runs per channel; figures are medians over them")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("benchmarks/kube.py starts a sandbox cluster (namespaces, cgroups) and must run as root",
              file=sys.stderr)
        return 2
    for path in (str(ROOT), str(ROOT / "benchmarks")):
        if path not in sys.path:
            sys.path.insert(0, path)  # tests.sandbox, and core's helpers
    from core import machine, machine_lines

    from tests.sandbox.cluster import Cluster

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("start_runs", "mib", "rtt", "repeat"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["rtt_warmup"] = min(cfg["rtt_warmup"], cfg["rtt"])

    info = machine()
    began = time.perf_counter()
    raw: dict[str, Any] = {"config": cfg, "machine": info}
    try:
        log("starting the sandbox cluster (examples/k8s/sandbox.yaml + the bench pod)")
        with Cluster.start(bench_manifest()) as cluster:
            bench = Bench(cluster)
            log(f"cluster up in {time.perf_counter() - began:.1f} s: api pod {bench.api_pod} (container pid "
                f"{bench.api_pid}), bench pod IP {bench.bench_ip}")
            start = start_benchmark(bench, cfg["start_runs"], raw)
            chan = channel_benchmark(bench, cfg, raw)
            probe = resolve_probe(bench, cfg["start_runs"])
            raw["resolve_probe"] = probe
            api_pod, bench_ip = bench.api_pod, bench.bench_ip
        ceiling = frame_decode_ceiling()
        raw["frame_decode_mb_s"] = ceiling
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str) + "\n")

    today = datetime.date.today().isoformat()
    print(f"## mirror-py Kubernetes benchmark, {today} ({'--quick' if args.quick else 'full'} mode)")
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Sandbox cluster: api pod {api_pod}; bench pod IP {bench_ip} (echo :{ECHO_PORT}, sink :{SINK_PORT}, "
          f"source :{SOURCE_PORT}); websocket = `--target deploy/api --agent-mode exec`, local = "
          f"`--target pid/<api container pid>`")
    print(f"- Session start: median of {cfg['start_runs']} runs per way after one untimed run each; channel "
          f"figures: median of {cfg['repeat']} run(s) per channel, {cfg['rtt']:,} round trips after "
          f"{cfg['rtt_warmup']:,} warm-up")
    print()
    for line in table(cfg, start, chan):
        print(line)
    print()
    print("Where the session start goes (medians, ms from the start of the command: target resolved / agent "
          "ready / app's first line / exit):")
    print()
    for how in ("local", *MODES):
        marks = start[how]
        cells = [_num(_med(marks[k]) * 1000) if k in marks else "-" for k in ("target", "agent", "first_line", "exit")]
        print(f"- {how}: {' / '.join(cells)}")
    if probe is not None:
        print(f"- before any agent starts, in a fresh interpreter: import the CLI {probe['import'] * 1000:.0f} ms, "
              f"load the kubeconfig {probe['kubeconfig'] * 1000:.0f} ms, resolve deploy/api to a pod "
              f"{probe['first_resolve'] * 1000:.0f} ms the first time and {probe['second_resolve'] * 1000:.0f} ms "
              "the second (same requests; the second reuses the first's connection)")
    print()
    print("Sandbox API server thread CPU during the websocket runs (it relays every byte; medians, whole "
          "mirror-py process):")
    print()
    for kind in ("sink", "source", "rtt"):
        ws = chan[kind]["websocket"]
        cpu, wall = _med([r["apiserver_cpu_s"] for r in ws]), _med([r["process_s"] for r in ws])
        extra = ""
        if kind == "rtt":  # an upper bound: the session's start-up is in it too
            extra = f"; at most {cpu / (cfg['rtt'] + cfg['rtt_warmup']) * 1e6:.0f} us per round trip"
        print(f"- {kind}: {cpu:.1f} s CPU in {wall:.1f} s ({cpu / wall:.0%} of one core){extra}")
    if ceiling is not None:
        print(f"- its websocket reader alone decodes masked 256 KiB client frames at {ceiling:.1f} MB/s on one core")
    print()
    print("Per-run values, direct | local | websocket:")
    print()
    for title, kind, key, digits in (("throughput MB/s", "sink", "mb_per_s", 0),
                                     ("download MB/s", "source", "mb_per_s", 0),
                                     ("round trip p50 us", "rtt", "p50_us", 1),
                                     ("round trip p99 us", "rtt", "p99_us", 1)):
        cells = [", ".join(_num(float(r[key]), digits) for r in chan[kind][h]) for h in CHANNELS]
        print(f"- {title}: {' | '.join(cells)}")
    for how in ("direct", "local", *MODES):
        print(f"- start to first line, {how} (ms): "
              + ", ".join(_num(v * 1000) for v in start[how]["first_line"]))
    print()
    print(f"Total benchmark time: {time.perf_counter() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
