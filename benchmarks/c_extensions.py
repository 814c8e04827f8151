"""What the C-level layer costs: interpreter start-up, importing C extensions, and a connect made from C.

    .venv/bin/python benchmarks/c_extensions.py [--runs 30] [--connects 300]    (root: builds a sandbox pod)

Three tables, each measured in one run with its sides alternated:

- ``python -c pass`` with the shim's environment and the layer on, the layer off
  (``MIRROR_PY_INTERPOSE_C_EXTENSIONS=0``, which is the shim before the layer), and no shim;
- ``import psycopg2, grpc, uvloop`` with the shim and the layer on vs off (no session needed: importing
  makes no connection);
- connect latency to the pod's echo server, from C (libcurl's connect-only transfer, through pycurl) and
  from Python (``socket.create_connection``), directly and through ``mirror-py exec``;
- name lookup latency from c-ares (pycares, which sends its own DNS packets): directly to the pod's name
  server, and through ``mirror-py exec`` to this machine's name server, which the pod's resolver answers;
- a local file opened from C: ``sqlite3.connect`` of a database in the temporary directory, a ``SELECT`` and
  ``close``, with files in read mode and the layer on vs off (every open, stat and access libsqlite3 makes
  passes through the layer's hooks and is decided local).

Every figure is a median; the ratios are against the row's baseline. Results go to stdout as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHIM_DIR = ROOT / "sitecustomize_shim"

CONNECTS = r"""
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import pycurl
def c_connect():
    curl = pycurl.Curl()
    curl.setopt(pycurl.URL, f"http://{ip}:{port}/")
    curl.setopt(pycurl.CONNECT_ONLY, 1)
    curl.setopt(pycurl.FORBID_REUSE, 1)
    start = time.perf_counter()
    curl.perform()
    took = time.perf_counter() - start
    curl.close()
    return took
def py_connect():
    start = time.perf_counter()
    sock = socket.create_connection((ip, port), timeout=10)
    took = time.perf_counter() - start
    sock.close()
    return took
for fn in (c_connect, py_connect):
    for _ in range(20):
        fn()
