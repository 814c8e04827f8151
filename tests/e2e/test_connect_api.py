"""mirror_py.connect(): interposition for a block of code, undone exactly on exit."""

from __future__ import annotations

import sys

from .conftest import ROOT

SCRIPT = r"""
import json, os, socket, sys, urllib.request, _socket
import mirror_py

names = ("connect", "connect_ex", "getpeername", "getsockname", "sendto", "recvfrom", "recvfrom_into",
         "recvmsg", "_real_close")
before_cls = {n: socket.socket.__dict__.get(n) for n in names}
before_mod = {n: getattr(socket, n) for n in ("getaddrinfo", "gethostbyname", "gethostname")}
import builtins, io, posixpath
from mirror_py.shim.patches import FILE_SURFACE, Patch
file_names = [(p.module, p.name) for p in FILE_SURFACE
              if isinstance(p, Patch) and hasattr(sys.modules[p.module], p.name)]
before_files = {(m, n): getattr(sys.modules[m], n) for m, n in file_names}
before_supports = (set(os.supports_fd), set(os.supports_dir_fd), set(os.supports_follow_symlinks))
env_before = os.environ.get("POD_ONLY")
with mirror_py.connect(sys.argv[1]) as session:
    inside = {
        "server": json.loads(urllib.request.urlopen("http://api.pod.internal:8081/", timeout=5).read())["server"],
        "env": os.environ.get("POD_ONLY"),
        "hostname": socket.gethostname(),
        "target": session.target,
        "files_patched": builtins.open is not before_files[("builtins", "open")]
        and os.stat is not before_files[("os", "stat")],
    }
after = {
    "cls_restored": all(socket.socket.__dict__.get(n) is before_cls[n] for n in names),
    "inherited_again": socket.socket.connect is _socket.socket.connect,
    "mod_restored": all(getattr(socket, n) is f for n, f in before_mod.items()),
    "files_restored": all(getattr(sys.modules[m], n) is f for (m, n), f in before_files.items())
    and builtins.open is io.open
    and (set(os.supports_fd), set(os.supports_dir_fd), set(os.supports_follow_symlinks)) == before_supports,
    "env": os.environ.get("POD_ONLY"),
    "env_was": env_before,
}
try:
    socket.getaddrinfo("api.pod.internal", 80)
    after["resolves_after"] = True
except socket.gaierror:
    after["resolves_after"] = False
print(json.dumps({"inside": inside, "after": after}))
"""


def test_connect_interposes_then_restores_everything(pod):
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("POD_ONLY", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, f"pid/{pod.pid}"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["inside"] == {"server": "loopback", "env": "from-the-pod", "hostname": "api-7d9f",
                                "target": f"pid/{pod.pid}", "files_patched": True}
    assert result["after"] == {"cls_restored": True, "inherited_again": True, "mod_restored": True,
                               "files_restored": True, "env": None, "env_was": None, "resolves_after": False}


def test_connect_to_a_missing_target_raises_a_clear_error():
    import os
    import subprocess

    code = (
        "import mirror_py\n"
        "try:\n    mirror_py.connect('pid/999999999')\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.startswith("MirrorError no process with PID 999999999"), out


HUNG = r"""
import os, signal, sys, threading, time
import mirror_py
from mirror_py.errors import MirrorError
from mirror_py.shim import ready_line

ready_line.FIRST_LINE_TIMEOUT = 5.0  # the real bounds are a minute and more; the rule is the same
ready_line.MARGIN = 1.0

def freeze_the_session():
    # The session process hangs (a stuck call, a bug): here it is simply stopped.
    while True:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == os.getpid() and b"_serve" in cmd:
                os.kill(int(pid), signal.SIGSTOP)
                return
        time.sleep(0.01)

threading.Thread(target=freeze_the_session, daemon=True).start()
t0 = time.monotonic()
try:
    mirror_py.connect(sys.argv[1], startup_timeout=1)
except MirrorError as exc:
    print(f"{time.monotonic() - t0:.1f} {exc}")
"""


def test_connect_stops_a_session_that_never_gets_ready(pod):
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", HUNG, f"pid/{pod.pid}"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    seconds, _, message = out.stdout.strip().partition(" ")
    assert message.startswith("the mirror-py session process (pid "), out.stdout
    assert "; it was stopped" in message
    assert float(seconds) < 30


TERMINATED = r"""
import os, signal, sys, time
import mirror_py

session = mirror_py.connect(sys.argv[1])
pid = session.info["pid"]
os.kill(pid, signal.SIGTERM)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and session._proc.poll() is None:
    time.sleep(0.05)
print("ended" if session._proc.poll() is not None else "still running")
session._proc.kill()
"""


def test_a_connect_session_ends_on_sigterm(pod):
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", TERMINATED, f"pid/{pod.pid}"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(ROOT))
    assert out.stdout.strip() == "ended", out.stdout + out.stderr
