"""Bad targets and broken agents: one clear line and a non-zero exit, never a traceback or a hang."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import run_mirror

CMD = [sys.executable, "-c", "print('app ran')"]


def _assert_clean_failure(res, *fragments: str) -> None:
    assert res.code != 0
    assert "app ran" not in res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("mirror-py: error:"), res.stderr
    for fragment in fragments:
        assert fragment in line, line


def test_dead_pid():
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    res = run_mirror(f"pid/{proc.pid}", CMD, timeout=30)
    _assert_clean_failure(res, f"no process with PID {proc.pid}")


def test_unknown_target_kind():
    res = run_mirror("vm/thing", CMD, timeout=30)
    _assert_clean_failure(res, "vm/thing")


def test_unknown_netns():
    res = run_mirror("netns/does-not-exist", CMD, timeout=30)
    _assert_clean_failure(res, "does-not-exist", "does not exist")


def test_target_without_python(pod):
    res = run_mirror(f"pid/{pod.pid}", CMD, extra=["--agent-python", "/nonexistent/python3"], timeout=30)
    _assert_clean_failure(res, "/nonexistent/python3", "agent.python")


def test_bad_config_value(pod, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[network.outgoing]\nfilter = { local = ["tcp://10.0.0.0/99"] }\n')
    res = run_mirror(f"pid/{pod.pid}", CMD, extra=["--config", str(cfg)], timeout=30)
    _assert_clean_failure(res, "network.outgoing.filter.local")


def test_agent_killed_mid_session_resets_streams_and_reconnects(pod):
    # The agent is the session's only child besides the app: find it from the app via /proc.
    script = (
        "import os, signal, socket, time\n"
        "session = os.getppid()\n"
        "children = open(f'/proc/{session}/task/{session}/children').read().split()\n"
        "agent = [int(c) for c in children if int(c) != os.getpid()][0]\n"
        "s = socket.create_connection(('127.0.0.1', 7000), timeout=5)\n"
        "os.kill(agent, signal.SIGKILL)\n"
        "time.sleep(0.5)\n"
        "try:\n"
        "    s.sendall(b'x'); data = s.recv(10)\n"
        "    print('stream', 'eof' if data == b'' else data)\n"
        "except OSError as e:\n"
        "    print('stream', type(e).__name__)\n"
        "start = time.monotonic()\n"
        "while True:\n"
        "    try:\n"
        "        c = socket.create_connection(('127.0.0.1', 7000), timeout=5)\n"
        "        c.sendall(b'ping'); c.shutdown(socket.SHUT_WR)\n"
        "        print('echo', c.recv(10).decode(), round(time.monotonic() - start, 1)); break\n"
        "    except OSError as e:\n"
        "        if time.monotonic() - start > 10: print('gave up', e); break\n"
        "        time.sleep(0.1)\n"
    )
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", script], timeout=60)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] in ("stream ConnectionResetError", "stream eof", "stream BrokenPipeError"), res.stdout
    word, answer, seconds = lines[1].split()
    assert (word, answer) == ("echo", "ping") and float(seconds) < 5, res.stdout
    assert "lost the agent" in res.stderr and "reconnected to pid/" in res.stderr
    assert "Traceback" not in res.stderr

def test_dns_and_file_calls_in_flight_fail_with_clear_oserrors(pod):
    """The agent is frozen while a DNS lookup and a file read wait for it, then killed: both calls fail with an
    OSError that names the lost agent — no hang, no crash — and the same calls work again after the reconnect."""
    script = (
        "import json, os, signal, socket, threading, time\n"
        "session = os.getppid()\n"
        "children = open(f'/proc/{session}/task/{session}/children').read().split()\n"
        "agent = [int(c) for c in children if int(c) != os.getpid()][0]\n"
        "def dns(port=80): return socket.getaddrinfo('api.pod.internal', port, socket.AF_INET)[0][4][0]\n"
        "def read(): return open('/etc/nsswitch.conf').read().strip()\n"
        "out = {'before': [dns(), read()]}\n"
        "os.kill(agent, signal.SIGSTOP)\n"
        "def call(name, fn):\n"
        "    try:\n"
        "        out[name] = ['ok', fn()]\n"
        "    except OSError as e:\n"
        "        out[name] = [type(e).__name__, str(e)]\n"
        # Another port: a question the session has not answered yet (its name cache would answer port 80).
        "threads = [threading.Thread(target=call, args=a) for a in (('dns', lambda: dns(81)), ('file', read))]\n"
        "for t in threads: t.start()\n"
        "time.sleep(0.5)\n"
        "out['waiting'] = sorted(n for n in ('dns', 'file') if n not in out)\n"
        "os.kill(agent, signal.SIGKILL)\n"
        "for t in threads: t.join(10)\n"
        "start = time.monotonic()\n"
        "while time.monotonic() - start < 10:\n"
        "    try:\n"
        "        out['after'] = [dns(), read()]; break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "print(json.dumps(out))\n"
    )
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", script], timeout=60)
    assert res.code == 0 and "Traceback" not in res.stderr, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] == ["127.0.0.1", "hosts: files"] and out["after"] == out["before"], out
    assert out["waiting"] == ["dns", "file"], out  # both really were in flight when the agent died
    for name in ("dns", "file"):
        kind, message = out[name]
        assert kind in ("OSError", "gaierror", "ConnectionResetError"), out
        assert "agent" in message and "pid/" in message, out


def test_udp_sockets_keep_working_after_the_agent_is_replaced(pod):
    """An app's UDP sockets (a metrics client, a resolver) are long-lived: after the agent is lost and replaced,
    the same sockets — connected or not — reach the target's network again instead of going silent."""
    script = (
        "import json, os, signal, socket, sys, time\n"
        "session = os.getppid()\n"
        "children = open(f'/proc/{session}/task/{session}/children').read().split()\n"
        "agent = [int(c) for c in children if int(c) != os.getpid()][0]\n"
        "far = (sys.argv[1], 9999)\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)\n"
        "c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(1); c.connect(far)\n"
        "def unconnected(word):\n"
        "    u.sendto(word, far); data, addr = u.recvfrom(100); return data.decode()\n"
        "def connected(word):\n"
        "    c.send(word); return c.recv(100).decode()\n"
        "out = {'before': [unconnected(b'a'), connected(b'b')]}\n"
        "os.kill(agent, signal.SIGKILL)\n"
        "out['after'] = []\n"
        "for fn, word in ((unconnected, b'x'), (connected, b'y')):\n"
        "    start, got = time.monotonic(), None\n"
        "    while got is None and time.monotonic() - start < 10:\n"
        "        try:\n"
        "            got = fn(word)\n"
        "        except OSError:\n"
        "            time.sleep(0.1)\n"
        "    out['after'].append(got)\n"
        "print(json.dumps(out))\n"
    )
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", script, pod.ip], timeout=60)
    assert res.code == 0 and "Traceback" not in res.stderr, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"before": ["echo:a", "echo:b"], "after": ["echo:x", "echo:y"]}, (out, res.stderr)
    assert "reconnected to pid/" in res.stderr


def test_ctrl_c_stops_the_app_session_and_agent(pod, tmp_path):
    import os
    import signal
    import time

    from .conftest import MIRROR_PY, ROOT

    ready = tmp_path / "ready"
    app = f"import pathlib, time; pathlib.Path({str(ready)!r}).write_text('x'); time.sleep(60)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c", app],
                            env=env, cwd=str(ROOT), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    assert len(children) == 2  # the agent and the app
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    proc.wait(15)
    assert proc.returncode != 0
    for child in children:
        assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"
