"""Which loopback connects stay on the laptop because a listener of the session takes them, and the names each
address was resolved from (mirror_py.shim.local_listeners, mirror_py.shim.resolved)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from mirror_py.config import ConfigError, load_config, shim_settings
from mirror_py.shim import dns, local_listeners, net, resolved, settings
from mirror_py.shim.rules import TrafficFilter

# --- /proc/net tables --------------------------------------------------------------------------------------

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
TCP = HEADER + "".join((
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0\n",
    "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0\n",
    "   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4\n",
    "   3: 0500007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0 100 0\n",
))
TCP6 = HEADER + "".join((
    "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 2001 1 0 100 0\n",
    "   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 2002 1 0 100 0\n",
    "   2: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 2003 1 0 100 0\n",
))
UDP = HEADER + "".join((
    "  10: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0 0\n",
    "  11: 0100007F:0036 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0 0\n",
))


def _found(text: str, proto: str, ip: str, port: int, table: str) -> set[int]:
    key = local_listeners.loopback_key(ip)
    assert key is not None
    addresses = local_listeners.wanted_addresses(key, "little").get(table, set())
    return local_listeners.listening_inodes(text, proto, addresses, port)


def test_kernel_hex_matches_the_tables_spelling():
    assert local_listeners.kernel_hex(bytes((127, 0, 0, 1)), "little") == "0100007F"
    assert local_listeners.kernel_hex(bytes((127, 0, 0, 1)), "big") == "7F000001"
    assert local_listeners.kernel_hex(bytes(15) + b"\1", "little") == "00000000000000000000000001000000"


def test_entries_parse_address_port_state_and_inode():
    rows = list(local_listeners.entries(TCP))
    assert rows[0] == ("0100007F", "1F90", "0A", 1001)
    assert rows[3] == ("0500007F", "1F91", "0A", 1004)
    assert list(local_listeners.entries(HEADER + "garbage line\n")) == []


def test_tcp_listener_on_the_address_or_the_wildcard():
    assert _found(TCP, "tcp", "127.0.0.1", 8080, "4") == {1001}  # not the accepted connection 1003
    assert _found(TCP, "tcp", "127.0.0.1", 22, "4") == {1002}  # 0.0.0.0:22
    assert _found(TCP, "tcp", "127.0.0.9", 22, "4") == {1002}
    assert _found(TCP, "tcp", "127.0.0.5", 8081, "4") == {1004}
    assert _found(TCP, "tcp", "127.0.0.1", 8081, "4") == set()  # another loopback address
    assert _found(TCP, "tcp", "0.0.0.0", 8080, "4") == {1001}  # "this host": loopback


def test_tcp6_listener_loopback_wildcard_and_mapped():
    assert _found(TCP6, "tcp", "::1", 8080, "6") == {2001}
    assert _found(TCP6, "tcp", "::1", 22, "6") == {2002}
    assert _found(TCP6, "tcp", "127.0.0.1", 22, "6") == {2002}  # a dual-stack [::] listener takes IPv4 too
    assert _found(TCP6, "tcp", "::ffff:127.0.0.1", 8082, "6") == {2003}
    assert _found(TCP6, "tcp", "127.0.0.1", 8082, "6") == {2003}
    assert _found(TCP6, "tcp", "::", 8080, "6") == {2001}


def test_udp_counts_bound_sockets_not_connected_ones():
    assert _found(UDP, "udp", "127.0.0.1", 53, "4") == {3001}
    assert _found(UDP, "udp", "127.0.0.1", 54, "4") == set()


@pytest.mark.parametrize("ip", ["10.0.0.1", "::2", "fe80::1", "192.168.1.1", "::ffff:10.0.0.1", "host"])
def test_other_addresses_are_not_this_hosts(ip):
    assert local_listeners.loopback_key(ip) is None


# --- the laptop's real tables and owners ---------------------------------------------------------------------


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_finds_this_processes_listeners_by_inode():
    with socket.socket() as s, socket.socket(socket.AF_INET6) as s6, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert local_listeners.laptop_listeners("tcp", "127.0.0.1", port) == {_inode(s)}
        assert local_listeners.laptop_listeners("tcp", "127.0.0.2", port) == set()
        assert local_listeners.laptop_listeners("udp", "127.0.0.1", port) == set()
        s6.bind(("::", 0))
        s6.listen()
        port6 = s6.getsockname()[1]
        assert local_listeners.laptop_listeners("tcp", "::1", port6) == {_inode(s6)}
        assert local_listeners.laptop_listeners("tcp", "127.0.0.1", port6) == {_inode(s6)}
        u.bind(("127.0.0.1", 0))
        assert local_listeners.laptop_listeners("udp", "127.0.0.1", u.getsockname()[1]) == {_inode(u)}
        assert local_listeners.session_owns({_inode(s), _inode(u)})


def test_sock_diag_and_proc_report_the_same_listeners(monkeypatch):
    with socket.socket() as s, socket.socket(socket.AF_INET6) as s6, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as connected:
        s.bind(("0.0.0.0", 0))
        s.listen()
        s6.bind(("::1", 0))
        s6.listen()
        u.bind(("127.0.0.3", 0))
        connected.bind(("127.0.0.1", 0))
        connected.connect(u.getsockname())
        cases = [("tcp", "127.0.0.7", s, {_inode(s)}), ("tcp", "::1", s6, {_inode(s6)}),
                 ("tcp", "127.0.0.1", s6, set()), ("udp", "127.0.0.3", u, {_inode(u)}),
                 ("udp", "127.0.0.1", connected, set())]
        for proto, ip, sock, expected in cases:
            wanted = local_listeners.wanted_raw(local_listeners.loopback_key(ip))
            port = sock.getsockname()[1]
            assert local_listeners.from_netlink(proto, wanted, port) == expected, (proto, ip)
            assert local_listeners.from_proc(proto, wanted, port) == expected, (proto, ip)
        # Without sock_diag (a kernel or sandbox that refuses it) the answer comes from /proc.
        monkeypatch.setattr(local_listeners, "_netlink_broken", [])

        def refused(*args):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(local_listeners, "from_netlink", refused)
        assert local_listeners.laptop_listeners("tcp", "127.0.0.7", s.getsockname()[1]) == {_inode(s)}
        assert local_listeners._netlink_broken == [True]


def test_sock_diag_reply_parsing():
    import struct

    def message(family: int, state: int, port: int, addr: bytes, inode: int) -> bytes:
        body = bytes((family, state, 0, 0)) + struct.pack("!HH", port, 0) + addr.ljust(16, b"\0") + bytes(16 + 12)
        body += struct.pack("=IIIII", 0, 0, 0, 0, inode)
        return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body

    data = message(2, 10, 8080, bytes((127, 0, 0, 1)), 77) + message(10, 10, 22, bytes(16), 78)
    rows, done = local_listeners.diag_sockets(data)
    assert rows == [(10, bytes((127, 0, 0, 1)), 8080, 77), (10, bytes(16), 22, 78)] and not done
    assert local_listeners.diag_sockets(struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)) == ([], True)
    with pytest.raises(OSError):
        local_listeners.diag_sockets(struct.pack("=IHHIIi", 20, 2, 0, 1, 0, -1))
    with pytest.raises(OSError):
        local_listeners.diag_sockets(struct.pack("=IHHII", 400, 20, 2, 1, 0))


_LISTENER = textwrap.dedent('''
    import os, socket, sys, time
    detach = sys.argv[1] == "detach"
    if detach:
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[2])))
    s.listen()
    print(os.getpid(), s.getsockname()[1], os.fstat(s.fileno()).st_ino, flush=True)
    time.sleep(120)
''')


class Foreign:
    """A listener in another process: a child (descendant) or a double-forked daemon (not a descendant)."""

    def __init__(self, how: str, env: dict, port: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LISTENER, how, str(port)], env=env,
                                     stdout=subprocess.PIPE, text=True)
        pid, port_text, inode = self.proc.stdout.readline().split()
        self.pid, self.port, self.inode = int(pid), int(port_text), int(inode)

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_PY_SESSION"}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("MIRROR_PY_SESSION", raising=False)
    local_listeners.forget_all()
    resolved.forget_all()
    yield
    local_listeners.forget_all()
    resolved.forget_all()


def test_owner_rule_descendant_session_environment_or_neither(monkeypatch):
    child = Foreign("child", _env())
    daemon = Foreign("detach", _env())
    joined = Foreign("detach", _env(MIRROR_PY_SESSION="/run/s.sock"))
    try:
        assert local_listeners.session_owns({child.inode})  # a descendant
        assert not local_listeners.session_owns({daemon.inode})  # neither ours nor started under the session
        assert not local_listeners.session_owns({joined.inode})  # this process is in no session
        assert local_listeners.session_owns({joined.inode}, session="/run/s.sock")
        assert not local_listeners.session_owns({joined.inode}, session="/run/other.sock")
        monkeypatch.setenv("MIRROR_PY_SESSION", "/run/s.sock")
        for mode, own, foreign in (("session", True, False), ("laptop", True, True), ("none", False, False)):
            assert local_listeners.stays_local("tcp", "127.0.0.1", joined.port, mode) is own
            assert local_listeners.stays_local("tcp", "127.0.0.1", daemon.port, mode) is foreign
            assert local_listeners.stays_local("tcp", "127.0.0.1", child.port, mode) is own
    finally:
        for p in (child, daemon, joined):
            p.close()


def test_a_new_listener_on_the_port_is_judged_again():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert local_listeners.stays_local("tcp", "127.0.0.1", port, "session")
    daemon = Foreign("detach", _env(), port)
    try:
        assert not local_listeners.stays_local("tcp", "127.0.0.1", port, "session")
    finally:
        daemon.close()
    assert not local_listeners.stays_local("tcp", "127.0.0.1", port, "session")  # nobody listens


def test_unreadable_proc_means_no_listener(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(local_listeners, "_netlink_broken", [True])
        monkeypatch.setattr(local_listeners, "open", denied, raising=False)
        assert local_listeners.laptop_listeners("tcp", "127.0.0.1", port) == set()
        assert not local_listeners.stays_local("tcp", "127.0.0.1", port, "laptop")
        monkeypatch.undo()
        monkeypatch.setattr(local_listeners, "session_owns", lambda inodes: 1 / 0)
        assert not local_listeners.stays_local("tcp", "127.0.0.1", port, "session")  # never raises


# --- the order of the decision in net.plan ------------------------------------------------------------------


def _settings(local_listeners_mode: str | None = None, **flt: list[str]) -> settings.Settings:
    out: dict = {"filter": flt}
    if local_listeners_mode is not None:
        out["local_listeners"] = local_listeners_mode
    return settings.Settings({"outgoing": out})


def test_filter_rule_then_own_listener_then_remote():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not net.goes_remote(_settings(), "tcp", "127.0.0.1", port, ())  # default "session": ours
        assert net.goes_remote(_settings("none"), "tcp", "127.0.0.1", port, ())
        assert net.goes_remote(_settings(), "tcp", "127.0.0.1", port + 1 if port < 65535 else 1, ())
        assert net.goes_remote(_settings(remote=[f"tcp://127.0.0.1:{port}"]), "tcp", "127.0.0.1", port, ())
        assert not net.goes_remote(_settings(local=["10.0.0.0/8"]), "tcp", "127.0.0.1", port, ())
        assert not net.goes_remote(_settings(remote=["10.0.0.0/8"]), "tcp", "127.0.0.9", 80, ())
    assert net.goes_remote(_settings(), "tcp", "127.0.0.1", port, ())  # closed: the pod's port again


def test_host_name_rules_apply_to_every_name_an_address_came_from():
    flt = TrafficFilter(local=["*.corp.example"])
    assert flt.rule_says("tcp", "10.1.2.3", 443, ("www.example.org", "svc.corp.example")) is False
    assert flt.rule_says("tcp", "10.1.2.3", 443, ("www.example.org",)) is None
    assert flt.rule_says("tcp", "10.1.2.3", 443) is None
    assert TrafficFilter(remote=["db.internal"]).rule_says("tcp", "10.0.0.5", 5432, ("db.internal",)) is True
    assert TrafficFilter().rule_says("tcp", "10.0.0.5", 5432, ("db.internal",)) is None
    assert not net.goes_remote(_settings(local=["*.corp.example"]), "tcp", "10.1.2.3", 443, ("svc.corp.example",))


def test_resolved_names_are_kept_per_address_and_bounded(monkeypatch):
    resolved.remember("10.0.0.1", ["A.corp.example.", "b.corp.example"])
    resolved.remember("10.0.0.1", ["a.corp.example", "10.0.0.1"])
    assert resolved.names_for("10.0.0.1") == ("a.corp.example", "b.corp.example")
    assert resolved.names_for("::ffff:10.0.0.1") == ("a.corp.example", "b.corp.example")
    monkeypatch.setattr(resolved, "MAX_ADDRESSES", 3)
    monkeypatch.setattr(resolved, "MAX_NAMES", 2)
    for i in range(2, 6):
        resolved.remember(f"10.0.0.{i}", [f"h{i}", f"g{i}", f"f{i}"])
    assert resolved.names_for("10.0.0.1") == ()  # the oldest address went first
    assert resolved.names_for("10.0.0.5") == ("g5", "f5")
    assert len(resolved._names) == 3


def test_local_lookups_are_remembered_too(monkeypatch):
    settings.reset({"dns": {"filter": {"local": ["*.corp.example"]}}})
    try:
        def laptop_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", port))]

        def laptop_ex(host):
            return "svc.corp.example", ["alias.corp.example"], ["10.9.8.6"]

        dns.make_getaddrinfo(laptop_getaddrinfo)("svc.corp.example", 80)
        dns.make_gethostbyname(lambda host: "10.9.8.5")("one.corp.example")
        dns.make_gethostbyname_ex(laptop_ex)("two.corp.example")
        assert resolved.names_for("10.9.8.7") == ("svc.corp.example",)
        assert resolved.names_for("10.9.8.5") == ("one.corp.example",)
        assert resolved.names_for("10.9.8.6") == ("two.corp.example", "svc.corp.example", "alias.corp.example")
    finally:
        settings.reset()


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["session", "laptop", "none"])
def test_config_values_reach_the_shim(tmp_path, value):
    (tmp_path / "mirror-py.toml").write_text(f'[network.outgoing]\nlocal_listeners = "{value}"\n')
    cfg = load_config(cwd=tmp_path)
    data = shim_settings(cfg)
    assert data["outgoing"]["local_listeners"] == value
    assert settings.Settings(data).local_listeners == value


def test_config_default_and_bad_value(tmp_path):
    assert load_config(cwd=tmp_path).network.outgoing.local_listeners == "session"
    (tmp_path / "mirror-py.toml").write_text('[network.outgoing]\nlocal_listeners = "all"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cwd=tmp_path)
    assert "network.outgoing.local_listeners" in str(err.value) and "laptop" in str(err.value)
