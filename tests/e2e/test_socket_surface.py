"""Every Python surface of a socket gives the answer it would give in the pod: duplicated descriptors, connected
UDP sockets, IPv6 and the words of an error. Each probe runs natively in the pod and through mirror-py, and the
two results must be equal."""

from __future__ import annotations

import errno

import pytest

from tests.sandbox.netpod import TCP_ECHO_PORT, UDP_ECHO_PORT, UDP_LOOPBACK_ECHO_PORT


def test_dup_fromfd_and_fileno_sockets_see_the_pod_side(through, native, pod):
    args = (pod.ip, str(TCP_ECHO_PORT), str(UDP_ECHO_PORT))
    out = through("dup_views", *args)
    assert out == native("dup_views", *args)
    peer = [pod.ip, TCP_ECHO_PORT]
    assert [out[k]["peer"] for k in ("dup", "fromfd", "fileno")] == [peer] * 3
    assert all(out[k]["same_sockname"] for k in ("dup", "fromfd", "fileno"))
    assert out["after_close"] == peer and out["echo_after_close"] == "still here"
    assert out["udp_dup_peer"] == [pod.ip, UDP_ECHO_PORT] and out["udp_dup_echo"] == "echo:dup"


def test_a_udp_socket_outlives_a_forked_childs_close(through, native):
    args = ("127.0.0.1", str(UDP_LOOPBACK_ECHO_PORT))
    out = through("udp_shared_with_child", *args)
    assert out == native("udp_shared_with_child", *args)
    assert out == {"before": "echo:before", "after": "echo:after"}


def test_connected_udp_reports_its_peer_and_sends_elsewhere_like_the_pod(through, native):
    args = ("127.0.0.1", str(UDP_LOOPBACK_ECHO_PORT), str(UDP_ECHO_PORT))
    out = through("udp_connected", *args)
    assert out == native("udp_connected", *args)
    peer = ["127.0.0.1", UDP_LOOPBACK_ECHO_PORT]
    assert out["recvfrom"] == ["echo:a", peer]
    assert out["recvfrom_into"] == ["echo:c", peer] and out["recvmsg"] == ["echo:d", peer]
    assert (out["sendto_peer"], out["sendmsg"], out["sendmsg_peer"]) == ("echo:e", "echo:fg", "echo:h")
    assert out["other_saw_our_port"] == [True, True] and out["after_other"] == "echo:i"
    assert out["unconnected_sendmsg"] == ["echo:unconnected", peer]
    assert out["asyncio"] == ["echo:aio", peer]


def _ipv6_cases(pod):
    return [
        (pod.ip6, "0"),
        (pod.ip6, "1"),
        ("::1", "1"),
        ("::1", "0"),
        ("::ffff:" + pod.ip, "0"),
        ("::ffff:127.0.0.1", "0"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["pod6", "pod6-v6only", "lo6-v6only", "lo6", "mapped-pod",
                                                "mapped-lo"])
def test_ipv6_sockets_reach_the_pod(through, native, pod, case):
    if pod.ip6 is None:
        pytest.skip("the host has no IPv6, so the sandbox pod has none")
    host, v6only = _ipv6_cases(pod)[case]
    args = (host, str(TCP_ECHO_PORT), str(UDP_ECHO_PORT), v6only)
    out = through("ipv6", *args)
    assert out == native("ipv6", *args)
    assert out["echo"] == "over six"
    assert out["peer"] == [host, TCP_ECHO_PORT, 0, 0]
    assert out["udp"] == ["echo:six", [host, UDP_ECHO_PORT, 0, 0]]


def test_refused_connect_says_what_the_kernel_says(through, native):
    out = through("refused_words", "127.0.0.1", "1")
    assert out == native("refused_words", "127.0.0.1", "1")
    assert out["socket"] == {"type": "ConnectionRefusedError", "args": [errno.ECONNREFUSED, "Connection refused"],
                             "str": "[Errno 111] Connection refused"}
    assert out["redis"] == "Error 111 connecting to 127.0.0.1:1. Connection refused."


def test_an_expired_socket_timeout_is_pythons_own_timeout(through, native, pod):
    # Unused addresses on the pod's subnet: no ARP answer for seconds, so the 1 s socket timeout expires first.
    # One for each run: after a failed ARP the pod knows at once that the first one is unreachable.
    prefix = pod.ip.rsplit(".", 2)[0]
    out = through("connect_timeout", prefix + ".0.201", "80", "1")
    assert out == native("connect_timeout", prefix + ".0.202", "80", "1")
    assert out["connect"] == {"type": "TimeoutError", "args": ["timed out"], "errno": None, "str": "timed out"}
    assert out["connect_ex"] == errno.EWOULDBLOCK
