"""An agent with more privilege than its target never runs the target's code, and still answers names as the
target's own libc would.

The job pod's agent is privileged and a ``pid/`` agent is host root. Each test plants poisoned modules where
the Python that would run the agent searches for them inside the target — a ``unicodedata.py`` that shadows the
C extension, and ``encodings/idna.py``, ``stringprep.py`` and ``shlex.py`` over the real ones — and makes the
app look up a non-ASCII name, which has Python import the IDNA codec. A poisoned module that runs writes a
marker file on the host; the marker must never appear.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox import netpod
from tests.sandbox.netpod import Network, PodSpec

from .conftest import MIRROR_PY, ROOT, run_mirror, sandbox_cluster

RESOLVER_PROBE = str(Path(__file__).with_name("resolver_probe.py"))
MARKER = Path("/tmp") / f"mirror-py-poison-ran-{os.getpid()}"
POISON = (
    "import os\n"
    f"with open({str(MARKER)!r}, 'a') as f:\n"
    "    f.write('%s ran in pid %d\\n' % (__name__, os.getpid()))\n"
)
POISONED = ("unicodedata.py", "stringprep.py", "shlex.py", "encodings/idna.py")
LOOKUP_APP = (
    "import json, socket\n"
    "try:\n"
    "    out = {'ok': socket.getaddrinfo('b\\u00fccher.example', 80)}\n"
    "except socket.gaierror as exc:\n"
    "    out = {'gaierror': exc.errno}\n"
    "print(json.dumps(out))\n"
)


def _stdlib(python: str) -> str:
    return subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _agent_stdlibs() -> list[str]:
    """Every standard library an agent could run from: the ``python3`` the sandbox starts in a target or a
    job pod, and mirror-py's own interpreter."""
    pythons = [shutil.which("python3", path=netpod.DEFAULT_PATH), shutil.which("python3"), sys.executable]
    return sorted({os.path.realpath(_stdlib(p)) for p in pythons if p})


@pytest.fixture(autouse=True)
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    MARKER.unlink(missing_ok=True)


def _assert_nothing_ran() -> None:
    ran = MARKER.read_text() if MARKER.exists() else ""
    assert not ran, f"code planted in the target ran with the agent's privilege:\n{ran}"


# ------------------------------------------------------------------------------------------ pid/ targets
def test_pid_agent_runs_none_of_the_targets_code():
    files = {f"{lib}/{name}": POISON for lib in _agent_stdlibs() for name in POISONED}
    files["/etc/nsswitch.conf"] = "hosts: files\n"
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="victim", env={"ROLE": "victim"}, files=files, servers=False))
        res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", LOOKUP_APP])
    _assert_nothing_ran()
    assert res.code == 0, res.stderr
    assert res.json == {"gaierror": socket.EAI_NONAME}


# ------------------------------------------------------------------------------------------- job agents
def _victim_manifest() -> str:
    docs = [(ROOT / "examples" / "k8s" / "sandbox.yaml").read_text()]
    mounts, volumes = [], []
    for index, lib in enumerate(_agent_stdlibs()):
        data = {f"m{n}": POISON for n in range(len(POISONED))}
        items = [{"key": f"m{n}", "path": name} for n, name in enumerate(POISONED)]
        docs.append(json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": f"poison-{index}", "namespace": "staging"}, "data": data}))
        volumes.append({"name": f"poison-{index}", "configMap": {"name": f"poison-{index}", "items": items}})
        mounts.append({"name": f"poison-{index}", "mountPath": lib})
    docs.append(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "victim", "namespace": "staging"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "victim"}},
                 "template": {"metadata": {"labels": {"app": "victim"}},
                              "spec": {"containers": [{"name": "app", "image": "busybox",
                                                       "command": ["sleep", "infinity"], "volumeMounts": mounts}],
                                       "volumes": volumes}}}}))
    return "\n---\n".join(docs)


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(_victim_manifest())


def _kube(cluster, *args: str, app: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([*MIRROR_PY, *args, "--", sys.executable, "-c", app], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(ROOT))


def test_job_agent_runs_none_of_the_targets_code(cluster):
    out = _kube(cluster, "exec", "--target", "deploy/victim", "--agent-mode", "job", app=LOOKUP_APP)
    _assert_nothing_ran()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"gaierror": socket.EAI_NONAME}


