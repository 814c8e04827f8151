"""The shim's socket registry: one entry per kernel socket, found from every descriptor and Python object of
it, and released (with its UDP relay) only when this process's last known descriptor of it closes.

Real local sockets stand in for the app's relay connections; the session's RPC is replaced by a recorder.
"""

from __future__ import annotations

import os
import socket
import ssl

import pytest

from mirror_py.shim import net, patches, settings

ROWS = tuple(row for row in patches.SOCKET_SURFACE if row.factory.startswith("net."))
POD_PEER, POD_SOCK = ("10.244.1.2", 7000), ("10.244.1.3", 40001)


@pytest.fixture
def surface(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(net.rpc, "call", lambda req: calls.append(req) or {"ok": {}})
    settings.reset({"outgoing": {"enabled": False}})  # the test's own connections stay local
    net.forget_all()
    patches.install(ROWS)
    try:
        yield calls
    finally:
        patches.uninstall()
        net.forget_all()
        settings.reset()


def _tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def _register_tcp(sock: socket.socket) -> net.Remote:
    return net.register(sock, net.Remote("tcp", POD_PEER, POD_SOCK, sock.getpeername(), sock.getsockname()))


def test_every_descriptor_and_object_of_a_socket_sees_the_remote_view(surface):
    client, accepted = _tcp_pair()
    _register_tcp(client)
    others = [client.dup(), socket.fromfd(client.fileno(), client.family, client.type),
              socket.socket(client.family, client.type, fileno=os.dup(client.fileno()))]
    for sock in (client, *others):
        assert sock.getpeername() == POD_PEER and sock.getsockname() == POD_SOCK
    client.close()
    for sock in others:  # the socket lives on in them
        assert sock.getpeername() == POD_PEER
    for sock in others:
        sock.close()
    assert net.registry == {}
    accepted.close()


def test_a_socket_wrapped_for_tls_keeps_its_view_and_releases_on_close(surface):
    client, accepted = _tcp_pair()
    _register_tcp(client)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    wrapped = ctx.wrap_socket(client, server_hostname="pod", do_handshake_on_connect=False)
    assert wrapped.getpeername() == POD_PEER
    wrapped.close()
    assert net.registry == {}
    accepted.close()


def test_a_udp_relay_is_released_once_when_the_last_descriptor_closes(surface):
    app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    app.bind(("127.0.0.1", 0))
    app.connect(relay.getsockname())
    net.register(app, net.Remote("udp", POD_PEER, POD_SOCK, relay.getsockname(), app.getsockname(),
                                 door=relay.getsockname()))
    copy = app.dup()
    app.close()
    assert not [c for c in surface if c["op"] == "release"]
    assert copy.getpeername() == POD_PEER
    copy.close()
    assert [c["relay"] for c in surface if c["op"] == "release"] == [list(relay.getsockname())]
    relay.close()



def test_the_session_keeps_a_udp_relay_while_any_process_holds_the_apps_socket():
    from mirror_py.session.relays import app_socket_open

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        app = socket.socket(family, socket.SOCK_DGRAM)
        app.bind((host, 0))
        address = app.getsockname()[:2]
        copy = app.dup()  # as a forked child's copy would
        app.close()
        assert app_socket_open(address)
        copy.close()
        assert not app_socket_open(address)
