"""Outgoing TCP/UDP and DNS from the host through mirror-py, checked against the same probe run in the pod."""

from __future__ import annotations

import errno
import socket

import pytest

LOOPBACK_URL = "http://127.0.0.1:8081/loop"
NAMED_URL = "http://api.pod.internal:8081/named"


@pytest.mark.parametrize("client", ["http_requests", "http_httpx", "http_httpx_async", "http_aiohttp"])
def test_http_clients_reach_the_pods_loopback_by_name(through, client):
    # api.pod.internal is only in the pod's /etc/hosts and 8081 listens only on the pod's 127.0.0.1.
    out = through(client, NAMED_URL)
    assert out.get("status") == 200, out
    assert out["body"]["server"] == "loopback"
    assert out["body"]["pod"] == "api"
    assert out["body"]["path"] == "/named"


def test_pod_ip_server_sees_a_client_inside_the_pod(through, pod):
    out = through("http_requests", f"http://{pod.ip}:8080/ip")
    assert out["body"]["server"] == "podip"
    # The connection came from the pod's own address, not from the host side of the bridge.
    assert out["body"]["client"][0] == pod.ip


def test_redis(through):
    out = through("redis_get", "127.0.0.1", "6379", "pod:name")
    assert out == {"value": "api", "written": "yes"}


def test_asyncio_streams_half_close_and_peername(through):
    out = through("asyncio_echo", "api.pod.internal", "7000")
    assert out == {"echo": "hello over asyncio", "peer": ["127.0.0.1", 7000]}


def test_plain_socket_shutdown_wr_then_reply_arrives(through, pod):
    out = through("socket_echo", pod.ip, "7000")
    assert out == {"received": 100000, "peer": [pod.ip, 7000]}


def test_tls_with_hostname_verification(through, pod):
    out = through("tls", "secure.pod.internal", "8443", str(pod.tls_ca_file))
    assert "body" in out, out
    assert out["body"]["server"] == "tls"
    assert "secure.pod.internal" in out["san"]
    assert out["peer"] == ["127.0.0.1", 8443]
    bad = through("tls_wrong_name", "secure.pod.internal", "8443", str(pod.tls_ca_file))
    assert bad["verified"] is False


def test_requests_over_tls_with_the_pods_ca(through, pod):
    out = through("http_requests", "https://secure.pod.internal:8443/", str(pod.tls_ca_file))
    assert out["body"]["server"] == "tls"


def test_nonblocking_connect_select_and_selectors(through):
    out = through("nonblocking", "127.0.0.1", "7000")
    assert out == {"rc_ok": True, "writable": True, "so_error": 0, "echo": "ping"}


def test_udp_unconnected_connected_and_asyncio(through):
    # 9998 is the pod's loopback-only UDP echo.
    out = through("udp", "127.0.0.1", "9998")
    assert out["one"] == "echo:one" and out["from"] == ["127.0.0.1", 9998]
    assert out["two"] == "echo:two" and out["from2"] == ["127.0.0.1", 9998]
    assert out["three"] == "echo:three" and out["peer"] == ["127.0.0.1", 9998]
    assert out["four"] == "echo:four"


def test_refused_port_raises_connection_refused(through, native):
    out = through("connect_error", "127.0.0.1", "1")
    assert out == native("connect_error", "127.0.0.1", "1")
    assert out["error"] == "ConnectionRefusedError" and out["errno"] == errno.ECONNREFUSED


def test_unreachable_address_gives_the_pods_errno(through, native, pod):
    # An unused address on the pod's own subnet: nobody answers ARP, so the pod gets EHOSTUNREACH.
    dead = pod.ip.rsplit(".", 1)[0] + ".254"
    out = through("connect_error", dead, "80")
    assert out == native("connect_error", dead, "80")
    assert out["errno"] in (errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ENETUNREACH)


def test_unknown_name_is_eai_noname(through, native):
    out = through("resolve", "no-such-service.pod.internal")
    assert out == native("resolve", "no-such-service.pod.internal")
    assert out["is_noname"] is True and out["errno"] == socket.EAI_NONAME


def test_dns_answers_come_from_the_pod(through, native):
    out = through("resolve", "secure.pod.internal")
    assert out == {"addresses": ["127.0.0.1"]}
    assert out == native("resolve", "secure.pod.internal")


@pytest.mark.parametrize("name", ["api.pod.internal", "nowhere.pod.internal"])
def test_gethostbyname_and_gethostbyname_ex_parity(through, native, name):
    # api.pod.internal is only in the pod's /etc/hosts; the other name is unknown there (EAI_NONAME's text).
    out = through("byname", name)
    assert out == native("byname", name)
    if name == "api.pod.internal":
        assert out["gethostbyname"] == "127.0.0.1"
        assert out["gethostbyname_ex"] == ["api.pod.internal", [], ["127.0.0.1"]]
    else:
        assert out["gethostbyname"]["error"] == "gaierror"


def test_hostname_and_reverse_lookups_parity(through, native, pod):
    out = through("names", pod.ip)
    assert out["hostname"] == out["nodename"] == out["platform_node"] == "api-7d9f"
    assert out == native("names", pod.ip)


def test_dns_filter_keeps_a_name_local(through):
    out = through("resolve", "secure.pod.internal", extra=["--config", "tests/e2e/configs/dns_local.toml"])
    # Resolved on the host, which does not know the pod-only name.
    assert out.get("error") == "gaierror"


def test_outgoing_filter_keeps_an_address_local(through, pod):
    # With 127.0.0.1:8081 local, the host's own loopback is used, where nothing listens.
    out = through("connect_error", "127.0.0.1", "8081",
                  extra=["--config", "tests/e2e/configs/outgoing_local.toml"])
    assert out["error"] == "ConnectionRefusedError"
    remote = through("connect_error", "127.0.0.1", "8081")
    assert remote == {"connected": True}
