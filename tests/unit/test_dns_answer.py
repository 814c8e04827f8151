"""DNS queries the app sends to this machine's name server, answered by the target's resolver
(mirror_py_agent.dnsanswer), and which datagrams are such queries (mirror_py.shim.nameservers, net.planned).

Queries are built and replies read with dnspython, a DNS implementation mirror-py does not use itself."""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from mirror_py.shim import nameservers, net, settings
from mirror_py_agent import dnsanswer

from . import test_resolver
from .test_resolver import _root

# Fixtures: a fake name server of the pod on a free port.
port = test_resolver.port
servers = test_resolver.servers

POD_RESOLV = "nameserver 127.0.0.2\nsearch staging.svc.cluster.local svc.cluster.local\noptions ndots:5\n"


def _ask(read, name: str, rdtype: str = "A", **kwargs) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)
    reply = dnsanswer.answer(query.to_wire(), read)
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.id == query.id and message.question == query.question
    return message


def _addresses(message: dns.message.Message) -> list:
    return sorted(rr.address for rrset in message.answer for rr in rrset if rrset.rdtype in (1, 28))


def test_a_short_name_gets_the_pods_search_list_and_the_answer_carries_the_name_asked(tmp_path, servers):
    pod_dns = servers("127.0.0.2", {("web.staging.svc.cluster.local", 1): ["10.1.2.3"]})
    read = _root(tmp_path, POD_RESOLV)
    reply = _ask(read, "web", use_edns=0)
    assert reply.rcode() == dns.rcode.NOERROR and _addresses(reply) == ["10.1.2.3"]
    assert [str(rrset.name) for rrset in reply.answer] == ["web."]  # what the asker asked: it checks
    assert reply.flags & dns.flags.RA and reply.flags & dns.flags.RD and reply.edns == 0
    assert [q[0] for q in pod_dns.asked] == ["web.staging.svc.cluster.local"]


def test_the_pods_hosts_file_answers_first(tmp_path, servers):
    pod_dns = servers("127.0.0.2", {})
    read = _root(tmp_path, POD_RESOLV, hosts="10.9.9.9 legacy-db legacy-db.corp\n")
    reply = _ask(read, "legacy-db.corp")
    assert _addresses(reply) == ["10.9.9.9"] and pod_dns.asked == []


def test_an_unknown_name_is_nxdomain_after_every_candidate(tmp_path, servers):
    pod_dns = servers("127.0.0.2", {})
    reply = _ask(_root(tmp_path, POD_RESOLV), "gone")
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.answer == []
    assert [q[0] for q in pod_dns.asked] == ["gone.staging.svc.cluster.local", "gone.svc.cluster.local", "gone"]


def test_a_name_without_the_type_asked_is_nodata(tmp_path, servers):
    servers("127.0.0.2", {("v4.svc.cluster.local", 1): ["10.0.0.11"]})
    reply = _ask(_root(tmp_path, POD_RESOLV), "v4.svc.cluster.local", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_no_name_server_answering_is_servfail(tmp_path, servers):
    servers("127.0.0.2", {}, mode="silent")
    read = _root(tmp_path, "nameserver 127.0.0.2\noptions timeout:1 attempts:1\n")
    assert _ask(read, "web.test.").rcode() == dns.rcode.SERVFAIL


def test_compressed_names_in_records_are_written_out(tmp_path):
    """A real server compresses names inside CNAME, MX, SRV and SOA data: pointers into its message, which
    mean nothing in the reply built for the asker."""
    header = struct.pack(">HHHHHH", 7, 0x8180, 1, 4, 1, 0)
    question = b"\x03www\x04test\x00" + struct.pack(">HH", 1, 1)  # the name at offset 12
    www, test = b"\xc0\x0c", b"\xc0\x10"

    def rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
        return owner + struct.pack(">HHIH", rtype, 1, 60, len(rdata)) + rdata

    message = (header + question
               + rr(www, 5, b"\x03web" + test)  # CNAME web.test
               + rr(www, 15, b"\x00\x0a\x04mail" + test)  # MX 10 mail.test
               + rr(www, 33, b"\x00\x01\x00\x02\x01\xbb\x03srv" + test)  # SRV 1 2 443 srv.test
               + rr(www, 1, bytes([10, 0, 0, 1]))
               + rr(test, 6, b"\x02ns" + test + b"\x05admin" + test + struct.pack(">IIIII", 1, 2, 3, 4, 5)))
    rcode, answers, authority = dnsanswer.records_of(message)
    query = dnsanswer.parse_query(dns.message.make_query("www.test", "A").to_wire())
    reply = dns.message.from_wire(dnsanswer.build_reply(query, rcode, answers, authority))
    text = {rrset.rdtype: [r.to_text() for r in rrset] for rrset in reply.answer}
    assert text == {dns.rdatatype.CNAME: ["web.test."], dns.rdatatype.MX: ["10 mail.test."],
                    dns.rdatatype.SRV: ["1 2 443 srv.test."], dns.rdatatype.A: ["10.0.0.1"]}
    assert reply.authority[0][0].to_text() == "ns.test. admin.test. 1 2 3 4 5"


def test_the_reply_fits_what_the_asker_can_receive(tmp_path, servers):
    many = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(60)]
    servers("127.0.0.2", {("big.test", 1): many})
    read = _root(tmp_path, "nameserver 127.0.0.2\n")
    plain = dnsanswer.answer(dns.message.make_query("big.test.", "A").to_wire(), read)
    assert plain is not None and len(plain) <= 512
    small = dns.message.from_wire(plain)
    assert not small.flags & dns.flags.TC and 0 < len(_addresses(small)) < 60  # what fits, still an answer
    with_edns = _ask(read, "big.test.", use_edns=0, payload=4096)
    assert len(_addresses(with_edns)) == 60


