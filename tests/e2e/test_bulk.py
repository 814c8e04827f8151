"""Volume and concurrency: bytes arrive intact, memory stays bounded, one stalled stream stalls only itself."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from .conftest import MIRROR_PY, PROBE, ROOT

PEAK_RSS_LIMIT_MB = 150


def _vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _run_measured(pod, argv: list[str]) -> tuple[dict, dict]:
    """Runs a probe through mirror-py while sampling the session's and the agent's peak RSS."""
    import json
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    peaks = {"session_kb": 0, "agent_kb": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peaks["session_kb"] = max(peaks["session_kb"], _vm_hwm_kb(proc.pid))
                for child in _children(proc.pid):
                    with open(f"/proc/{child}/cmdline", "rb") as f:
                        if b"-c" in f.read().split(b"\0"):
                            peaks["agent_kb"] = max(peaks["agent_kb"], _vm_hwm_kb(child))
            except OSError:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=600)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), peaks


def test_one_gibibyte_through_one_stream(pod):
    out, peaks = _run_measured(pod, [sys.executable, PROBE, "sink", pod.ip, "7001", "1024"])
    assert out["match"] is True and out["count"] == 1 << 30, out
    print(f"1 GiB: {out['mb_per_s']:.0f} MB/s; peak RSS session {peaks['session_kb'] // 1024} MiB, "
          f"agent {peaks['agent_kb'] // 1024} MiB")
    assert 0 < peaks["session_kb"] < PEAK_RSS_LIMIT_MB * 1024, peaks
    assert 0 < peaks["agent_kb"] < PEAK_RSS_LIMIT_MB * 1024, peaks


def test_two_hundred_concurrent_streams(pod):
    out, peaks = _run_measured(pod, [sys.executable, PROBE, "many_streams", pod.ip, "7000", "200", "256"])
    assert out == {"ok": 200, "total": 200}
    print(f"200 streams: peak RSS session {peaks['session_kb'] // 1024} MiB, agent {peaks['agent_kb'] // 1024} MiB")
    assert peaks["session_kb"] < PEAK_RSS_LIMIT_MB * 1024 and peaks["agent_kb"] < PEAK_RSS_LIMIT_MB * 1024, peaks


def test_a_stalled_stream_does_not_stall_the_others(pod):
    baseline, _ = _run_measured(pod, [sys.executable, PROBE, "sink", pod.ip, "7001", "200"])
    out, _ = _run_measured(pod, [sys.executable, PROBE, "stalled", pod.ip, "7002", "7001", "200"])
    assert out["match"] is True
    # The stuck stream really holds data in flight (kernel buffers plus the relay's window) ...
    assert out["stuck_bytes"] > 1 << 20, out
    # ... and the other stream still moves at a comparable speed (a shared window would stop it entirely).
    assert out["mb_per_s"] > baseline["mb_per_s"] / 4, (out, baseline)
