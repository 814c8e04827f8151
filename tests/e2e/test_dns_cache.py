"""The session's name cache: a name asked again costs no round trip, for any process of the session; answers
expire, unknown names are kept a shorter time, the cache can be turned off, concurrent lookups of one name
are one request, and an edit of the pod's /etc/hosts is seen without waiting for the TTL.

Requests are counted by the session for each agent it talks to (the ``info`` RPC): the app asks it before
and after each lookup, so the tests do not depend on time, except where expiry itself is the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox.netpod import Network, Pod, PodSpec

from .conftest import MIRROR_PY, ROOT, agent_of, config_args, run_mirror

APP = str(Path(__file__).with_name("dns_cache_app.py"))
HOSTS = {"cached.pod.internal": "10.77.0.1", "moving.pod.internal": "10.77.0.2", "other.pod.internal": "10.77.0.3"}
NO_NAME = "gaierror -2: Name or service not known"


@pytest.fixture(scope="module")
def dns_pod(network: Network) -> Pod:
    """A pod of this module's own: one test edits its /etc/hosts. Lookups from files only (unknown names fail
    at once with EAI_NONAME)."""
    return network.add_pod(PodSpec(name="dnscache", hosts=HOSTS, hostname="dnscache-1",
                                   files={"/etc/nsswitch.conf": "hosts: files\n"}))




def _run(pod: Pod, *args: str, extra: list[str] | None = None) -> dict:
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, APP, *args], extra=extra)
    assert res.code == 0, f"mirror-py exited {res.code}: {res.stderr}"
    return res.json


def _deltas(out: dict) -> list[int]:
    """Requests sent to the agent during each step of the app."""
    asked = out["asked"]
    return [after - before for before, after in zip(asked, asked[1:])]


def test_a_name_asked_again_costs_no_request_in_any_process_of_the_session(dns_pod):
    out = _run(dns_pod, "again", "cached.pod.internal")
    assert out["answers"] == [["10.77.0.1"]] * 3
    # The first lookup asks the agent; the second, and the child process's, are answered by the session.
    assert _deltas(out) == [1, 0, 0]


def test_answers_expire(dns_pod, tmp_path):
    out = _run(dns_pod, "expire", "cached.pod.internal", "1.0",
               extra=config_args(tmp_path, "network.dns", cache_ttl=0.3))
    assert out["answers"] == [["10.77.0.1"]] * 2
    assert _deltas(out) == [1, 1]


def test_the_cache_can_be_turned_off(dns_pod, tmp_path):
    out = _run(dns_pod, "again", "cached.pod.internal", extra=config_args(tmp_path, "network.dns", cache=False))
    assert out["answers"] == [["10.77.0.1"]] * 3
    assert _deltas(out) == [1, 1, 1]


def test_unknown_names_are_kept_for_the_negative_ttl(dns_pod, tmp_path):
    out = _run(dns_pod, "again", "nowhere.pod.internal", extra=config_args(tmp_path, "network.dns", cache_ttl=300))
    assert out["answers"][:2] == [[NO_NAME]] * 2, out
    assert _deltas(out)[:2] == [1, 0]
    # The negative TTL is its own, shorter bound: an unknown name is asked again once it has passed.
    out = _run(dns_pod, "expire", "nowhere.pod.internal", "1.0",
               extra=config_args(tmp_path, "network.dns", cache_ttl=300, cache_negative_ttl=0.3))
    assert out["answers"] == [[NO_NAME]] * 2
    assert _deltas(out) == [1, 1]


def test_concurrent_lookups_of_one_name_are_one_request(dns_pod):
    out = _run(dns_pod, "concurrent", "other.pod.internal", "20")
    assert out["answers"] == [[["10.77.0.3"]]]
    assert _deltas(out) == [1]


def _edit_hosts(pod: Pod, name: str, address: str) -> None:
    """Rewrites the pod's /etc/hosts in place, as the kubelet does (it is a bind mount: no rename)."""
    code = ("import sys\n"
            "with open('/etc/hosts', 'r+') as f:\n"
            "    lines = [l for l in f.read().splitlines() if sys.argv[1] not in l.split()]\n"
            "    f.seek(0)\n"
            "    f.truncate()\n"
            "    f.write('\\n'.join(lines + [sys.argv[2] + ' ' + sys.argv[1]]) + '\\n')\n")
    pod.exec_output([sys.executable, "-c", code, name, address])




@pytest.mark.parametrize("agent", ["running", "killed"])
def test_an_edit_of_the_pods_hosts_file_is_seen_before_the_ttl(dns_pod, tmp_path, agent):
    """``killed``: the file is edited while the session has no agent, so no watch sees the change; the new
    agent's session must not answer from what the old agent said."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", f"pid/{dns_pod.pid}",
                             *config_args(tmp_path, "network.dns", cache_ttl=3600), "--", sys.executable, APP, "hosts",
                             "moving.pod.internal"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        assert proc.stdout.readline() == "edit\n", proc.stderr.read() if proc.poll() is not None else ""
        if agent == "killed":
            os.kill(agent_of(proc.pid), signal.SIGKILL)
        _edit_hosts(dns_pod, "moving.pod.internal", "10.77.9.9")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _edit_hosts(dns_pod, "moving.pod.internal", HOSTS["moving.pod.internal"])
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    # Cached before the edit (the second lookup asked nothing), and the new address once the pod's file changed,
    # though the TTL was an hour.
    assert result["answers"] == [["10.77.0.2"], ["10.77.0.2"], ["10.77.9.9"]]
    assert _deltas(result)[:2] == [1, 0]