def test_job_agent_resolves_through_the_targets_files(cluster):
    """Short Service names through the pod's search list, its hosts file and host name: the target's view,
    though the agent reads none of it through its own mount namespace."""
    pod = cluster.pod_names("staging", "victim-")[0]
    app = ("import json, socket\n"
           "print(json.dumps([socket.gethostname(), socket.gethostbyname('redis'),"
           " socket.gethostbyname_ex(socket.gethostname())[0]]))\n")
    out = _kube(cluster, "exec", "--target", "deploy/victim", "--agent-mode", "job", app=app)
    assert out.returncode == 0, out.stderr
    redis_ip = cluster.pod(cluster.pod_names("staging", "redis-")[0], "staging").ip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [pod, redis_ip, pod]


# ------------------------------------------------------------------------------------------------ parity
def _calls(cluster) -> list:
    api = cluster.pod(cluster.pod_names("staging", "api-")[0], "staging")
    redis = cluster.pod(cluster.pod_names("staging", "redis-")[0], "staging")
    AF_INET, AF_INET6, STREAM, DGRAM = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
    canon = socket.AI_CANONNAME
    return [
        ["getaddrinfo", ["redis", 6379]],
        ["getaddrinfo", ["redis", 6379, AF_INET, STREAM]],
        ["getaddrinfo", ["redis", None, AF_INET6]],
        ["getaddrinfo", ["redis", "http", 0, 0, 0, canon]],
        ["getaddrinfo", ["redis", "domain", AF_INET, DGRAM]],
        ["getaddrinfo", ["redis", "no-such-service"]],
        ["getaddrinfo", ["redis.staging", 80, 0, 0, 0, canon]],
        ["getaddrinfo", ["redis.staging.svc.cluster.local.", 80, AF_INET, 0, 0, canon]],
        ["getaddrinfo", ["REDIS.Staging.svc.cluster.local", "80", AF_INET, STREAM]],
        ["getaddrinfo", ["api", 8000, AF_INET, STREAM, 0, canon]],
        ["getaddrinfo", ["no-such-service", 80]],
        ["getaddrinfo", ["no-such-service.example.com", 80, AF_INET]],
        ["getaddrinfo", ["b\u00fccher.example", 80]],
        ["getaddrinfo", ["localhost", 80, 0, STREAM]],
        ["getaddrinfo", [api.hostname if hasattr(api, "hostname") else api.name, 80, 0, STREAM, 0, canon]],
        ["gethostbyname", ["redis"]],
        ["gethostbyname", ["no-such-service"]],
        ["gethostbyname_ex", ["redis"]],
        ["gethostbyname_ex", ["redis.staging.svc.cluster.local"]],
        ["gethostbyname_ex", ["localhost"]],
        ["gethostbyname_ex", ["no-such-service"]],
        ["gethostbyaddr", [redis.ip]],
        ["gethostbyaddr", [api.ip]],
        ["gethostbyaddr", ["10.244.250.250"]],
        ["gethostbyaddr", ["127.0.0.1"]],
        ["getnameinfo", [[redis.ip, 80], 0]],
        ["getnameinfo", [[redis.ip, 53], socket.NI_DGRAM]],
        ["getnameinfo", [[redis.ip, 6379], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV]],
        ["getnameinfo", [["10.244.250.250", 80], 0]],
        ["getnameinfo", [["10.244.250.250", 80], socket.NI_NAMEREQD]],
    ]


