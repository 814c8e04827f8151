"""The agent's stub resolver against name servers that misbehave in the ways real ones do: the search list
and ndots, truncation (TCP), a failing first server, CNAME chains, silence, forged answers; and resolver files
that try to reach outside the target's root or to block the agent."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mirror_py_agent import dnswire, files, resolver

ROOT = Path(__file__).resolve().parents[2]


def _name(data: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while data[offset]:
        labels.append(data[offset + 1:offset + 1 + data[offset]].decode())
        offset += 1 + data[offset]
    return ".".join(labels), offset + 1


def _wire(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


class FakeDns:
    """A name server on ``address``: ``zone`` maps (name, qtype) to records (type, data); ``mode`` is
    ``answer``, ``servfail``, ``silent``, ``forge`` (a wrong-id answer first) or ``truncate`` (UDP answers
    with more than 4 records come back truncated and empty)."""

    def __init__(self, address: str, port: int, zone: dict, mode: str = "answer") -> None:
        self.zone, self.mode, self.asked = zone, mode, []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((address, port))
        self.tcp.listen(8)
        self.tcp_used = 0
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def answer(self, query: bytes, tcp: bool) -> bytes:
        ident = struct.unpack(">H", query[:2])[0]
        qname, end = _name(query, 12)
        qtype = struct.unpack(">H", query[end:end + 2])[0]
        self.asked.append((qname, qtype, "tcp" if tcp else "udp"))
        records = []
        current = qname.lower()
        for _ in range(8):
            chain = self.zone.get((current, 5))
            if not chain:
                break
            records.append((current, 5, chain[0]))
            current = chain[0]
        records += [(current, qtype, d) for d in self.zone.get((current, qtype), [])]
        known = any(n == current for n, _ in self.zone) or records
        rcode = 2 if self.mode == "servfail" else (0 if known else 3)
        flags = 0x8180 | rcode
        if self.mode == "truncate" and not tcp and len(records) > 4:
            flags, records = flags | 0x0200, []
        body = query[12:end + 4]
        for owner, rtype, data in records:
            if rtype == 1:
                rdata = socket.inet_aton(data)
            elif rtype == 28:
                rdata = socket.inet_pton(socket.AF_INET6, data)
            else:
                rdata = _wire(data)
            body += _wire(owner) + struct.pack(">HHIH", rtype, 1, 30, len(rdata)) + rdata
        return struct.pack(">HHHHHH", ident, flags, 1, len(records), 0, 0) + body

    def _serve_udp(self) -> None:
        while True:
            try:
                query, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            if self.mode == "silent":
                continue
            reply = self.answer(query, False)
            if self.mode == "forge":
                forged = bytearray(reply)
                forged[0] ^= 0xFF
                forged[12 + 2:] = forged[14:]  # and garbage after the header
                self.udp.sendto(bytes(forged), peer)
            self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                self.tcp_used += 1
                size = struct.unpack(">H", conn.recv(2))[0]
                query = b""
                while len(query) < size:
                    query += conn.recv(size - len(query))
                reply = self.answer(query, True)
                conn.sendall(struct.pack(">H", len(reply)) + reply)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def port(monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.2", 0))
        free = probe.getsockname()[1]
    monkeypatch.setattr(dnswire, "DNS_PORT", free)
    return free


@pytest.fixture
def servers(port):
    made = []

    def start(address: str, zone: dict, mode: str = "answer") -> FakeDns:
        made.append(FakeDns(address, port, zone, mode))
        return made[-1]

    yield start
    for server in made:
        server.close()


def _root(tmp_path: Path, resolv: str, hosts: str = "", nsswitch: str = "hosts: files dns\n"):
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "resolv.conf").write_text(resolv)
    (tmp_path / "etc" / "hosts").write_text(hosts)
    (tmp_path / "etc" / "nsswitch.conf").write_text(nsswitch)
    return files.Root(str(tmp_path)).read_small


def _addresses(infos: list) -> list:
    return sorted({info[4][0] for info in infos})


def test_search_list_in_order_and_ndots(tmp_path, servers):
    dns = servers("127.0.0.2", {("api.b.test", 1): ["10.0.0.7"], ("x.y.z", 1): ["10.0.0.8"]})
    read = _root(tmp_path, "nameserver 127.0.0.2\nsearch a.test b.test\noptions ndots:2\n")
    assert _addresses(resolver.getaddrinfo(read, "api", 80, socket.AF_INET)) == ["10.0.0.7"]
    assert [q[0] for q in dns.asked] == ["api.a.test", "api.b.test"]
    dns.asked.clear()
    assert _addresses(resolver.getaddrinfo(read, "x.y.z", 80, socket.AF_INET)) == ["10.0.0.8"]
    assert [q[0] for q in dns.asked] == ["x.y.z"]  # two dots: as written first
    dns.asked.clear()
    with pytest.raises(socket.gaierror) as err:
        resolver.getaddrinfo(read, "gone", 80, socket.AF_INET)
    assert err.value.errno == socket.EAI_NONAME
    assert [q[0] for q in dns.asked] == ["gone.a.test", "gone.b.test", "gone"]  # as written last


def test_truncated_answer_is_asked_again_over_tcp(tmp_path, servers):
    many = [f"10.0.1.{n}" for n in range(1, 30)]
    dns = servers("127.0.0.2", {("big.test", 1): many}, mode="truncate")
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    assert _addresses(resolver.getaddrinfo(read, "big.test.", 80, socket.AF_INET, socket.SOCK_STREAM)) \
        == sorted(many)
    assert dns.tcp_used == 1


def test_a_failing_server_is_skipped_for_the_next(tmp_path, servers):
    servers("127.0.0.2", {}, mode="servfail")
    servers("127.0.0.3", {("db.test", 1): ["10.0.0.9"]})
    read = _root(tmp_path, "nameserver 127.0.0.2\nnameserver 127.0.0.3\n")
    assert resolver.gethostbyname(read, "db.test.") == "10.0.0.9"


def test_cname_chain_gives_canonical_name_and_aliases(tmp_path, servers):
    servers("127.0.0.2", {("www.test", 5): ["web.test"], ("web.test", 5): ["real.test"],
                          ("real.test", 1): ["10.0.0.10"]})
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    assert resolver.gethostbyname_ex(read, "www.test.") == ["real.test", ["www.test", "web.test"], ["10.0.0.10"]]
    infos = resolver.getaddrinfo(read, "www.test.", 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    assert infos == [[socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "real.test", ["10.0.0.10", 80]]]


def test_a_name_without_aaaa_is_nodata_for_ipv6(tmp_path, servers):
    servers("127.0.0.2", {("v4.test", 1): ["10.0.0.11"]})
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    with pytest.raises(socket.gaierror) as err:
        resolver.getaddrinfo(read, "v4.test.", 80, socket.AF_INET6)
    assert (err.value.errno, err.value.strerror) == (socket.EAI_NODATA, "No address associated with hostname")


def test_reverse_lookup_by_ptr(tmp_path, servers):
    servers("127.0.0.2", {("4.3.2.10.in-addr.arpa", 12): ["host.test"]})
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    assert resolver.gethostbyaddr(read, "10.2.3.4") == ["host.test", [], ["10.2.3.4"]]
    assert resolver.getnameinfo(read, ["10.2.3.4", 1], socket.NI_NUMERICSERV) == ["host.test", "1"]
    with pytest.raises(socket.herror) as err:
        resolver.gethostbyaddr(read, "10.2.3.5")
    assert (err.value.errno, err.value.strerror) == (1, "Unknown host")


def test_silence_is_a_temporary_failure(tmp_path, servers):
    servers("127.0.0.2", {}, mode="silent")
    read = _root(tmp_path, "nameserver 127.0.0.2\noptions timeout:1 attempts:1\n")
    with pytest.raises(socket.gaierror) as err:
        resolver.getaddrinfo(read, "slow.test.", 80)
    assert (err.value.errno, err.value.strerror) == (socket.EAI_AGAIN, "Temporary failure in name resolution")


def test_forged_answers_are_ignored(tmp_path, servers):
    servers("127.0.0.2", {("real.test", 1): ["10.0.0.12"]}, mode="forge")
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    assert resolver.gethostbyname(read, "real.test.") == "10.0.0.12"


def test_resolver_files_stay_inside_the_root(tmp_path):
    """A hosts file that is a symlink climbing out of the root, and a resolv.conf that is a FIFO: the first
    resolves inside the root, the second reads as missing instead of blocking the agent."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "real-hosts").write_text("10.3.3.3 inside.test\n")
    (tmp_path / "etc" / "hosts").symlink_to("../../../../../../../etc/real-hosts")
    os.mkfifo(tmp_path / "etc" / "resolv.conf")
    (tmp_path / "etc" / "nsswitch.conf").write_text("hosts: files\n")
    read = files.Root(str(tmp_path)).read_small
    assert read("/etc/resolv.conf") is None
    assert resolver.gethostbyname(read, "inside.test") == "10.3.3.3"
    outside = tmp_path / "proc-link"
    outside.symlink_to("/etc/hostname")  # absolute: the root's own /etc/hostname, which does not exist
    assert read("/proc-link") is None