out = {}
for name, fn in (("c", c_connect), ("python", py_connect)):
    samples = sorted(fn() for _ in range(n))
    out[name] = samples[len(samples) // 2] * 1e6
out["shim"] = "mirror_py.shim" in sys.modules and sys.modules["mirror_py.shim"].active()
print(json.dumps(out))
"""


FILE_OPENS = r"""
import json, os, sqlite3, sys, tempfile, time
n = int(sys.argv[1])
path = os.path.join(tempfile.mkdtemp(prefix="mirror-py-bench-"), "local.db")
conn = sqlite3.connect(path)
conn.execute("create table t (n)")
conn.commit()
conn.close()
def once():
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("select count(*) from t").fetchone()
    conn.close()
    return time.perf_counter() - start
for _ in range(20):
    once()
samples = sorted(once() for _ in range(n))
from mirror_py.shim import got
print(json.dumps({"us": samples[len(samples) // 2] * 1e6, "layer": got.is_active()}))
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          cwd=tempfile.gettempdir(), timeout=120)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return took


def _alternate(variants: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for argv, env in variants.values():
        _time(argv, env)  # warm-up: the .pyc files exist for every side
    names = list(variants)
    for i in range(runs):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(_time(*variants[name]))
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def local_benchmarks(runs: int) -> tuple[dict[str, float], dict[str, float]]:
    plain = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH") and not k.startswith(("MIRROR_PY_", "GRPC_"))}
    with tempfile.TemporaryDirectory(prefix="mirror-py-bench-") as tmp:
        shim = dict(plain, PYTHONPATH=str(SHIM_DIR), MIRROR_PY_SESSION=os.path.join(tmp, "none.sock"),
                    MIRROR_PY_SHIM_LIB=str(ROOT), MIRROR_PY_SHIM_SETTINGS="{}")
        on = dict(shim, MIRROR_PY_INTERPOSE_C_EXTENSIONS="1")
        off = dict(shim, MIRROR_PY_INTERPOSE_C_EXTENSIONS="0")
        check = [sys.executable, "-c", "import sys, psycopg2; from mirror_py.shim import got; "
                 "assert got.is_active() == (sys.argv[1] == 'on'), sys.argv[1]"]
        _time([*check, "on"], on)
        _time([*check, "off"], off)
        log(f"start-up: {runs} runs per side")
        start = _alternate({"no shim": ([sys.executable, "-c", "pass"], plain),
                            "layer off": ([sys.executable, "-c", "pass"], off),
                            "layer on": ([sys.executable, "-c", "pass"], on)}, runs)
        code = [sys.executable, "-c", "import psycopg2, grpc, uvloop"]
        log(f"imports: {runs} runs per side")
        imports = _alternate({"no shim": (code, plain), "layer off": (code, off), "layer on": (code, on)}, runs)
    return start, imports


def file_open_benchmark(runs: int, opens: int) -> dict[str, float]:
    """Median over ``runs`` processes per side of each process's median sqlite3 open+select+close of a local
    database, files in read mode, layer on vs off (sides alternated)."""
    plain = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH") and not k.startswith(("MIRROR_PY_", "GRPC_"))}
    out: dict[str, list[float]] = {"layer off": [], "layer on": []}
    with tempfile.TemporaryDirectory(prefix="mirror-py-bench-") as tmp:
        shim = dict(plain, PYTHONPATH=str(SHIM_DIR), MIRROR_PY_SESSION=os.path.join(tmp, "none.sock"),
                    MIRROR_PY_SHIM_LIB=str(ROOT), MIRROR_PY_SHIM_SETTINGS='{"fs": {"mode": "read"}}')
        sides = {"layer off": dict(shim, MIRROR_PY_INTERPOSE_C_EXTENSIONS="0"),
                 "layer on": dict(shim, MIRROR_PY_INTERPOSE_C_EXTENSIONS="1")}
        log(f"local file opens from C: {runs} runs per side, {opens} opens each")
        for i in range(runs):
            for name in list(sides) if i % 2 == 0 else reversed(list(sides)):
                proc = subprocess.run([sys.executable, "-c", FILE_OPENS, str(opens)], env=sides[name],
                                      capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-2000:]}")
                result = json.loads(lines[-1])
                if result["layer"] != (name == "layer on"):
                    raise RuntimeError(f"{name}: the layer's state is not what the side says")
                out[name].append(result["us"])
    return {name: statistics.median(values) for name, values in out.items()}


LOOKUPS = r"""
import json, sys, threading, time
import pycares
server, n = sys.argv[1], int(sys.argv[2])
channel = pycares.Channel(servers=[server], timeout=5.0, tries=2)
def lookup(name):
    done, box = threading.Event(), {}
    def callback(result, error):
        box["error"] = error
        done.set()
    start = time.perf_counter()
    channel.query(name, pycares.QUERY_TYPE_A, callback=callback)
    done.wait(10)
    took = time.perf_counter() - start
    if box.get("error", "timeout"):
        raise SystemExit(f"lookup of {name} failed: {box.get('error', 'no answer in 10 s')}")
    return took
for i in range(10):
    lookup(f"warm{i}.bench.cluster.local")
samples = sorted(lookup(f"name{i}.bench.cluster.local") for i in range(n))  # each name once: no cache hit
out = {"c-ares": samples[len(samples) // 2] * 1e6}
out["shim"] = "mirror_py.shim" in sys.modules and sys.modules["mirror_py.shim"].active()
print(json.dumps(out))
"""


def _side_result(argv: list[str], env: dict, side: str) -> dict:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} exited {proc.returncode}: {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result.pop("shim") != (side.strip() == "mirror-py"):
        raise RuntimeError(f"{side}: the shim's state is not what the side says")
    return result


def connect_benchmark(connects: int, lookups: int) -> dict[str, dict[str, float]]:
    from tests.sandbox.netpod import TCP_ECHO_PORT, Network, PodSpec

    mirror = [sys.executable, "-m", "mirror_py", "exec"]
    out: dict[str, dict[str, float]] = {}
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="bench-c", servers=True))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("MIRROR_PY_INTERPOSE_C_EXTENSIONS", None)
        args = [sys.executable, "-c", CONNECTS, pod.ip, str(TCP_ECHO_PORT), str(connects)]
        for side in ("direct", "mirror-py", "mirror-py ", "direct "):  # ABBA
            argv = args if side.strip() == "direct" else [*mirror, "--target", f"pid/{pod.pid}", "--", *args]
            result = _side_result(argv, env, side)
            log(f"connect {side.strip()}: C {result['c']:.0f} us, Python {result['python']:.0f} us")
            for key, value in result.items():
                out.setdefault(side.strip(), {}).setdefault(key, []).append(value)
        # c-ares: straight to the pod's name server, or through mirror-py to this machine's.
        from mirror_py.shim import nameservers
        from tests.sandbox.dns import ClusterDns

        laptop = nameservers.parse(Path(nameservers.PATH).read_text())[0]
        with tempfile.TemporaryDirectory() as work:
            cluster_dns = ClusterDns(net.gateway, Path(work))
            cluster_dns.start()
            try:
                cluster_dns.update({f"{kind}{i}.bench.cluster.local": ["10.1.0.1"]
                                    for kind, count in (("warm", 10), ("name", lookups)) for i in range(count)})
                for side in ("direct", "mirror-py", "mirror-py ", "direct "):
                    direct = side.strip() == "direct"
                    lookup = [sys.executable, "-c", LOOKUPS, net.gateway if direct else laptop, str(lookups)]
                    argv = lookup if direct else [*mirror, "--target", f"pid/{pod.pid}", "--", *lookup]
                    result = _side_result(argv, env, side)
                    log(f"lookup {side.strip()}: c-ares {result['c-ares']:.0f} us")
                    out.setdefault(side.strip(), {}).setdefault("c-ares", []).append(result["c-ares"])
            finally:
                cluster_dns.close()
    return {side: {key: statistics.median(v) for key, v in values.items()} for side, values in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="interpreter runs per side (default 30)")
    parser.add_argument("--connects", type=int, default=300, help="timed connects per kind and run")
    parser.add_argument("--lookups", type=int, default=200, help="timed c-ares lookups per run")
    parser.add_argument("--opens", type=int, default=200, help="timed sqlite3 opens of a local file per run")
    opts = parser.parse_args(argv)
    start, imports = local_benchmarks(opts.runs)
    opens = file_open_benchmark(max(opts.runs // 3, 3), opts.opens)
    lines = [f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", "",
             "| row | no shim | shim, layer off | shim, layer on | on / off |", "|---|---|---|---|---|"]
    for label, row in (("`python -c pass` (ms)", start), ("`import psycopg2, grpc, uvloop` (ms)", imports)):
        lines.append(f"| {label} | {row['no shim']:.1f} | {row['layer off']:.1f} | {row['layer on']:.1f} | "
                     f"{row['layer on'] / row['layer off']:.3f}x |")
    lines += ["", "| local file from C, p50 (us) | shim, layer off | shim, layer on | on / off |", "|---|---|---|---|",
              f"| `sqlite3.connect` + `SELECT` + `close` of a local database | {opens['layer off']:.0f} | "
              f"{opens['layer on']:.0f} | {opens['layer on'] / opens['layer off']:.2f}x |"]
    if os.geteuid() == 0:
        conn = connect_benchmark(opts.connects, opts.lookups)
        lines += ["", "| connect() p50 (us) | direct | through mirror-py | ratio |", "|---|---|---|---|"]
        for key, label in (("c", "from C (libcurl, connect-only)"), ("python", "from Python (create_connection)")):
            d, m = conn["direct"][key], conn["mirror-py"][key]
            lines.append(f"| {label} | {d:.0f} | {m:.0f} | {m / d:.1f}x |")
        d, m = conn["direct"]["c-ares"], conn["mirror-py"]["c-ares"]
        lines += ["", "| name lookup p50 (us) | direct to the pod's name server | through mirror-py | ratio |",
                  "|---|---|---|---|", f"| c-ares (pycares, A record) | {d:.0f} | {m:.0f} | {m / d:.1f}x |"]
    else:
        lines.append("\n(connect rows skipped: building the sandbox pod needs root)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