@pytest.mark.parametrize("packet", [b"", b"\x01\x02", b"\x00" * 11])
def test_less_than_a_header_gets_no_reply(packet):
    assert dnsanswer.answer(packet, lambda path: None) is None


def test_a_malformed_query_is_formerr_and_a_response_gets_nothing():
    no_question = struct.pack(">HHHHHH", 0x4242, 0x0100, 0, 0, 0, 0)
    reply = dns.message.from_wire(dnsanswer.answer(no_question, lambda path: None))
    assert reply.id == 0x4242 and reply.rcode() == dns.rcode.FORMERR
    response = struct.pack(">HHHHHH", 1, 0x8180, 0, 0, 0, 0)
    assert dnsanswer.answer(response, lambda path: None) is None  # two answerers must not talk forever
    other_opcode = dns.message.make_query("x.test", "A")
    other_opcode.set_opcode(dns.opcode.STATUS)
    assert dns.message.from_wire(dnsanswer.answer(other_opcode.to_wire(), lambda p: None)).rcode() \
        == dns.rcode.NOTIMP


# --- which datagrams are queries to this machine's name server ----------------------------------------------

def test_resolv_conf_name_servers_normalized_with_the_c_default(monkeypatch, tmp_path):
    assert nameservers.parse("# x\nnameserver 127.0.0.53\nnameserver ::ffff:10.0.0.2\nsearch a\n") \
        == ("127.0.0.53", "10.0.0.2")
    assert nameservers.parse("search only\n") == ("127.0.0.1", "::1")
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.1.1.1\n")
    monkeypatch.setattr(nameservers, "PATH", str(conf))
    monkeypatch.setattr(nameservers, "_cache", [None, ()])
    assert nameservers.is_local_nameserver("10.1.1.1", 53) and not nameservers.is_local_nameserver("10.1.1.1", 54)
    conf.write_text("nameserver 10.2.2.2\n")  # the laptop changed networks: read again
    assert nameservers.is_local_nameserver("10.2.2.2", 53) and not nameservers.is_local_nameserver("10.1.1.1", 53)


@pytest.mark.parametrize("outgoing_udp", [True, False])
def test_a_datagram_to_this_machines_name_server_goes_to_the_target_to_be_answered(monkeypatch, tmp_path,
                                                                                   outgoing_udp):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    monkeypatch.setattr(nameservers, "PATH", str(conf))
    monkeypatch.setattr(nameservers, "_cache", [None, ()])
    settings.reset({"outgoing": {"udp": outgoing_udp}})
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            target, decision = net.planned(udp, ("127.0.0.53", 53))
            assert target == ("127.0.0.53", 53, None) and decision[5] == net.NAMESERVER_RULE
            other = net.plan(udp, ("8.8.8.8", 53))  # another name server: ordinary UDP
            assert (other is not None) == outgoing_udp
        settings.reset({"outgoing": {"udp": outgoing_udp}, "dns": {"enabled": False}})
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            target, decision = net.planned(udp, ("127.0.0.53", 53))  # names are this machine's: so are its queries
            assert decision is None or decision[5] != net.NAMESERVER_RULE
            assert (target is None) == (not outgoing_udp)
    finally:
        settings.reset()

