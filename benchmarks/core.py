"""mirror-py core benchmark: the same client code run directly and through mirror-py, side by side.

Run as root from anywhere (it builds its own sandbox pod from network namespaces and removes it after):

    .venv/bin/python benchmarks/core.py            # full run, about a minute
    .venv/bin/python benchmarks/core.py --quick    # smaller counts, a few seconds of measuring

"Direct" runs ``benchmarks/clients.py`` from the host network namespace against the pod IP, the way any
process on the node would reach the pod.  "Through mirror-py" runs exactly the same command under
``mirror-py exec --target pid/<pod> -- python benchmarks/clients.py ...`` from the host, against the same
pod IP, so every byte goes app socket -> session relay -> agent in the pod -> server.  Each client run is a
fresh process; direct and mirror-py runs alternate, and every figure is the median over ``--repeat`` runs.

The interpreter start-up rows need no pod: ``python -c pass`` with the shim's environment (what
``mirror-py exec`` gives the app) against a plain environment, plus a check that the shim opens no
connection to the session at start-up.

Prints the machine, then a markdown table (stdout); progress goes to stderr.  ``--json FILE`` keeps every
raw result.  Exit status 1 if a check failed (a client error, a wrong digest, a start-up RPC).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "benchmarks" / "clients.py"
SHIM_DIR = ROOT / "sitecustomize_shim"

AIM_THROUGHPUT_MB_S = 250.0
AIM_RTT_ADDED_US = 200.0
AIM_CONNECT_US = 1000.0
AIM_STARTUP_RATIO = 1.2

FULL = {"mib": 512, "rtt": 20_000, "rtt_warmup": 1_000, "connects": 2_000, "connect_warmup": 100,
        "startup_runs": 40, "exec_runs": 5, "repeat": 5}
QUICK = {"mib": 128, "rtt": 5_000, "rtt_warmup": 500, "connects": 500, "connect_warmup": 50,
         "startup_runs": 15, "exec_runs": 3, "repeat": 1}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- machine


def machine_lines(info: dict[str, str]) -> list[str]:
    """The report's machine lines; the load average at the end of the run stands beside the one at its start,
    because a loaded machine is the first suspect when a figure moves."""
    end_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"- CPU: {info['cpu']}, {info['cores']}",
        f"- Memory: {info['memory']}; load average (1/5/15 min) at start: {info['load']}, at end: {end_load}",
        f"- Python: {info['python']}",
        f"- Kernel: {info['kernel']}",
    ]


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# ------------------------------------------------------------------------------------------------ clients


def mirror_py_command() -> list[str]:
    script = Path(sys.executable).with_name("mirror-py")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mirror_py"]


def run_client(mode: str, pod_pid: int, args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
    """One fresh client process; returns its JSON result after checking it ran the way ``mode`` says."""
    cmd = [sys.executable, str(CLIENTS), *args]
    if mode == "mirror":
        cmd = [*mirror_py_command(), "exec", "--target", f"pid/{pod_pid}", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                          stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} client {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result.get("shim_active") != (mode == "mirror"):
        raise RuntimeError(f"{mode} client ran with shim_active={result.get('shim_active')}")
    return result


def timed_exec(mode: str, pod_pid: int) -> float:
    """Wall seconds of ``python -c pass``, directly or under ``mirror-py exec`` (session + agent start-up)."""
    cmd = [sys.executable, "-c", "pass"]
    if mode == "mirror":
        cmd = [*mirror_py_command(), "exec", "--target", f"pid/{pod_pid}", "--", *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} python -c pass exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def alternate(repeat: int, pod_pid: int, args: Sequence[str], label: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "mirror": []}
    for rep in range(repeat):
        order = ("direct", "mirror") if rep % 2 == 0 else ("mirror", "direct")
        for mode in order:
            result = run_client(mode, pod_pid, args)
            runs[mode].append(result)
            log(f"{label} {mode:6} run {rep + 1}/{repeat}: "
                + ", ".join(f"{k}={v:.1f}" for k, v in result.items() if k.endswith(("_us", "_s")))
                )
    return runs


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def client_benchmarks(cfg: dict[str, int], raw: dict[str, Any]) -> dict[str, Any]:
    from tests.sandbox.netpod import TCP_ECHO_PORT, TCP_SINK_PORT, Network, PodSpec

    out: dict[str, Any] = {}
    log("building the sandbox pod (network namespace, bridge, servers)")
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="bench", servers=True))
        log(f"pod ready: ip {pod.ip}, pid {pod.pid}, netns {pod.netns}")
        # One untimed run each way first: page cache, .pyc files, first-use costs of the agent path.
        for mode in ("direct", "mirror"):
            run_client(mode, pod.pid, ["connect", pod.ip, str(TCP_ECHO_PORT), "10", "0"])
            run_client(mode, pod.pid, ["sink", pod.ip, str(TCP_SINK_PORT), "32"])

        rep = cfg["repeat"]
        sink = alternate(rep, pod.pid, ["sink", pod.ip, str(TCP_SINK_PORT), str(cfg["mib"])], "sink")
        rtt = alternate(rep, pod.pid, ["rtt", pod.ip, str(TCP_ECHO_PORT), str(cfg["rtt"]), str(cfg["rtt_warmup"])],
                        "rtt")
        conn = alternate(rep, pod.pid, ["connect", pod.ip, str(TCP_ECHO_PORT), str(cfg["connects"]),
                                        str(cfg["connect_warmup"])], "connect")
        execs: dict[str, list[float]] = {"direct": [], "mirror": []}
        for i in range(cfg["exec_runs"]):
            for mode in ("direct", "mirror") if i % 2 == 0 else ("mirror", "direct"):
                execs[mode].append(timed_exec(mode, pod.pid))
        log("exec start-up: direct {:.0f} ms, mirror-py {:.0f} ms (medians)".format(
            *(statistics.median(execs[m]) * 1000 for m in ("direct", "mirror"))))
        out["pod_ip"] = pod.ip

    raw["sink"], raw["rtt"], raw["connect"], raw["exec_s"] = sink, rtt, conn, execs
    for mode in ("direct", "mirror"):
        out[f"mb_s_{mode}"] = median_of(sink[mode], "mb_per_s")
        out[f"rtt50_{mode}"] = median_of(rtt[mode], "p50_us")
        out[f"rtt99_{mode}"] = median_of(rtt[mode], "p99_us")
        out[f"conn50_{mode}"] = median_of(conn[mode], "p50_us")
        out[f"conn99_{mode}"] = median_of(conn[mode], "p99_us")
        out[f"exec_ms_{mode}"] = statistics.median(execs[mode]) * 1000
    return out


# ---------------------------------------------------------------------------------------------- start-up


def accepted(listener: socket.socket) -> int:
    """Connections that reached the listener (a closed one still waits in the accept queue)."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return count
        conn.close()
        count += 1


