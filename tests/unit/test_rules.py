"""Rules and filters that decide which connections and lookups stay local (mirror_py.shim.rules)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror_py.shim.rules import AddressRule, NameFilter, RuleError, TrafficFilter

# --- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "proto", "host", "port", "canonical"),
    [
        ("tcp://10.0.0.0/8:5432", "tcp", "10.0.0.0/8", 5432, "tcp://10.0.0.0/8:5432"),
        ("udp://:53", "udp", None, 53, "udp://:53"),
        ("redis.default.svc:6379", None, "redis.default.svc", 6379, "redis.default.svc:6379"),
        ("*.internal", None, "*.internal", None, "*.internal"),
        ("[::1]:80", None, "::1", 80, "[::1]:80"),
        (":8080", None, None, 8080, ":8080"),
        ("api.example.com", None, "api.example.com", None, "api.example.com"),
        ("127.0.0.1", None, "127.0.0.1", None, "127.0.0.1"),
        ("TCP://API.Example.COM.:443", "tcp", "api.example.com", 443, "tcp://api.example.com:443"),
        ("tcp://", "tcp", None, None, "tcp://"),
        ("*", None, None, None, "*"),
        ("*:53", None, None, 53, ":53"),
        ("::1", None, "::1", None, "::1"),
        ("fd00::/8", None, "fd00::/8", None, "fd00::/8"),
        ("[fd00::/8]:443", None, "fd00::/8", 443, "[fd00::/8]:443"),
        ("udp://[2001:db8::1]:53", "udp", "2001:db8::1", 53, "udp://[2001:db8::1]:53"),
        ("10.1.2.3/8", None, "10.0.0.0/8", None, "10.0.0.0/8"),
        ("0.0.0.0/0", None, "0.0.0.0/0", None, "0.0.0.0/0"),
        ("::ffff:10.0.0.0/104", None, "10.0.0.0/8", None, "10.0.0.0/8"),
        ("db-?.svc_x.*", None, "db-?.svc_x.*", None, "db-?.svc_x.*"),
        ("  api.example.com  ", None, "api.example.com", None, "api.example.com"),
    ],
)
def test_parse_every_form(text, proto, host, port, canonical):
    rule = AddressRule.parse(text)
    assert (rule.proto, rule.host, rule.port) == (proto, host, port)
    assert str(rule) == canonical
    assert rule.text == text
    assert AddressRule.parse(str(rule)) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty rule"),
        ("   ", "expected [tcp:// or udp://]"),
        ("http://example.com", "unknown protocol 'http', expected tcp or udp"),
        ("tcp://[::1", "'[' without a closing ']'"),
        ("[]:80", "empty address in brackets"),
        ("[::1]x", "unexpected 'x' after ']'"),
        ("[::1]/64", "a prefix length goes inside the brackets"),
        ("[example.com]:80", "brackets are only for IPv6 addresses"),
        ("host:", "':' without a port"),
        ("[::1]:", "':' without a port"),
        ("host:http", "port 'http' is not a number"),
        ("host:-1", "port '-1' is not a number"),
        ("host:0", "port 0 is out of range 1-65535"),
        ("host:65536", "port 65536 is out of range 1-65535"),
        ("1.2.3", "'1.2.3' is not a valid IPv4 address"),
        ("300.1.1.1", "'300.1.1.1' is not a valid IPv4 address"),
        ("10.0.0.0/33", "prefix length /33 is too long for an IPv4 address (at most /32)"),
        ("fd00::/129", "prefix length /129 is too long for an IPv6 address"),
        ("10.0.0.0/x", "prefix length 'x' is not a number"),
        ("fe80::1::2", "an IPv6 address with a port goes in brackets"),
        ("example.com/8", "'example.com' is not a valid IPv4 address"),
        ("a b", "contains whitespace"),
        ("bad!host", "invalid character '!' in host name 'bad!host'"),
        ("bücher.de", "invalid character 'ü'"),
        ("a..b", "host name 'a..b' has an empty label"),
        (".example.com", "has an empty label"),
        ("10.0.*.*", "wildcards do not apply to IP addresses; use a CIDR"),
    ],
)
def test_parse_errors_name_the_rule_and_the_problem(text, message):
    with pytest.raises(RuleError) as info:
        AddressRule.parse(text)
    assert message in str(info.value)
    if text:
        assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.rule == text
    assert info.value.reason in str(info.value)


def test_parse_rejects_non_strings():
    with pytest.raises(RuleError, match="must be a string"):
        AddressRule.parse(5)  # type: ignore[arg-type]


# --- matching ---------------------------------------------------------------------------------------------


def m(rule: str, proto: str = "tcp", ip: str | None = None, port: int | None = None, host: str | None = None):
    return AddressRule.parse(rule).matches(proto, ip, port, host)


def test_cidr_and_addresses():
    assert m("10.0.0.0/8", ip="10.255.1.2", port=1)
    assert not m("10.0.0.0/8", ip="11.0.0.1", port=1)
    assert m("127.0.0.1", ip="127.0.0.1", port=80)
    assert not m("127.0.0.1", ip="127.0.0.2", port=80)
    assert m("0.0.0.0/0", ip="8.8.8.8")
    assert not m("0.0.0.0/0", ip="::1"), "an IPv4 rule never matches an IPv6 address"
    assert not m("10.0.0.0/8", ip=None, host="10.0.0.1"), "IP rules look at the address, not the name"
    assert not m("10.0.0.0/8", ip="not-an-ip")


def test_ipv4_mapped_ipv6_matches_ipv4_rules():
    assert m("10.0.0.0/8", ip="::ffff:10.1.2.3")
    assert m("::ffff:10.0.0.0/104", ip="10.9.9.9")


def test_ipv6():
    assert m("[::1]:80", ip="::1", port=80)
    assert m("[::1]:80", ip="0:0:0:0:0:0:0:1", port=80)
    assert not m("[::1]:80", ip="::1", port=81)
    assert m("fd00::/8", ip="fd12:3456::1")
    assert not m("fd00::/8", ip="fe80::1")
    assert m("fe80::/10", ip="fe80::1%eth0"), "a zone id does not change the address"
    assert not m("::/0", ip="10.0.0.1")


def test_glob_hostnames_are_case_insensitive_and_need_a_name():
    assert m("*.internal", ip="1.2.3.4", host="db.internal")
    assert m("*.internal", ip="1.2.3.4", host="a.b.INTERNAL.")
    assert not m("*.internal", ip="1.2.3.4", host="internal")
    assert not m("*.internal", ip="1.2.3.4", host="internal.example")
    assert not m("*.internal", ip="1.2.3.4"), "a name rule cannot match when the name is unknown"
    assert m("db-?.prod.*", host="db-1.prod.example.com")
    assert not m("db-?.prod.*", host="db-12.prod.example.com")
    assert m("*cache*", host="rediscache.svc")
    assert m("API.Example.com", host="api.example.com.")
    assert not m("api.example.com", host="www.api.example.com")


def test_port_only_and_any_host():
    assert m(":8080", ip="1.2.3.4", port=8080)
    assert m(":8080", ip=None, port=8080, host="x")
    assert not m(":8080", ip="1.2.3.4", port=8081)
    assert not m(":8080", ip="1.2.3.4", port=None)
    assert m("*", ip="1.2.3.4", port=1)
    assert m("api.example.com", host="api.example.com", port=None), "no port in the rule: any port"


def test_protocol():
    assert m("udp://:53", proto="udp", ip="8.8.8.8", port=53)
    assert not m("udp://:53", proto="tcp", ip="8.8.8.8", port=53)
    assert m("tcp://10.0.0.0/8:5432", proto="tcp", ip="10.0.0.5", port=5432)
    assert not m("tcp://10.0.0.0/8:5432", proto="udp", ip="10.0.0.5", port=5432)
    assert m(":53", proto="udp", port=53) and m(":53", proto="tcp", port=53)


# --- filters ----------------------------------------------------------------------------------------------


def test_no_filter_sends_everything_remote():
    f = TrafficFilter()
    assert f.mode is None and f.rules == ()
    assert f.is_remote("tcp", "127.0.0.1", 80)
    assert f.is_remote("udp", "::1", 53, "localhost")


def test_local_filter_keeps_matches_local():
    f = TrafficFilter(local=["127.0.0.1", "*.corp.example:443", "udp://:53"])
    assert f.mode == "local"
    assert not f.is_remote("tcp", "127.0.0.1", 5000)
    assert f.is_remote("tcp", "127.0.0.2", 5000)
    assert not f.is_remote("tcp", "10.0.0.1", 443, "git.corp.example")
    assert f.is_remote("tcp", "10.0.0.1", 80, "git.corp.example")
    assert not f.is_remote("udp", "10.0.0.10", 53)
    assert f.is_remote("tcp", "10.0.0.10", 53)


def test_remote_filter_sends_only_matches_remote():
    f = TrafficFilter(remote=["10.0.0.0/8", "redis.default.svc:6379"])
    assert f.mode == "remote"
    assert f.is_remote("tcp", "10.1.1.1", 80)
    assert not f.is_remote("tcp", "192.168.1.1", 80)
    assert f.is_remote("tcp", "192.168.1.1", 6379, "Redis.Default.Svc")
    assert not f.is_remote("tcp", "192.168.1.1", 6380, "redis.default.svc")


def test_empty_lists_are_meaningful():
    assert TrafficFilter(local=[]).is_remote("tcp", "1.1.1.1", 1)
    assert not TrafficFilter(remote=[]).is_remote("tcp", "1.1.1.1", 1)


def test_filter_rejects_both_lists_and_bad_rules():
    with pytest.raises(ValueError, match="not both"):
        TrafficFilter(local=["a"], remote=["b"])
    with pytest.raises(RuleError, match="unknown protocol"):
        TrafficFilter(local=["ftp://x"])
    with pytest.raises(ValueError, match="list of strings"):
        TrafficFilter(local="10.0.0.0/8")  # type: ignore[arg-type]


def test_name_filter():
    f = NameFilter(local=["*.corp.example", "localhost", "10.0.0.0/8"])
    assert not f.is_remote("git.corp.example")
    assert not f.is_remote("LOCALHOST.")
    assert f.is_remote("redis.default.svc.cluster.local")
    assert not f.is_remote("10.1.2.3"), "an IP rule matches a lookup of that literal address"
    assert f.is_remote("11.1.2.3")
    assert NameFilter().is_remote("anything")


def test_name_filter_port_and_ignored_protocol():
    f = NameFilter(remote=["*.svc.cluster.local", "udp://api.example.com", "metrics.example.com:9090"])
    assert f.is_remote("redis.default.svc.cluster.local")
    assert f.is_remote("api.example.com"), "the protocol prefix is accepted and ignored"
    assert f.is_remote("metrics.example.com", 9090)
    assert not f.is_remote("metrics.example.com", 80)
    assert not f.is_remote("metrics.example.com")
    assert not f.is_remote("example.org")


@pytest.mark.parametrize("cls", [TrafficFilter, NameFilter])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"local": []}, {"remote": []}, {"local": ["10.0.0.0/8", "[::1]:80", "*.x"]}, {"remote": [":53"]}],
)
def test_json_round_trip(cls, kwargs):
    f = cls(**kwargs)
    data = json.loads(json.dumps(f.to_json()))
    assert data == ({} if not kwargs else kwargs)
    again = cls.from_json(data)
    assert again == f
    assert again.to_json() == f.to_json()
    assert type(again) is cls


@pytest.mark.parametrize("bad", [[], {"local": ["a"], "remote": ["b"]}, {"locals": []}, {"local": 5}])
def test_from_json_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        TrafficFilter.from_json(bad)


def test_repr_is_readable():
    assert repr(TrafficFilter(local=["a"])) == "TrafficFilter(local=['a'])"
    assert repr(NameFilter()) == "NameFilter()"
    assert repr(AddressRule.parse(":53")) == "AddressRule.parse(':53')"


def test_import_is_cheap():
    """The shim imports this module in every interpreter it starts: no regex, ipaddress or socket yet."""
    code = (
        "import sys; import mirror_py.shim.rules as r; "
        "r.TrafficFilter(local=['10.0.0.0/8']); "
        "print(sorted(m for m in ('re', 'ipaddress', 'fnmatch') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


# --- properties -------------------------------------------------------------------------------------------

_octet = st.integers(0, 255)
_ipv4 = st.tuples(_octet, _octet, _octet, _octet).map(lambda t: ".".join(map(str, t)))


@given(_ipv4, st.integers(0, 32), _ipv4)
def test_cidr_matches_like_ipaddress(net, bits, ip):
    import ipaddress

    rule = AddressRule.parse(f"{net}/{bits}")
    expected = ipaddress.ip_address(ip) in ipaddress.ip_network(f"{net}/{bits}", strict=False)
    assert rule.matches("tcp", ip, 1) is expected


@given(st.one_of(st.text(max_size=40), st.text(alphabet="tcpudf:/[]%0123456789.*?-", max_size=30)))
def test_parse_raises_only_rule_error(text):
    try:
        rule = AddressRule.parse(text)
    except RuleError:
        return
    assert AddressRule.parse(str(rule)) == rule
