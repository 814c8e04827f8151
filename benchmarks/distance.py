"""mirror-py at a distance: the same client operations in the pod and through mirror-py across a slow link.

A laptop is 20-100 ms from its cluster, and there mirror-py's costs are counted in round trips. This script
starts the sandbox cluster (``examples/k8s/sandbox.yaml``, the ``bench`` pod of ``benchmarks/kube.py`` and an
HTTP/1.1 ``web`` server),
then runs one client process two ways:

- **in the pod**: the client entered into the namespaces of the api pod's ``app`` container, where the app
  would run if it were deployed; the floor for every operation;
- **through mirror-py**: ``mirror-py exec --target deploy/api --agent-mode exec`` from a "laptop" network
  namespace whose only way out is a userspace delay link (``tests/sandbox/badlink.py``) of the chosen round-trip
  time, so the Kubernetes API calls and the exec websocket that carries every tunneled byte cross the link.

Run as root::

    .venv/bin/python benchmarks/distance.py                  # 0, 20 and 50 ms RTT, 3 runs each, ~5 minutes
    .venv/bin/python benchmarks/distance.py --quick          # 0 and 50 ms RTT, 1 run each, ~1 minute
    .venv/bin/python benchmarks/distance.py --rtt 0 --rtt 100 --repeat 2
    .venv/bin/python benchmarks/distance.py --quick --mirror-config off.toml   # A/B of a setting

Prints the machine and a markdown table (stdout): each operation in milliseconds, in RTT units (the figure
divided by the link's round-trip time) and as a ratio to the same operation in the pod. Progress goes to
stderr; ``--json FILE`` keeps every raw result. ``distance.py client`` is the client the script runs itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "staging"
REDIS = ("redis", 6379)
API_URL = "http://api:8000/app.yaml"
SOURCE = ("bench", 7002)  # benchmarks/kube.py's source server: "N\n" in, N bytes out
POSTGRES = ("postgres", 5432)  # examples/service/postgres.yaml: user app, trust authentication
KEEPALIVE = ("web", 8080)  # an HTTP/1.1 server defined below (the api's http.server closes every connection)
DOWNLOAD = 1 << 20
CONCURRENT = 20
SAMPLES = 20  # in-process samples of the per-request rows; the client reports their median
#: Ten small files of the target, each opened and read once (two of them twice: the pod has eight).
FILES = ("/etc/config/app.yaml", "/etc/secrets/API_TOKEN", "/etc/secrets/DATABASE_PASSWORD", "/etc/hostname",
         "/etc/hosts", "/etc/resolv.conf", "/etc/passwd", "/etc/group", "/etc/config/app.yaml",
         "/etc/secrets/API_TOKEN")

#: A tree of the target's own for the listing rows: the pod's /etc/ssl (a few directories, a few hundred
#: entries, most of them symlinks).
TREE = "/etc/ssl"

FULL = {"rtts": [0, 20, 50], "repeat": 3}
QUICK = {"rtts": [0, 50], "repeat": 1}

#: (key, label) of the table's rows, in order.
ROWS = (
    ("concurrent", f"{CONCURRENT} concurrent asyncio `open_connection` + one Redis PING each"),
    ("connect_one", "one asyncio `open_connection` to an address, then close (median)"),
    ("stall", "longest event-loop stall while one asyncio connect is in flight"),
    ("dns_again", "`getaddrinfo` of the same name again"),
    ("urlopen_again", "`urllib.request.urlopen` of the api service, second time"),
    ("redis_open", "a Redis PING on an open connection (median)"),
    ("http_keepalive", "an HTTP GET on a keep-alive connection (median)"),
    ("download", "a 1 MiB download (connect to EOF)"),
    ("files", "ten small remote files, open + read each (total)"),
    ("stat_again", "`os.stat` of the same remote file again"),
    ("scandir_stat", f"`os.scandir` + `entry.stat()` of `{TREE}/certs` (one directory)"),
    ("walk", f"`os.walk` of `{TREE}` (a tree of a few directories)"),
    ("postgres_connect", "asyncpg connect + first query (new connection)"),
    ("postgres_query", "a Postgres query through asyncpg on an open connection (median)"),
    ("start_exec", "session start to the app's first line, exec agent"),
    ("start_ephemeral", "session start to the app's first line, ephemeral agent"),
)
# An HTTP/1.1 server that keeps connections open: Python's http.server speaks HTTP/1.0 unless told otherwise.
WEB_SERVER = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    disable_nagle_algorithm = True  # headers and body go out as two writes\n"
    "    def do_GET(self):\n"
    "        body = b'greeting: hello from web\\n'\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    f"http.server.ThreadingHTTPServer(('0.0.0.0', {KEEPALIVE[1]}), H).serve_forever()\n"
)


def manifest() -> str:
    """benchmarks/kube.py's manifest (the sandbox plus the bench pod), the keep-alive ``web`` server and the
    service example's PostgreSQL."""
    from kube import bench_manifest

    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                     "name": "web", "image": "python:3.12-slim", "command": ["python3", "-c", WEB_SERVER],
                     "ports": [{"containerPort": KEEPALIVE[1]}],
                     "readinessProbe": {"tcpSocket": {"port": KEEPALIVE[1]}}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": labels, "ports": [{"port": KEEPALIVE[1], "targetPort": KEEPALIVE[1]}]}}
    postgres = (ROOT / "examples" / "service" / "postgres.yaml").read_text()
    return (bench_manifest() + "".join(f"\n---\n{json.dumps(doc)}\n" for doc in (deployment, service))
            + "\n---\n" + postgres)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ client