def _run_python(code: str, env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds and user+sys CPU seconds of one interpreter run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir(), timeout=60)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, cpu, proc


def startup_benchmark(runs: int, raw: dict[str, Any]) -> dict[str, Any]:
    # A user's machine caches bytecode: drop PYTHONDONTWRITEBYTECODE (set globally on some CI machines)
    # so neither side pays for compiling from source on every start.
    plain = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH") and not k.startswith("MIRROR_PY_")}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mirror-py-bench-") as tmp:
        sock_path = os.path.join(tmp, "session.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(4096)
        listener.setblocking(False)
        shim = dict(plain, PYTHONPATH=str(SHIM_DIR), MIRROR_PY_SESSION=sock_path, MIRROR_PY_SHIM_LIB=str(ROOT),
                    MIRROR_PY_SHIM_SETTINGS="{}")

        # Warm-up (writes the .pyc files), and proof that the shim really is installed in the "shim" runs.
        check = ("import sys; m = sys.modules.get('mirror_py.shim'); "
                 "print(bool(m and m.active()), 'socket' in sys.modules)")
        _run_python("pass", plain)
        _run_python("pass", shim)
        _, _, probe = _run_python(check, shim)
        shim_loaded, socket_imported = probe.stdout.split()
        if shim_loaded != "True" or probe.stderr.strip():
            raise RuntimeError(f"the shim did not install: stdout {probe.stdout!r} stderr {probe.stderr!r}")
        _, _, probe = _run_python(check, plain)
        if probe.stdout.split()[0] != "False":
            raise RuntimeError("the plain environment has the shim installed")
        out["shim_check"] = {"installed": True, "socket_imported_at_startup": socket_imported == "True"}
        out["rpc_warmup"] = accepted(listener)  # the two shim runs above count towards the proof too

        # The dedicated no-RPC check: one `python -c pass` against a session socket that is listening.
        _run_python("pass", shim)
        out["rpc_pass"] = accepted(listener)
        _run_python("import socket", shim)
        out["rpc_import_socket"] = accepted(listener)

        samples: dict[str, list[tuple[float, float]]] = {"plain": [], "shim": []}
        for i in range(runs):
            for name in ("plain", "shim") if i % 2 == 0 else ("shim", "plain"):
                wall, cpu, _ = _run_python("pass", plain if name == "plain" else shim)
                samples[name].append((wall, cpu))
        out["rpc_timed"] = accepted(listener)
        listener.close()

    raw["startup"] = samples
    for name in ("plain", "shim"):
        out[f"wall_ms_{name}"] = statistics.median(w for w, _ in samples[name]) * 1000
        out[f"cpu_ms_{name}"] = statistics.median(c for _, c in samples[name]) * 1000
        out[f"min_ms_{name}"] = min(w for w, _ in samples[name]) * 1000
    out["runs"] = runs
    log("start-up: plain {:.1f} ms, shim {:.1f} ms (medians); session connections: {}".format(
        out["wall_ms_plain"], out["wall_ms_shim"], out["rpc_warmup"] + out["rpc_pass"] + out["rpc_timed"]))
    return out


# ------------------------------------------------------------------------------------------------- table


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _signed(value: float, digits: int = 0) -> str:
    return ("+" if value >= 0 else "-") + _num(abs(value), digits)


def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def table(cfg: dict[str, int], c: dict[str, Any], s: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    d, m = c["mb_s_direct"], c["mb_s_mirror"]
    rows.append((f"Throughput, 1 TCP stream, {cfg['mib']} MiB to the sink (MB/s)", _num(d), _num(m),
                 f"{m / d:.2f}x", f"aim >= {AIM_THROUGHPUT_MB_S:.0f} MB/s: {_ok(m >= AIM_THROUGHPUT_MB_S)}", "-"))
    d, m = c["rtt50_direct"], c["rtt50_mirror"]
    rows.append(("1-byte round trip p50 (us)", _num(d, 1), _num(m, 1), f"{m / d:.2f}x",
                 f"aim <= {AIM_RTT_ADDED_US:.0f} us added: {_ok(m - d <= AIM_RTT_ADDED_US)}", _signed(m - d, 1)))
    d, m = c["rtt99_direct"], c["rtt99_mirror"]
    rows.append(("1-byte round trip p99 (us)", _num(d, 1), _num(m, 1), f"{m / d:.2f}x", "(no aim)",
                 _signed(m - d, 1)))
    for pct in ("50", "99"):
        d, m = c[f"conn{pct}_direct"], c[f"conn{pct}_mirror"]
        # The aim is on the median; the tail is shown for information.
        aim = f"aim <= {AIM_CONNECT_US:.0f} us: {_ok(m <= AIM_CONNECT_US)}" if pct == "50" else "(no aim)"
        rows.append((f"connect() p{pct} (us)", _num(d, 1), _num(m, 1), f"{m / d:.0f}x", aim, _signed(m - d, 1)))
    d, m = s["wall_ms_plain"], s["wall_ms_shim"]
    rows.append(("`python -c pass` wall, median (ms); shim off / on", _num(d, 1), _num(m, 1), f"{m / d:.2f}x",
                 f"aim <= {AIM_STARTUP_RATIO}x: {_ok(m / d <= AIM_STARTUP_RATIO)}", _signed(m - d, 1)))
    d, m = s["cpu_ms_plain"], s["cpu_ms_shim"]
    rows.append(("`python -c pass` user+sys CPU, median (ms); shim off / on", _num(d, 1), _num(m, 1),
                 f"{m / d:.2f}x", "(no aim)", _signed(m - d, 1)))
    rpc = s["rpc_warmup"] + s["rpc_pass"] + s["rpc_timed"]
    rows.append((f"Connections to the session socket during {s['runs'] + 3} shim start-ups", "-", str(rpc), "-",
                 f"must be 0: {_ok(rpc == 0)}", "-"))
    d, m = c["exec_ms_direct"], c["exec_ms_mirror"]
    rows.append(("`python -c pass` vs `mirror-py exec -- python -c pass`, wall (ms)", _num(d), _num(m),
                 f"{m / d:.1f}x", "(no aim; session + agent start)", _signed(m - d)))

    head = ("Measurement", "Direct", "Through mirror-py", "Ratio (mirror-py / direct)", "Added", "Aim")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:", "---:", "---:", "---:", "---"]) + "|"]
    for name, direct, mirror, ratio, aim, added in rows:
        lines.append(f"| {name} | {direct} | {mirror} | {ratio} | {added} | {aim} |")
    return lines


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a quick sanity run)")
    parser.add_argument("--mib", type=int, help="MiB sent on the throughput stream")
    parser.add_argument("--rtt", type=int, help="timed 1-byte round trips per run")
    parser.add_argument("--connects", type=int, help="timed connect() calls per run")
    parser.add_argument("--startup-runs", type=int, help="python -c pass runs per side")
    parser.add_argument("--repeat", type=int, help="client runs per side; figures are medians over them")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("benchmarks/core.py builds network namespaces and must run as root", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # for tests.sandbox

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("mib", "rtt", "connects", "startup_runs", "repeat"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    info = machine()
    started = time.perf_counter()
    raw: dict[str, Any] = {"config": cfg, "machine": info}
    failed = False
    try:
        startup = startup_benchmark(cfg["startup_runs"], raw)
        clients = client_benchmarks(cfg, raw)
    except Exception as exc:
        log(f"FAILED: {exc}")
        failed = True
        raise
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str) + "\n")
    rpc_total = startup["rpc_warmup"] + startup["rpc_pass"] + startup["rpc_timed"]
    failed = failed or rpc_total != 0

    today = datetime.date.today().isoformat()
    mode = "--quick" if args.quick else "full"
    print(f"## mirror-py core benchmark, {today} ({mode} mode)")
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Pod IP {clients['pod_ip']}; direct = host netns -> pod IP; mirror-py = "
          f"`mirror-py exec --target pid/<pod>` from the host -> same pod IP")
    print(f"- Client figures: median of {cfg['repeat']} runs per side; {cfg['rtt']:,} round trips after "
          f"{cfg['rtt_warmup']:,} warm-up; {cfg['connects']:,} connects after {cfg['connect_warmup']} warm-up; "
          f"{cfg['startup_runs']} alternating start-ups per side (bytecode cached, one warm-up each)")
    print()
    for line in table(cfg, clients, startup):
        print(line)
    print()
    print(f"Start-up RPC check: `python -c pass` with MIRROR_PY_SESSION on a listening unix socket -> "
          f"{startup['rpc_pass']} connection(s); `python -c 'import socket'` -> {startup['rpc_import_socket']}; "
          f"{startup['runs']} timed shim start-ups -> {startup['rpc_timed']}.")
    print()
    print("Per-run values, direct | through mirror-py (run order alternates; the table shows the medians):")
    print()
    per_run = (
        ("throughput MB/s", "sink", "mb_per_s", 0),
        ("round trip p50 us", "rtt", "p50_us", 1),
        ("round trip p99 us", "rtt", "p99_us", 1),
        ("connect() p50 us", "connect", "p50_us", 1),
        ("connect() p99 us", "connect", "p99_us", 1),
    )
    for title, kind, key, digits in per_run:
        cells = [", ".join(_num(float(r[key]), digits) for r in raw[kind][mode]) for mode in ("direct", "mirror")]
        print(f"- {title}: {cells[0]} | {cells[1]}")
    print()
    print(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
