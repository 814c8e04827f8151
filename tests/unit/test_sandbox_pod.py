"""Proves the sandbox pods used by mirror-py's end-to-end tests really isolate what they claim to.

If these fail, end-to-end results mean nothing: e.g. a "pod-only" loopback server reachable from the host
would let mirror-py pass tests without tunnelling anything.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.sandbox.netpod import (
    HTTP_LOOPBACK_PORT,
    HTTP_PODIP_PORT,
    REDIS_PORT,
    TCP_ECHO_PORT,
    TCP_SINK_PORT,
    TCP_SLOW_PORT,
    TLS_HOSTNAME,
    TLS_PORT,
    UDP_ECHO_PORT,
    UDP_LOOPBACK_ECHO_PORT,
    Network,
    Pod,
    PodSpec,
    cleanup_leftovers,
)

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="sandbox pods are Linux namespaces"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0, reason="sandbox pods need root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "nsenter", "unshare")),
        reason="needs iproute2 and util-linux",
    ),
]

POD_ENV = {"DATABASE_URL": "postgres://db", "POD_ONLY": "1", "SPACES": "a b  'c' \"d\" $HOME"}
POD_HOSTS = {"secure.pod.internal": "127.0.0.1", "only-in-pod.internal": "10.244.0.77"}


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with Network.create() as network:
        yield network


@pytest.fixture(scope="module")
def pod(net: Network) -> Iterator[Pod]:
    started = time.monotonic()
    p = net.add_pod(
        PodSpec(
            name="api",
            env=POD_ENV,
            hosts=POD_HOSTS,
            hostname="api-7d9f",
            files={"/etc/podinfo/name": "api\n", "/etc/podinfo/labels": b"app=api\n"},
            servers=True,
        )
    )
    print(f"add_pod with servers took {time.monotonic() - started:.2f}s")
    yield p
    p.close()


def py_in_pod(pod: Pod, code: str) -> str:
    return pod.exec_output([sys.executable, "-c", code])


def http_get_in_pod(pod: Pod, url: str) -> dict:
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    return json.loads(py_in_pod(pod, code))


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


# ------------------------------------------------------------------------------------------------ network


def test_loopback_server_only_reachable_inside_pod(pod: Pod) -> None:
    assert refused(pod.ip, HTTP_LOOPBACK_PORT)
    if not refused("127.0.0.1", HTTP_LOOPBACK_PORT):  # something of the host's own may listen there
        body = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_LOOPBACK_PORT}/", timeout=5).read()
        assert b'"pod": "api"' not in body
    reply = http_get_in_pod(pod, f"http://127.0.0.1:{HTTP_LOOPBACK_PORT}/inside?q=1")
    assert reply == {"server": "loopback", "pod": "api", "path": "/inside?q=1", "client": reply["client"]}
    assert reply["client"][0] == "127.0.0.1"


def test_pod_ip_server_reachable_from_host_with_keepalive(net: Network, pod: Pod) -> None:
    conn = http.client.HTTPConnection(pod.ip, HTTP_PODIP_PORT, timeout=10)
    replies = []
    for path in ("/a", "/b"):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        replies.append(json.loads(resp.read()))
    assert [r["path"] for r in replies] == ["/a", "/b"]
    assert replies[0]["server"] == "podip" and replies[0]["pod"] == "api"
    assert replies[0]["client"][0] == net.gateway
    assert replies[0]["client"] == replies[1]["client"], "second request must reuse the connection"

    body = os.urandom(300_000)
    conn.request("POST", "/upload", body=body)
    reply = json.loads(conn.getresponse().read())
    assert reply["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert reply["body_length"] == len(body) and reply["body"] is None
    conn.request("POST", "/small", body=b"hello")
    reply = json.loads(conn.getresponse().read())
    assert reply["body"] == "hello" and reply["path"] == "/small"

    conn.request("POST", "/chunked", body=iter([b"ab", b"cd" * 1000]), encode_chunked=True)
    reply = json.loads(conn.getresponse().read())
    assert reply["body_sha256"] == hashlib.sha256(b"ab" + b"cd" * 1000).hexdigest()
    conn.close()


def test_pod_network_setup(net: Network, pod: Pod) -> None:
    out = pod.exec_output(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert f"{pod.ip}/16" in out
    assert f"default via {net.gateway}" in pod.exec_output(["ip", "route"])
    assert pod.netns.startswith("mpt-") and net.bridge.startswith("mpbr")
    assert subprocess.run(["ip", "netns", "exec", pod.netns, "true"], check=False).returncode == 0


def test_pods_reach_each_other(net: Network, pod: Pod) -> None:
    with net.add_pod(PodSpec(name="other", servers=False)) as other:
        assert other.ip != pod.ip
        reply = http_get_in_pod(other, f"http://{pod.ip}:{HTTP_PODIP_PORT}/from-other")
        assert reply["client"][0] == other.ip
        assert refused(other.ip, HTTP_PODIP_PORT)  # no servers in that pod


# ------------------------------------------------------------------------------------ files, env, names


def test_pod_files_only_visible_in_pod(pod: Pod) -> None:
    hosts = pod.exec_output(["cat", "/etc/hosts"])
    assert "127.0.0.1\tsecure.pod.internal" in hosts
    assert "10.244.0.77\tonly-in-pod.internal" in hosts
    assert f"{pod.ip}\tapi-7d9f" in hosts
    with open("/etc/hosts") as f:
        host_hosts = f.read()
    assert "only-in-pod.internal" not in host_hosts and "secure.pod.internal" not in host_hosts

    resolved = py_in_pod(pod, "import socket; print(socket.gethostbyname('only-in-pod.internal'))")
    assert resolved.strip() == "10.244.0.77"
    with pytest.raises(OSError):
        socket.gethostbyname("only-in-pod.internal")

    search = "search default.svc.cluster.local svc.cluster.local cluster.local\n"
    assert pod.exec_output(["cat", "/etc/resolv.conf"]) == f"nameserver {pod.network.gateway}\n{search}"
    assert pod.exec_output(["cat", "/etc/hostname"]) == "api-7d9f\n"
    assert pod.exec_output(["hostname"]).strip() == "api-7d9f"
    assert socket.gethostname() != "api-7d9f"
    assert pod.exec_output(["cat", "/etc/podinfo/name", "/etc/podinfo/labels"]) == "api\napp=api\n"
    assert not os.path.exists("/etc/podinfo")
    # The rest of /etc is still the host's (the overlay only adds).
    assert pod.exec_output(["cat", "/etc/os-release"]) == open("/etc/os-release").read()


def test_pod_environment_is_exact(pod: Pod) -> None:
    with open(f"/proc/{pod.pid}/environ", "rb") as f:
        raw = f.read()
    environ = dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)
    assert environ == {**POD_ENV, "PATH": environ["PATH"]}
    assert pod.environ() == environ
    env_in_pod = py_in_pod(pod, "import os, json; print(json.dumps(dict(os.environ)))")
    assert json.loads(env_in_pod)["DATABASE_URL"] == "postgres://db"


def test_run_cwd_and_extra_env(pod: Pod) -> None:
    proc = pod.run(
        ["sh", "-c", "pwd; echo $EXTRA $POD_ONLY"],
        cwd="/etc/podinfo",
        extra_env={"EXTRA": "x"},
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=10)
    assert out == "/etc/podinfo\nx 1\n"
    with pytest.raises(subprocess.CalledProcessError):
        pod.exec_output(["false"])


# --------------------------------------------------------------------------------------------- servers


def test_redis_inside_pod(pod: Pod) -> None:
    code = f"import redis; print(redis.Redis(port={REDIS_PORT}).get('pod:name').decode())"
    assert py_in_pod(pod, code).strip() == "api"
    assert pod.exec_output(["redis-cli", "-p", str(REDIS_PORT), "GET", "pod:name"]).strip() == "api"
    assert refused(pod.ip, REDIS_PORT)


def test_tls_verifies_with_ca_inside_pod(pod: Pod) -> None:
    code = (
        "import ssl, urllib.request\n"
        f"ctx = ssl.create_default_context(cafile={pod.tls_ca_file!r})\n"
        f"print(urllib.request.urlopen('https://{TLS_HOSTNAME}:{TLS_PORT}/', context=ctx, timeout=10)"
        ".read().decode())"
    )
    assert json.loads(py_in_pod(pod, code)) == {"server": "tls", "pod": "api"}
    # From the host by pod IP, with the right server name, it verifies too; without the CA it must not.
    ctx = ssl.create_default_context(cafile=pod.tls_ca_file)
    with socket.create_connection((pod.ip, TLS_PORT), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=TLS_HOSTNAME) as tls:
            assert tls.version() is not None
    with pytest.raises(ssl.SSLError), socket.create_connection((pod.ip, TLS_PORT), timeout=10) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname=TLS_HOSTNAME)


def test_udp_echo(pod: Pod) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"ping", (pod.ip, UDP_ECHO_PORT))
        data, peer = sock.recvfrom(65535)
    assert data == b"echo:ping" and peer == (pod.ip, UDP_ECHO_PORT)
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
        f"s.sendto(b'x', ('127.0.0.1', {UDP_LOOPBACK_ECHO_PORT})); print(s.recvfrom(100)[0].decode())"
    )
    assert py_in_pod(pod, code).strip() == "echo:x"


def test_tcp_sink_hash(pod: Pod) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    with socket.create_connection((pod.ip, TCP_SINK_PORT), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()


def test_tcp_echo_half_close_and_concurrency(pod: Pod) -> None:
    import concurrent.futures

    def roundtrip(size: int) -> bool:
        data = os.urandom(size)
        with socket.create_connection((pod.ip, TCP_ECHO_PORT), timeout=30) as sock:
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                sender = ex.submit(lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
                received = bytearray()
                while chunk := sock.recv(256 * 1024):
                    received += chunk
                sender.result()
        return bytes(received) == data

    assert roundtrip(20 * 1024 * 1024)
    with concurrent.futures.ThreadPoolExecutor(50) as ex:
        assert all(ex.map(roundtrip, [64 * 1024] * 100))


def test_tcp_slow_never_reads(pod: Pod) -> None:
    with socket.create_connection((pod.ip, TCP_SLOW_PORT), timeout=10) as sock:
        sock.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            for _ in range(10_000):
                sent += sock.send(b"x" * 65536)
        assert sent > 0


# ------------------------------------------------------------------------------------------- lifecycle


def test_close_removes_everything(net: Network) -> None:
    pod = net.add_pod(PodSpec(name="gone", servers=True))
    netns, pid, veth, workdir = pod.netns, pod.pid, pod.veth, pod.workdir
    server_pids = [p.pid for p in pod.servers.values()]
    assert netns in os.listdir("/run/netns")
    pod.close()
    pod.close()  # idempotent
    assert netns not in os.listdir("/run/netns")
    assert not os.path.exists(f"/sys/class/net/{veth}")
    assert not workdir.exists()
    for p in [pid, *server_pids]:
        assert not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] == "Z"
    assert pod not in net.pods


def test_network_close_and_cleanup_leftovers() -> None:
    net = Network.create()
    pod = net.add_pod(PodSpec(name="x", servers=False))
    bridge, netns = net.bridge, pod.netns
    # Simulate leftovers of a killed run: a netns with a process and a bridge, both without owner lock.
    tag = os.urandom(4).hex()
    old_ns, old_br = f"mpt-{tag}-old", f"mpbr{tag}"
    subprocess.run(["ip", "netns", "add", old_ns], check=True)
    subprocess.run(["ip", "link", "add", old_br, "type", "bridge"], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", old_ns, "sleep", "300"])
    cleanup_leftovers()  # (a concurrent test run may beat us to it, hence no check of the return value)
    assert orphan.wait(timeout=10) != 0
    assert old_ns not in os.listdir("/run/netns") and not os.path.exists(f"/sys/class/net/{old_br}")
    # Live resources of this process are untouched.
    assert netns in os.listdir("/run/netns") and os.path.exists(f"/sys/class/net/{bridge}")
    assert not pod.closed
    net.close()
    net.close()
    assert pod.closed
    assert netns not in os.listdir("/run/netns")
    assert not os.path.exists(f"/sys/class/net/{bridge}")


def test_second_network_gets_another_subnet(net: Network) -> None:
    with Network.create() as other:
        assert other.subnet != net.subnet
        assert other.gateway != net.gateway