def test_nsswitch_sources_and_actions():
    assert resolver._nsswitch(b"hosts: files dns\n") == [("files", {"SUCCESS": "return"}),
                                                       ("dns", {"SUCCESS": "return"})]
    # A source mirror-py does not run is skipped together with its action.
    assert [s for s, _ in resolver._nsswitch(b"hosts: files mdns4_minimal [NOTFOUND=return] dns\n")] \
        == ["files", "dns"]
    assert resolver._nsswitch(b"hosts: dns [!UNAVAIL=return] files\n")[0][1]["NOTFOUND"] == "return"


def test_nothing_is_imported_after_placement(tmp_path):
    """Once :func:`placement.preimport` ran, the agent's lookups (a non-ASCII name included) and its iptables
    helpers import no module: nothing is looked up in a file system afterwards."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("10.4.4.4 xn--bcher-kva.test\n")
    (tmp_path / "etc" / "nsswitch.conf").write_text("hosts: files\n")
    code = (
        "import sys\n"
        "from mirror_py_agent import placement, files, resolver, iptables\n"
        "placement.preimport()\n"
        "before = set(sys.modules)\n"
        f"read = files.Root({str(tmp_path)!r}).read_small\n"
        "assert resolver.getaddrinfo(read, 'b\\u00fccher.test', 80)[0][4][0] == '10.4.4.4'\n"
        "resolver.getnameinfo(read, ['10.4.4.4', 80], 0)\n"
        "import shlex; shlex.split('-A OUTPUT -j x')\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
