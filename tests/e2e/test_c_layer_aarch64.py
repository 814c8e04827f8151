"""The C-level layer on aarch64 through a real session: Debian's arm64 interpreter and libcurl under qemu-user
(tests/arm64.py), interposed by ``mirror-py exec`` against the sandbox pod like any Python process. libcurl,
loaded with ctypes, fetches from the HTTP server on the pod's loopback by a name only the pod's /etc/hosts
knows, so an answer proves both its lookup and its connect went through the pod, and reads a pod file (open and
fstat from C). The aarch64 at-fork closer
and the gate's off switch at exit are shown in the machine code itself; uninstalling writes the slots back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests import arm64
from tests.sandbox.netpod import HTTP_LOOPBACK_PORT, Pod

from .conftest import Result, run_mirror

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="qemu-user runs Linux binaries")

APP = str(Path(__file__).with_name("c_arm64_app.py"))
URL = f"http://api.pod.internal:{HTTP_LOOPBACK_PORT}/arm64"


def run(pod: Pod, scenario: str, url: str = URL) -> Result:
    try:
        argv = arm64.python_argv()
    except arm64.Missing as exc:
        pytest.fail(str(exc))
    res = run_mirror(f"pid/{pod.pid}", [*argv, APP, scenario, url])
    assert res.code == 0, f"exit {res.code}:\n{res.stdout}\n{res.stderr}"
    assert "not interposed" not in res.stderr, res.stderr
    return res


def test_libcurl_on_aarch64_fetches_from_the_pods_loopback_by_a_pod_only_name(pod):
    out = run(pod, "fetch").json
    assert out["machine"] == "aarch64" and out["gates"]
    assert out["routed"] == ["libcurl.so.4"]
    assert (out["code"], out["status"]) == (0, 200), out["error"]
    body = json.loads(out["body"])
    assert (body["pod"], body["server"], body["path"]) == ("api", "loopback", "/arm64")  # the pod's own server
    assert out["hooked"] >= 1  # curl's getaddrinfo asked mirror-py's resolver


def test_libcurl_on_aarch64_reads_a_pod_file_and_its_fstat(pod):
    """A file:// URL: libcurl's open and fstat from C get the pod's file (this machine has none at that path), and
    the fstat written in aarch64's ``struct stat`` layout gives curl the file's time."""
    path = "/etc/config/app.yaml"
    out = run(pod, "fetch", f"file://{path}").json
    assert (out["code"], out["body"]) == (0, "name: api\n"), out["error"]
    assert out["filetime"] == int(Path(f"/proc/{pod.pid}/root{path}").stat().st_mtime)
    assert not Path(path).exists()


def test_a_child_forked_from_c_on_aarch64_never_enters_python(pod):
    out = run(pod, "c_fork").json
    assert out["parent"]["code"] == 0 and out["parent"]["hooked"] >= 1
    # fork() from C: the aarch64 closer ran in the child; curl resolved with this machine's resolver, which does
    # not know the pod's name, and never entered Python.
    assert out["c"]["hooked"] == 0 and out["c"]["code"] == 6, out["c"]  # CURLE_COULDNT_RESOLVE_HOST
    # os.fork(): a Python child, interposed as its parent.
    assert out["os"]["code"] == 0 and out["os"]["hooked"] >= 1, out["os"]
    assert json.loads(out["os"]["body"])["pod"] == "api"


def test_the_gate_is_closed_at_exit_on_aarch64(pod):
    res = run(pod, "exit")
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    before = lines[0]["before"]
    assert before["code"] == 0 and before["hooked"] >= 1, before
    after = lines[-1]
    # After the layer's exit handler, curl's lookup reached libc straight from the gate.
    assert (after["code"], after["hooked"]) == (6, 0), after


def test_uninstall_on_aarch64_writes_every_slot_back(pod):
    out = run(pod, "uninstall").json
    assert out["before"] == 0 and out["slots"] >= 3
    assert out["restored"] and out["left"] == 0
    # libcurl calls libc again: this machine's resolver, which does not know the pod's name.
    assert out["after"] == {"code": 6, "hooked": 0}