def _ms(seconds: float) -> float:
    return seconds * 1000.0


async def _ping_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"PING\r\n")
    await writer.drain()
    if await reader.readline() != b"+PONG\r\n":
        raise RuntimeError("redis answered PING with something else")


async def _concurrent_pings() -> float:
    async def one() -> None:
        reader, writer = await asyncio.open_connection(*REDIS)
        try:
            await _ping_over(reader, writer)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(CONCURRENT)))
    return _ms(time.perf_counter() - start)


async def _connect_one() -> float:
    """One connect at a time, by address (no lookup): what a connection pool's new connection costs."""
    host = socket.getaddrinfo(REDIS[0], REDIS[1], type=socket.SOCK_STREAM)[0][4][0]
    samples = []
    for i in range(SAMPLES + 1):
        start = time.perf_counter()
        _, writer = await asyncio.open_connection(host, REDIS[1])
        elapsed = time.perf_counter() - start
        writer.close()
        await writer.wait_closed()
        if i:
            samples.append(elapsed)
    return _ms(statistics.median(samples))


async def _stall_during_connect() -> float:
    """The longest lateness of a 1 ms ticker while one connect is in flight: what every other task of the app
    waits when a connect holds the event loop."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    worst = 0.0  # only what happens while the connect is in flight
    reader, writer = await asyncio.open_connection(*REDIS)
    done = True
    await tick
    await _ping_over(reader, writer)
    writer.close()
    return _ms(worst)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return _ms(time.perf_counter() - start)


def _redis_on_open_connection() -> float:
    with socket.create_connection(REDIS, timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        samples = []
        for i in range(SAMPLES + 1):
            start = time.perf_counter()
            s.sendall(b"PING\r\n")
            if f.readline() != b"+PONG\r\n":
                raise RuntimeError("redis answered PING with something else")
            if i:  # the first is a warm-up
                samples.append(time.perf_counter() - start)
    return _ms(statistics.median(samples))


def _http_keepalive() -> float:
    conn = http.client.HTTPConnection(*KEEPALIVE, timeout=60)
    samples = []
    for i in range(SAMPLES + 1):
        start = time.perf_counter()
        conn.request("GET", "/")
        answer = conn.getresponse()
        body = answer.read()
        if answer.will_close:
            raise RuntimeError("the keep-alive server closed the connection")
        if i:
            samples.append(time.perf_counter() - start)
        if b"greeting" not in body:
            raise RuntimeError(f"unexpected body from the api: {body[:80]!r}")
    conn.close()
    return _ms(statistics.median(samples))


def _download() -> float:
    start = time.perf_counter()
    with socket.create_connection(SOURCE, timeout=60) as s:
        s.sendall(f"{DOWNLOAD}\n".encode())
        got = 0
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
    elapsed = time.perf_counter() - start
    if got != DOWNLOAD:
        raise RuntimeError(f"the download gave {got} bytes, not {DOWNLOAD}")
    return _ms(elapsed)


def _read_files() -> float:
    start = time.perf_counter()
    for path in FILES:
        with open(path, "rb") as f:
            f.read()
    return _ms(time.perf_counter() - start)


def _scandir_stat() -> int:
    with os.scandir(TREE + "/certs") as entries:
        return sum(1 for entry in entries if entry.stat(follow_symlinks=False))


async def _postgres() -> dict[str, float]:
    """A new connection's start-up (TCP, startup message, trust authentication, parameters) and its first
    query, then the median of ``SAMPLES`` queries on that connection."""
    import asyncpg

    start = time.perf_counter()
    conn = await asyncpg.connect(host=POSTGRES[0], port=POSTGRES[1], user="app", database="postgres", timeout=60)
    try:
        if await conn.fetchval("SELECT 1") != 1:
            raise RuntimeError("postgres answered SELECT 1 with something else")
        connect = time.perf_counter() - start
        samples = []
        for i in range(SAMPLES + 1):
            start = time.perf_counter()
            if await conn.fetchval("SELECT $1::int + 1", i) != i + 1:
                raise RuntimeError("postgres answered a query with something else")
            if i:
                samples.append(time.perf_counter() - start)
    finally:
        await conn.close()
    return {"postgres_connect": _ms(connect), "postgres_query": _ms(statistics.median(samples))}


def _urlopen() -> None:
    with urllib.request.urlopen(API_URL, timeout=60) as answer:
        if b"greeting" not in answer.read():
            raise RuntimeError("unexpected body from the api")


def client() -> dict[str, Any]:
    """Every operation once, in an order where each "again" row follows its first time."""
    out: dict[str, Any] = {}
    socket.getaddrinfo(REDIS[0], REDIS[1], type=socket.SOCK_STREAM)  # the first lookup of the name
    out["dns_again"] = _timed(lambda: socket.getaddrinfo(REDIS[0], REDIS[1], type=socket.SOCK_STREAM))
    out["concurrent"] = asyncio.run(_concurrent_pings())
    out["connect_one"] = asyncio.run(_connect_one())
    out["stall"] = asyncio.run(_stall_during_connect())
    _urlopen()
    out["urlopen_again"] = _timed(_urlopen)
    out["redis_open"] = _redis_on_open_connection()
    out["http_keepalive"] = _http_keepalive()
    out["download"] = _download()
    out.update(asyncio.run(_postgres()))
    out["files"] = _read_files()
    os.stat(FILES[0])
    out["stat_again"] = _timed(lambda: os.stat(FILES[0]))
    out["scandir_stat"] = _timed(_scandir_stat)
    out["walk"] = _timed(lambda: sum(len(files) for _, _, files in os.walk(TREE)))
    shim = sys.modules.get("mirror_py.shim")
    out["shim_active"] = bool(shim is not None and shim.active())
    return out


# ------------------------------------------------------------------------------------------------- runs


class Distance:
    """The running cluster, the api pod's container to enter, and one delay link per RTT."""

    def __init__(self, cluster: Any, links: dict[int, Any], workdir: Path, config: str | None = None) -> None:
        from core import mirror_py_command

        self.cluster = cluster
        self.links = links
        self.config = ["--config", config] if config else []
        self.api_pod = cluster.pod_names(NAMESPACE, "api-")[0]
        self.api_pid = cluster.container_pid(self.api_pod, "app", NAMESPACE)
        self.mirror = mirror_py_command()
        kubeconfig = workdir / "kubeconfig"
        _kubeconfig_over_the_bridge(cluster, kubeconfig)
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.env.pop("MIRROR_PY_SESSION", None)

    def in_pod(self, argv: Sequence[str]) -> list[str]:
        """``argv`` in the api container's network, mount and UTS namespaces, from the repository."""
        return ["nsenter", "-t", str(self.api_pid), "-n", "-m", "-u", "--", "env", "-C", str(ROOT), "--", *argv]

    def through(self, rtt: int, argv: Sequence[str], mode: str = "exec") -> list[str]:
        """``argv`` under mirror-py, started in the laptop namespace behind the ``rtt`` link."""
        return self.links[rtt].argv([*self.mirror, "exec", *self.config, "--target", "deploy/api", "-n", NAMESPACE,
                                     "--agent-mode", mode, "--agent-startup-timeout", "60", "--", *argv])

    def client(self, cmd: list[str], want_shim: bool) -> dict[str, Any]:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=self.env, cwd=str(ROOT),
                              stdin=subprocess.DEVNULL)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"client exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1])
        if result.pop("shim_active") != want_shim:
            raise RuntimeError(f"the client ran with the shim {'off' if want_shim else 'on'}")
        return result

    def first_line(self, cmd: list[str]) -> float:
        """Milliseconds from starting ``cmd`` to its first stdout line (``python -c 'print(1)'`` at the end)."""
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=str(ROOT))
        watchdog = threading.Timer(180, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            elapsed = time.perf_counter() - start
            _, err = proc.communicate()
        finally:
            watchdog.cancel()
        if proc.returncode != 0 or first.strip() != b"1":
            raise RuntimeError(f"exit {proc.returncode}, first line {first!r}:\n{err.decode()[-3000:]}")
        return _ms(elapsed)


def _kubeconfig_over_the_bridge(cluster: Any, path: Path) -> None:
    """The cluster's kubeconfig with the server at the bridge address, which the laptop namespace reaches only
    across its link (the API server's certificate names that address too)."""
    import yaml

    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://{cluster.network.gateway}:{cluster.apiserver.port}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def run_all(d: Distance, rtts: Sequence[int], repeat: int, ephemeral: bool) -> dict[str, dict[str, list[float]]]:
    """samples[way][row] for way "pod" and "rtt<N>"; the ways alternate within each repetition."""
    me = str(Path(__file__).resolve())
    print1 = [sys.executable, "-c", "print(1)"]
    samples: dict[str, dict[str, list[float]]] = {"pod": {}, **{f"rtt{r}": {} for r in rtts}}

    def add(way: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            samples[way].setdefault(key, []).append(value)

    # Untimed: page cache, .pyc files, the first use of each code path on both sides.
    d.client(d.in_pod([sys.executable, me, "client"]), False)
    d.first_line(d.through(rtts[0], print1))
    for rep in range(repeat):
        add("pod", d.client(d.in_pod([sys.executable, me, "client"]), False))
        pod_start = d.first_line(d.in_pod(print1))
        add("pod", {"start_exec": pod_start, "start_ephemeral": pod_start})
        for rtt in rtts[rep % len(rtts):] + rtts[: rep % len(rtts)]:
            way = f"rtt{rtt}"
            add(way, d.client(d.through(rtt, [sys.executable, me, "client"]), True))
            add(way, {"start_exec": d.first_line(d.through(rtt, print1))})
            if ephemeral:
                add(way, {"start_ephemeral": d.first_line(d.through(rtt, print1, "ephemeral"))})
            got = samples[way]
            log(f"run {rep + 1}/{repeat} at {rtt} ms RTT: " + ", ".join(
                f"{key} {got[key][-1]:.0f}" for key, _ in ROWS if key in got))
    return samples


# ------------------------------------------------------------------------------------------------ table


def _fmt(ms: float) -> str:
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 1:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def table(samples: dict[str, dict[str, list[float]]], rtts: Sequence[int]) -> list[str]:
    head = ["Operation", "in the pod (ms)"]
    for rtt in rtts:
        head += [f"{rtt} ms RTT: mirror-py (ms)"] + ([f"{rtt} ms: in RTT"] if rtt else []) + [f"{rtt} ms: x pod"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label in ROWS:
        if key not in samples["pod"]:
            lines.append(f"| {label} | skipped |" + " - |" * (len(head) - 2))
            continue
        pod = statistics.median(samples["pod"][key])
        cells = [label, _fmt(pod)]
        for rtt in rtts:
            values = samples[f"rtt{rtt}"].get(key)
            if not values:
                cells += ["-"] * (3 if rtt else 2)
                continue
            ms = statistics.median(values)
            cells.append(_fmt(ms))
            if rtt:
                cells.append(f"{ms / rtt:.1f}")
            cells.append(f"{ms / pod:,.0f}x" if pod > 0 and ms / pod >= 10 else f"{ms / pod:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        print(json.dumps(client()), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0 and 50 ms RTT, one run each")
    parser.add_argument("--rtt", type=int, action="append", metavar="MS",
                        help="a round-trip time of the link in ms (repeatable; default 0, 20, 50)")
    parser.add_argument("--repeat", type=int, help="client runs per way; figures are medians over them")
    parser.add_argument("--no-ephemeral", action="store_true", help="skip the ephemeral agent's session start")
    parser.add_argument("--mirror-config", metavar="FILE", help="a mirror-py config file for the mirror-py runs")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.rtt:
        cfg["rtts"] = sorted(set(args.rtt))
    if args.repeat is not None:
        cfg["repeat"] = args.repeat
    bad = [r for r in cfg["rtts"] if not 0 <= r <= 2000]
    if bad or cfg["repeat"] < 1:
        parser.error("--rtt takes 0..2000 ms and --repeat at least 1")
    config = str(Path(args.mirror_config).resolve()) if args.mirror_config else None
    if config is not None and not os.path.isfile(config):
        parser.error(f"--mirror-config: no such file: {args.mirror_config}")
    if os.geteuid() != 0:
        print("benchmarks/distance.py starts a sandbox cluster and network namespaces and must run as root",
              file=sys.stderr)
        return 2
    for path in (str(ROOT), str(ROOT / "benchmarks")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import tempfile

    from core import machine, machine_lines

    from tests.sandbox.badlink import BadLink
    from tests.sandbox.cluster import Cluster

    info = machine()
    began = time.perf_counter()
    raw: dict[str, Any] = {"config": cfg, "machine": info}
    links: dict[int, Any] = {}
    try:
        log("starting the sandbox cluster (examples/k8s/sandbox.yaml + the bench pod)")
        with Cluster.start(manifest()) as cluster, tempfile.TemporaryDirectory() as tmp:
            for rtt in cfg["rtts"]:
                links[rtt] = BadLink(delay=rtt / 2000.0, loss=0.0).__enter__()
            d = Distance(cluster, links, Path(tmp), config)
            log(f"cluster up in {time.perf_counter() - began:.1f} s; api pod {d.api_pod}; links "
                + ", ".join(f"{r} ms RTT" for r in cfg["rtts"]))
            samples = run_all(d, cfg["rtts"], cfg["repeat"], not args.no_ephemeral)
            raw["samples"] = samples
    except RuntimeError as exc:  # a client or a session failed: what it said, not this script's traceback
        print(f"benchmarks/distance.py: a run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for link in links.values():
            link.close()
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str) + "\n")

    rtts = ", ".join(f"{r}" for r in cfg["rtts"])
    print(f"## mirror-py at a distance, {datetime.date.today().isoformat()} "
          f"({'--quick' if args.quick else 'full'} mode, {rtts} ms RTT, {cfg['repeat']} run(s) per way)")
    print()
    print("\n".join(machine_lines(info)))
    print(f"- In the pod: the client entered into the api pod's app container; through mirror-py: `mirror-py exec "
          f"--target deploy/api --agent-mode exec` from a laptop namespace behind a userspace delay link "
          f"(no loss). Median of {cfg['repeat']} client run(s) per way; per-request rows are the median of "
          f"{SAMPLES} requests in each run")
    if config:
        print(f"- mirror-py runs with `--config {args.mirror_config}`: " + Path(config).read_text().strip()
              .replace("\n", "; "))
    print()
    print("\n".join(table(samples, cfg["rtts"])))
    print()
    if args.no_ephemeral:
        print("- Ephemeral session start skipped (--no-ephemeral).")
    print("- Session start in the pod is plain `python -c 'print(1)'` there; the ratio is against that.")
    print()
    print(f"Total benchmark time: {time.perf_counter() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
