"""The agent's answer to "does anything in the target listen on this loopback port?"
(mirror_py_agent/listeners.py), checked against real sockets of this machine."""

from __future__ import annotations

import socket

import pytest

from mirror_py_agent import listeners


def _asks(proto: str, ip: str, port: int) -> bool:
    return listeners.listens({"proto": proto, "ip": ip, "port": port})["listens"]


def test_a_tcp_listener_on_v4_loopback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not _asks("tcp", "127.0.0.1", port)  # bound, not listening yet
        s.listen()
        assert _asks("tcp", "127.0.0.1", port)
        assert _asks("tcp", "::ffff:127.0.0.1", port)
        assert _asks("tcp", "0.0.0.0", port)
        assert not _asks("tcp", "127.0.0.2", port)
        assert not _asks("tcp", "::1", port)
        assert not _asks("udp", "127.0.0.1", port)


def test_wildcard_and_dual_stack_listeners():
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        s.listen()
        port = s.getsockname()[1]
        for ip in ("127.0.0.1", "127.1.2.3", "::1", "::"):
            assert _asks("tcp", ip, port), ip


def test_a_bound_udp_socket_and_a_connected_one():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        u.bind(("127.0.0.1", 0))
        assert _asks("udp", "127.0.0.1", u.getsockname()[1])
        c.bind(("127.0.0.1", 0))
        c.connect(u.getsockname())
        assert not _asks("udp", "127.0.0.1", c.getsockname()[1])


@pytest.mark.parametrize("args", [
    {"proto": "sctp", "ip": "127.0.0.1", "port": 1},
    {"proto": "tcp", "ip": "10.0.0.1", "port": 1},
    {"proto": "tcp", "ip": "127.0.0.1", "port": "1"},
    {"proto": "tcp", "ip": "::2", "port": 1},
])
def test_bad_arguments_are_value_errors(args):
    with pytest.raises(ValueError):
        listeners.listens(args)
