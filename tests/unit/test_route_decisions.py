"""The words a routing decision is reported with (route lines, session status) name the rule that made it."""

from __future__ import annotations

import pytest

from mirror_py.shim import net
from mirror_py.shim.settings import Settings


def _settings(filter_: dict | None = None, local_listeners: str = "none") -> Settings:
    return Settings({"outgoing": {"filter": filter_ or {}, "local_listeners": local_listeners}})


@pytest.mark.parametrize(("filter_", "ip", "names", "expected"), [
    (None, "10.0.3.7", ("postgres",), (True, "outgoing default: remote")),
    ({"local": ["10.96.0.0/12"]}, "10.96.0.1", (), (False, "network.outgoing.filter local rule '10.96.0.0/12'")),
    ({"local": ["10.96.0.0/12"]}, "10.0.3.7", (), (True, "outgoing default: remote")),
    ({"remote": ["*.svc.cluster.local"]}, "10.0.3.7", ("db.staging.svc.cluster.local",),
     (True, "network.outgoing.filter remote rule '*.svc.cluster.local'")),
    ({"remote": ["*.svc.cluster.local"]}, "93.184.216.34", ("example.com",),
     (False, "outgoing default: local, as network.outgoing.filter lists what is remote")),
])
def test_each_decision_says_its_rule(filter_, ip, names, expected):
    assert net.decide(_settings(filter_), "tcp", ip, 5432, names) == expected
    assert net.goes_remote(_settings(filter_), "tcp", ip, 5432, names) is expected[0]


def test_a_listener_of_this_process_is_named_as_such():
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert net.decide(_settings(local_listeners="session"), "tcp", "127.0.0.1", port, ()) == (
            False, "this process listens there")
        assert net.decide(_settings(local_listeners="laptop"), "tcp", "127.0.0.1", port, ()) == (
            False, "a listener on this machine takes it (network.outgoing.local_listeners = laptop)")