def test_stub_resolver_answers_as_libc_in_the_pod(cluster):
    """The same calls through glibc inside the pod (its mount namespace, its files, cluster DNS) and through
    the stub resolver from outside it (network and UTS namespaces only, files through /proc/PID/root)."""
    api = cluster.pod(cluster.pod_names("staging", "api-")[0], "staging")
    calls = json.dumps(_calls(cluster))
    libc = json.loads(api.exec_output([sys.executable, RESOLVER_PROBE, "libc", calls]).strip().splitlines()[-1])
    stub_run = subprocess.run(
        ["nsenter", "-t", str(api.pid), "-n", "-u", "--", sys.executable, RESOLVER_PROBE, "stub", str(api.pid),
         calls], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert stub_run.returncode == 0, stub_run.stderr
    stub = json.loads(stub_run.stdout.strip().splitlines()[-1])
    differ = [f"{call}: libc {want} but stub {got}" for call, want, got in zip(json.loads(calls), libc, stub)
              if got != want]
    assert not differ, "\n".join(differ)


HOSTS = """127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
10.1.2.3 multi.example multi alias-one
10.1.2.4 multi.example
fd00::5 multi.example six-alias
10.1.2.3 second-line.example
fd00::6 only-six.example
# 10.7.7.7 commented.example
10.1.2.9 Mixed.Case.example  # trailing comment
"""


def _hosts_calls() -> list:
    AF_INET, AF_INET6, STREAM = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM
    mapped = socket.AI_V4MAPPED
    calls = []
    for name in ("localhost", "ip6-localhost", "multi", "multi.example", "alias-one", "six-alias",
                 "only-six.example", "commented.example", "mixed.case.EXAMPLE", "absent"):
        for family in (0, AF_INET, AF_INET6):
            calls.append(["getaddrinfo", [name, 80, family, STREAM, 0, socket.AI_CANONNAME]])
        calls.append(["getaddrinfo", [name, None, AF_INET6, 0, 0, mapped]])
        calls.append(["getaddrinfo", [name, "http", AF_INET6, STREAM, 0, mapped | socket.AI_ALL]])
        calls.append(["gethostbyname", [name]])
        calls.append(["gethostbyname_ex", [name]])
        calls.append(["gethostbyaddr", [name]])
    for addr in ("10.1.2.3", "10.1.2.4", "fd00::5", "::1", "127.0.0.1", "10.9.9.9", "10.200.0.1"):
        calls.append(["gethostbyaddr", [addr]])
        for flags in (0, socket.NI_NAMEREQD, socket.NI_NOFQDN, socket.NI_NUMERICHOST | socket.NI_DGRAM):
            calls.append(["getnameinfo", [[addr, 22], flags]])
    calls += [["getaddrinfo", ["multi", "ssh"]], ["getaddrinfo", ["multi", "nope-svc", 0, STREAM]],
              ["getaddrinfo", ["multi", "80", 0, 0, 0, socket.AI_NUMERICSERV]],
              ["getaddrinfo", ["multi", "ssh", 0, 0, 0, socket.AI_NUMERICSERV]],
              ["getaddrinfo", ["multi", 80, 0, socket.SOCK_RAW]],
              ["getaddrinfo", ["multi", None, 0, 0, socket.IPPROTO_UDP]]]
    return calls


def test_stub_resolver_reads_hosts_files_as_libc():
    """Files only (``hosts: files``): every spelling of a hosts file entry, both directions, both families."""
    files = {"/etc/hosts": HOSTS, "/etc/nsswitch.conf": "hosts: files\n"}
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="hosts", hostname="hosts-pod", files=files, servers=False))
        calls = json.dumps(_hosts_calls())
        libc = json.loads(pod.exec_output([sys.executable, RESOLVER_PROBE, "libc", calls]).strip().splitlines()[-1])
        stub_run = subprocess.run(
            ["nsenter", "-t", str(pod.pid), "-n", "-u", "--", sys.executable, RESOLVER_PROBE, "stub",
             str(pod.pid), calls], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert stub_run.returncode == 0, stub_run.stderr
    stub = json.loads(stub_run.stdout.strip().splitlines()[-1])
    differ = [f"{call}: libc {want} but stub {got}" for call, want, got in zip(json.loads(calls), libc, stub)
              if got != want]
    assert not differ, "\n".join(differ)


def _compare_in_pod(pod, calls: list) -> None:
    text = json.dumps(calls)
    libc = json.loads(pod.exec_output([sys.executable, RESOLVER_PROBE, "libc", text]).strip().splitlines()[-1])
    stub_run = subprocess.run(
        ["nsenter", "-t", str(pod.pid), "-n", "-u", "--", sys.executable, RESOLVER_PROBE, "stub", str(pod.pid),
         text], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert stub_run.returncode == 0, stub_run.stderr
    stub = json.loads(stub_run.stdout.strip().splitlines()[-1])
    differ = [f"{call}: libc {want} but stub {got}" for call, want, got in zip(calls, libc, stub) if got != want]
    assert not differ, "\n".join(differ)


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_stub_resolver_fails_as_libc_without_a_name_server(server):
    """A name server that refuses (ICMP port unreachable) or never answers: the same gaierror and herror codes
    as glibc, after the hosts file was tried first."""
    with Network.create() as net:
        address = net.gateway if server == "refusing" else str(net.subnet.network_address + 65000)
        files = {"/etc/resolv.conf": f"nameserver {address}\nsearch example.internal\noptions timeout:1 attempts:1\n",
                 "/etc/nsswitch.conf": "hosts: files dns\n"}
        pod = net.add_pod(PodSpec(name="nodns", hostname="nodns-pod", files=files, servers=False))
        calls = [["getaddrinfo", ["no-such-name", 80, 0, socket.SOCK_STREAM]],
                 ["getaddrinfo", ["nodns-pod", 80, socket.AF_INET, socket.SOCK_STREAM]],
                 ["gethostbyname", ["fully.qualified.example."]],
                 ["gethostbyname_ex", ["no-such-name"]],
                 ["gethostbyaddr", ["10.200.0.1"]],
                 ["getnameinfo", [["10.200.0.1", 80], 0]],
                 ["getnameinfo", [["10.200.0.1", 80], socket.NI_NAMEREQD]]]
        _compare_in_pod(pod, calls)
