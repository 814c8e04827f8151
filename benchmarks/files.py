"""mirror-py file benchmark: the local fast path with the shim on vs off, and remote file operations directly
inside a pod vs through mirror-py, side by side.

Run as root from anywhere (it builds its own sandbox pod and removes it after):

    .venv/bin/python benchmarks/files.py            # full run, about a minute
    .venv/bin/python benchmarks/files.py --quick    # smaller counts

Local rows need no pod: the same measuring client runs with the shim's environment (``fs.mode = "read"``,
``MIRROR_PY_SESSION`` naming a socket that is listening but never accepts, so any RPC would show up) and with
a plain environment, alternating. Remote rows run the client inside the pod ("direct": what the app would see
deployed there) and through ``mirror-py exec --target pid/<pod>`` from the host, on the pod's files.

Prints the machine, then a markdown table (stdout); progress goes to stderr. ``--json FILE`` keeps every raw
result. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIM_DIR = ROOT / "sitecustomize_shim"
sys.path.insert(0, str(ROOT))

from benchmarks.core import accepted, log, machine, machine_lines, mirror_py_command  # noqa: E402

AIM_LOCAL_RATIO = 1.5
AIM_IMPORT_RATIO = 1.1
IMPORTS = "import json, asyncio, email, http.client"
DATA = "/srv/bench-data"

FULL = {"stats": 200_000, "opens": 50_000, "local_repeat": 7, "import_runs": 40, "remote_ops": 2_000,
        "listings": 20, "mib": 100, "big_repeat": 3, "repeat": 3}
QUICK = {"stats": 50_000, "opens": 10_000, "local_repeat": 3, "import_runs": 12, "remote_ops": 300,
         "listings": 5, "mib": 100, "big_repeat": 1, "repeat": 1}


# ------------------------------------------------------------------------------------------------ client
def client(kind: str, *args: str) -> dict:
    """The measuring side: runs in a fresh interpreter, prints one JSON line."""
    shim = sys.modules.get("mirror_py.shim")
    out: dict[str, Any] = {"shim_active": bool(shim and shim.active())}
    if kind == "local":
        path, stats, opens = args[0], int(args[1]), int(args[2])
        stat = os.stat
        for _ in range(1000):
            stat(path)
        t0 = time.perf_counter_ns()
        for _ in range(stats):
            stat(path)
        out["stat_ns"] = (time.perf_counter_ns() - t0) / stats
        for _ in range(1000):
            with open(path, "rb") as f:
                f.read()
        t0 = time.perf_counter_ns()
        for _ in range(opens):
            with open(path, "rb") as f:
                f.read()
        out["open_read_ns"] = (time.perf_counter_ns() - t0) / opens
    elif kind == "remote":
        n, listings, = int(args[0]), int(args[1])
        small = f"{DATA}/small-4k.bin"
        stat_times, open_times, list_times = [], [], []
        for i in range(n + 50):
            t0 = time.perf_counter_ns()
            os.stat(small)
            t1 = time.perf_counter_ns()
            if i >= 50:
                stat_times.append(t1 - t0)
        for i in range(n + 50):
            t0 = time.perf_counter_ns()
            with open(small, "rb") as f:
                data = f.read()
            t1 = time.perf_counter_ns()
            if i >= 50:
                open_times.append(t1 - t0)
        assert len(data) == 4096
        for i in range(listings + 2):
            t0 = time.perf_counter_ns()
            names = os.listdir(f"{DATA}/many")
            t1 = time.perf_counter_ns()
            if i >= 2:
                list_times.append(t1 - t0)
        assert len(names) == 1000
        t0 = time.perf_counter_ns()
        with os.scandir(f"{DATA}/many") as it:
            sizes = sum(e.stat().st_size for e in it)
        out["scandir_stat_ms"] = (time.perf_counter_ns() - t0) / 1e6
        assert sizes == 1000 * 8
        stat_times.sort()
        open_times.sort()
        out["stat_p50_us"] = stat_times[len(stat_times) // 2] / 1000
        out["stat_p99_us"] = stat_times[int(len(stat_times) * 0.99)] / 1000
        out["open_read_p50_us"] = open_times[len(open_times) // 2] / 1000
        out["open_read_p99_us"] = open_times[int(len(open_times) * 0.99)] / 1000
        out["listdir_ms"] = statistics.median(list_times) / 1e6
    elif kind == "big":
        total = 0
        t0 = time.perf_counter()
        with open(f"{DATA}/big.bin", "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
        out["seconds"] = time.perf_counter() - t0
        out["bytes"] = total
        out["mb_per_s"] = total / out["seconds"] / 1e6
    print(json.dumps(out))
    return out


# ------------------------------------------------------------------------------------------------ local
def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _envs(sock_path: str) -> tuple[dict[str, str], dict[str, str]]:
    plain = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH") and not k.startswith("MIRROR_PY_")}
    settings = json.dumps({"outgoing": {}, "dns": {}, "fs": {"mode": "read", "read_write": [], "read_only": [],
                                                             "local": [], "not_found": [], "mapping": []}})
    shim = dict(plain, PYTHONPATH=str(SHIM_DIR), MIRROR_PY_SESSION=sock_path, MIRROR_PY_SHIM_LIB=str(ROOT),
                MIRROR_PY_SHIM_SETTINGS=settings)
    return plain, shim


def local_benchmarks(cfg: dict[str, int], raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mirror-py-bench-files-") as tmp:
        target = os.path.join(tmp, "local-4k.bin")
        with open(target, "wb") as f:
            f.write(os.urandom(4096))
        sock_path = os.path.join(tmp, "session.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(4096)
        listener.setblocking(False)
        plain, shim = _envs(sock_path)
        cmd = [sys.executable, __file__, "client", "local", target, str(cfg["stats"]), str(cfg["opens"])]
        samples: dict[str, list[dict]] = {"plain": [], "shim": []}
        _run(cmd, plain, tmp)
        _run(cmd, shim, tmp)
        for i in range(cfg["local_repeat"]):
            for name in ("plain", "shim") if i % 2 == 0 else ("shim", "plain"):
                result = _run(cmd, plain if name == "plain" else shim, tmp)
                if result["shim_active"] != (name == "shim"):
                    raise RuntimeError(f"{name} run had shim_active={result['shim_active']}")
                samples[name].append(result)
                log(f"local {name:5} run {i + 1}: stat {result['stat_ns']:.0f} ns, "
                    f"open+read {result['open_read_ns'] / 1000:.2f} us")
        imports: dict[str, list[float]] = {"plain": [], "shim": []}
        check = [sys.executable, "-c", IMPORTS + "; import sys; m = sys.modules.get('mirror_py.shim'); "
                 "print('{\"on\": %s}' % ('true' if m and m.active() else 'false'))"]
        if _run(check, shim, tmp)["on"] is not True or _run(check, plain, tmp)["on"] is not False:
            raise RuntimeError("the shim was not installed in the shim runs, or was in the plain ones")
        for env in (plain, shim):
            subprocess.run([sys.executable, "-c", IMPORTS], env=env, cwd=tmp, check=True)
        for i in range(cfg["import_runs"]):
            for name in ("plain", "shim") if i % 2 == 0 else ("shim", "plain"):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", IMPORTS], env=plain if name == "plain" else shim, cwd=tmp,
                               check=True, stdin=subprocess.DEVNULL)
                imports[name].append(time.perf_counter() - t0)
        out["rpc"] = accepted(listener)
        listener.close()
    raw["local"] = samples
    raw["imports_s"] = imports
    for name in ("plain", "shim"):
        out[f"stat_ns_{name}"] = statistics.median(r["stat_ns"] for r in samples[name])
        out[f"open_ns_{name}"] = statistics.median(r["open_read_ns"] for r in samples[name])
        out[f"import_ms_{name}"] = statistics.median(imports[name]) * 1000
    log("imports: plain {:.1f} ms, shim {:.1f} ms (medians); session connections: {}".format(
        out["import_ms_plain"], out["import_ms_shim"], out["rpc"]))
    return out


# ------------------------------------------------------------------------------------------------ remote
def remote_benchmarks(cfg: dict[str, int], raw: dict[str, Any]) -> dict[str, Any]:
    from tests.sandbox.netpod import Network, PodSpec

    out: dict[str, Any] = {}
    log("building the sandbox pod")
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="fbench", servers=False, files={f"{DATA}/small-4k.bin": os.urandom(4096)}))
        pod.exec_output(["sh", "-c", f"set -e; mkdir {DATA}/many; cd {DATA}/many; "
                         "for i in $(seq 1000); do printf 12345678 > f$i; done; "
                         f"head -c {cfg['mib']}M /dev/urandom > {DATA}/big.bin"])
        log(f"pod ready: pid {pod.pid}; {cfg['mib']} MiB file and a 1,000-entry directory made in it")
        direct = [sys.executable, __file__, "client"]
        through = [*mirror_py_command(), "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, __file__,
                   "client"]

        def run(mode: str, *args: str) -> dict:
            if mode == "direct":
                result = json.loads(pod.exec_output([*direct, *args], timeout=900).strip().splitlines()[-1])
            else:
                result = _run([*through, *args], cwd=str(ROOT))
            if result["shim_active"] != (mode == "mirror"):
                raise RuntimeError(f"{mode} client ran with shim_active={result['shim_active']}")
            return result

        small: dict[str, list[dict]] = {"direct": [], "mirror": []}
        big: dict[str, list[dict]] = {"direct": [], "mirror": []}
        for mode in ("direct", "mirror"):  # warm-up: page cache, .pyc files
            run(mode, "remote", "50", "2")
            run(mode, "big")
        for i in range(cfg["repeat"]):
            for mode in ("direct", "mirror") if i % 2 == 0 else ("mirror", "direct"):
                r = run(mode, "remote", str(cfg["remote_ops"]), str(cfg["listings"]))
                small[mode].append(r)
                log(f"remote {mode:6} run {i + 1}: stat p50 {r['stat_p50_us']:.1f} us, open+read p50 "
                    f"{r['open_read_p50_us']:.1f} us, listdir {r['listdir_ms']:.2f} ms")
        for i in range(cfg["big_repeat"]):
            for mode in ("direct", "mirror") if i % 2 == 0 else ("mirror", "direct"):
                r = run(mode, "big")
                if r["bytes"] != cfg["mib"] << 20:
                    raise RuntimeError(f"{mode} read {r['bytes']} bytes of the big file")
                big[mode].append(r)
                log(f"big {mode:6} run {i + 1}: {r['mb_per_s']:.0f} MB/s")
    raw["remote"], raw["big"] = small, big
    for mode in ("direct", "mirror"):
        for key in ("stat_p50_us", "stat_p99_us", "open_read_p50_us", "open_read_p99_us", "listdir_ms",
                    "scandir_stat_ms"):
            out[f"{key}_{mode}"] = statistics.median(r[key] for r in small[mode])
        out[f"mb_s_{mode}"] = statistics.median(r["mb_per_s"] for r in big[mode])
    return out


# ------------------------------------------------------------------------------------------------- table
def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def table(cfg: dict[str, int], loc: dict[str, Any], rem: dict[str, Any]) -> list[str]:
    rows = []
    d, m = loc["stat_ns_plain"], loc["stat_ns_shim"]
    rows.append(("Local `os.stat` of a local file (ns per call); shim off / on", f"{d:,.0f}", f"{m:,.0f}",
                 f"{m / d:.2f}x", f"aim <= {AIM_LOCAL_RATIO}x: {_ok(m / d <= AIM_LOCAL_RATIO)}"))
    d, m = loc["open_ns_plain"] / 1000, loc["open_ns_shim"] / 1000
    rows.append(("Local open + read of a 4 KiB file (us per call); shim off / on", f"{d:,.2f}", f"{m:,.2f}",
                 f"{m / d:.2f}x", f"aim <= {AIM_LOCAL_RATIO}x: {_ok(m / d <= AIM_LOCAL_RATIO)}"))
    d, m = loc["import_ms_plain"], loc["import_ms_shim"]
    rows.append((f"`python -c \"{IMPORTS}\"` wall, median (ms); shim off / on", f"{d:,.1f}", f"{m:,.1f}",
                 f"{m / d:.2f}x", f"aim <= {AIM_IMPORT_RATIO}x: {_ok(m / d <= AIM_IMPORT_RATIO)}"))
    rows.append(("Connections to the session socket during the local runs", "-", str(loc["rpc"]), "-",
                 f"must be 0: {_ok(loc['rpc'] == 0)}"))
    for key, label, digits in (
        ("stat_p50_us", "Remote `os.stat` p50 (us)", 1),
        ("stat_p99_us", "Remote `os.stat` p99 (us)", 1),
        ("open_read_p50_us", "Remote open + read of a 4 KiB file, p50 (us)", 1),
        ("open_read_p99_us", "Remote open + read of a 4 KiB file, p99 (us)", 1),
        ("listdir_ms", "`os.listdir` of a 1,000-entry directory, median (ms)", 2),
        ("scandir_stat_ms", "`os.scandir` + `entry.stat()` of the same 1,000 entries (ms)", 2),
    ):
        d, m = rem[f"{key}_direct"], rem[f"{key}_mirror"]
        rows.append((label, f"{d:,.{digits}f}", f"{m:,.{digits}f}", f"{m / d:.1f}x", "(no aim)"))
    d, m = rem["mb_s_direct"], rem["mb_s_mirror"]
    rows.append((f"Sequential read of a {cfg['mib']} MiB file, 1 MiB reads (MB/s)", f"{d:,.0f}", f"{m:,.0f}",
                 f"{m / d:.2f}x", "(no aim)"))
    lines = ["| Measurement | Direct / shim off | Through mirror-py / shim on | Ratio | Aim |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        client(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/files.py builds namespaces and must run as root", file=sys.stderr)
        return 2
    cfg = dict(QUICK if args.quick else FULL)
    info = machine()
    started = time.perf_counter()
    raw: dict[str, Any] = {"config": cfg, "machine": info}
    try:
        loc = local_benchmarks(cfg, raw)
        rem = remote_benchmarks(cfg, raw)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(f"## mirror-py file benchmark, {datetime.date.today().isoformat()} "
          f"({'--quick' if args.quick else 'full'} mode)")
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Local rows: median of {cfg['local_repeat']} alternating client runs per side ({cfg['stats']:,} stats, "
          f"{cfg['opens']:,} opens each); imports: {cfg['import_runs']} alternating runs per side")
    print(f"- Remote rows: direct = the client inside the pod; mirror-py = `mirror-py exec --target pid/<pod>` "
          f"from the host; median of {cfg['repeat']} runs ({cfg['remote_ops']:,} timed ops each) and "
          f"{cfg['big_repeat']} big-file runs per side")
    print()
    for line in table(cfg, loc, rem):
        print(line)
    print()
    print(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    return 1 if loc["rpc"] else 0


if __name__ == "__main__":
    sys.exit(main())
