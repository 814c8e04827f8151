"""Address and name rules: which connections and DNS lookups stay on the laptop.

A rule is ``[proto://][host|ip|cidr][:port]``::

    tcp://10.0.0.0/8:5432    udp://:53    redis.default.svc:6379    *.internal
    [::1]:80                 :8080        api.example.com           127.0.0.1

The shim consults these filters on every ``connect()``, ``sendto()`` and name lookup, and it imports this
module inside the user's interpreter at start-up. So the module is standard-library only, imports nothing
costly at import time (``socket``, ``fnmatch`` and ``re`` come the first time a rule needs them), and does
all splitting and compiling once, in :meth:`AddressRule.parse`; matching is a few comparisons per rule.
"""

from __future__ import annotations

__all__ = ["AddressRule", "NameFilter", "RuleError", "TrafficFilter"]

# How a rule's host part is matched; chosen at parse time so matching needs no string analysis.
_ANY = 0  # no host (or "*"): every destination
_NAME = 1  # exact hostname
_SUFFIX = 2  # "*.example.com": a fast endswith() instead of a glob
_GLOB = 3  # any other hostname glob, compiled to a regex
_NET = 4  # IP address or CIDR, stored as integers

_PROTOS = ("tcp", "udp")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.*?")
_IPV4_CHARS = frozenset("0123456789.")


class RuleError(ValueError):
    """A rule that cannot be parsed; the message quotes the rule and says what is wrong with it.

    It is a ``ValueError`` so that configuration validation reports it like any other bad value;
    :attr:`rule` and :attr:`reason` let a caller that already shows the rule print just the reason.
    """

    def __init__(self, rule: object, reason: str) -> None:
        self.rule = rule
        self.reason = reason
        super().__init__(f"rule {rule!r}: {reason}" if rule != "" else f"empty rule: {reason}")


def _ip_key(ip: str) -> tuple[int, int] | None:
    """Turn an address string into ``(version, integer)``, or ``None`` when it is not an IP address.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket reports) become IPv4,
    so an IPv4 rule covers them too. A zone suffix (``fe80::1%eth0``) is ignored.
    """
    from socket import AF_INET, AF_INET6, inet_pton

    if ":" in ip:
        ip = ip.partition("%")[0]
        try:
            value = int.from_bytes(inet_pton(AF_INET6, ip), "big")
        except (OSError, ValueError):
            return None
        if value >> 32 == 0xFFFF:
            return 4, value & 0xFFFFFFFF
        return 6, value
    try:
        return 4, int.from_bytes(inet_pton(AF_INET, ip), "big")
    except (OSError, ValueError):
        return None


def _ip_text(version: int, value: int) -> str:
    from socket import AF_INET, AF_INET6, inet_ntop

    if version == 4:
        return inet_ntop(AF_INET, value.to_bytes(4, "big"))
    return inet_ntop(AF_INET6, value.to_bytes(16, "big"))


def _norm_name(name: str) -> str:
    """Hostnames compare case-insensitively and ``example.com.`` is the same name as ``example.com``."""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    return name


class AddressRule:
    """One parsed rule. Build it with :meth:`parse`; ask it with :meth:`matches`."""

    __slots__ = ("_bits", "_kind", "_mask", "_net", "_pattern", "_version", "host", "port", "proto", "text")

    text: str
    proto: str | None
    host: str | None
    port: int | None

    def __init__(self) -> None:
        # Rules only come from parse(), which fills every slot.
        self.text = ""
        self.proto = None
        self.host = None
        self.port = None
        self._kind = _ANY
        self._pattern: object = None
        self._version = 0
        self._net = 0
        self._mask = 0
        self._bits = 0

    @classmethod
    def parse(cls, text: str) -> AddressRule:
        """Parse ``[proto://][host|ip|cidr][:port]`` once, so that matching later is cheap.

        Raises :class:`RuleError` naming the rule and the problem.
        """
        if not isinstance(text, str):
            raise RuleError(text, "a rule must be a string")
        self = cls()
        self.text = text
        rest = text.strip()
        if not rest:
            raise RuleError(text, "expected [tcp:// or udp://][host, IP or CIDR][:port]")
        if any(c.isspace() for c in rest):
            raise RuleError(text, "contains whitespace")

        scheme, sep, after = rest.partition("://")
        if sep:
            proto = scheme.lower()
            if proto not in _PROTOS:
                raise RuleError(text, f"unknown protocol {scheme!r}, expected tcp or udp")
            self.proto = proto
            rest = after

        host, port_text = self._split_port(text, rest)
        if port_text is not None:
            if not port_text.isdigit() or not port_text.isascii():
                raise RuleError(text, f"port {port_text!r} is not a number")
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise RuleError(text, f"port {port} is out of range 1-65535")
            self.port = port
        self._parse_host(text, host)
        return self

    @staticmethod
    def _split_port(text: str, rest: str) -> tuple[str, str | None]:
        """Separate the host from the port: ``[v6]:port``, ``host:port``; bare IPv6 takes no port."""
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise RuleError(text, "'[' without a closing ']'")
            host, tail = rest[1:end], rest[end + 1 :]
            if not host:
                raise RuleError(text, "empty address in brackets")
            if ":" not in host:
                raise RuleError(text, "brackets are only for IPv6 addresses, as in [::1]:80")
            if not tail:
                return host, None
            if not tail.startswith(":"):
                raise RuleError(
                    text,
                    f"unexpected {tail!r} after ']'; a prefix length goes inside the brackets, as in [fd00::/8]:80",
                )
            if tail == ":":
                raise RuleError(text, "':' without a port")
            return host, tail[1:]
        if rest.count(":") > 1:
            # Bare IPv6 (``::1``, ``fd00::/8``): the last group cannot be told from a port, so there is none.
            return rest, None
        host, sep, port = rest.partition(":")
        if sep and not port:
            raise RuleError(text, "':' without a port")
        return host, (port if sep else None)

    def _parse_host(self, text: str, host: str) -> None:
        if host in ("", "*"):
            self._kind = _ANY
            self.host = None
            return
        if ":" in host or "/" in host or (set(host) <= _IPV4_CHARS and any(c.isdigit() for c in host)):
            self._parse_network(text, host)
            return
        name = _norm_name(host)
        bad = sorted(set(name) - _HOST_CHARS)
        if bad:
            raise RuleError(
                text,
                f"invalid character {bad[0]!r} in host name {host!r} "
                "(allowed: letters, digits, '-', '_', '.', and the wildcards '*' and '?')",
            )
        if not name or "" in name.split("."):
            raise RuleError(text, f"host name {host!r} has an empty label")
        self.host = name
        if "*" not in name and "?" not in name:
            self._kind = _NAME
            self._pattern = name
            return
        plain = name.replace("*", "").replace("?", "")
        if plain and set(plain) <= _IPV4_CHARS and any(c.isdigit() for c in plain):
            raise RuleError(text, "wildcards do not apply to IP addresses; use a CIDR such as 10.0.0.0/8")
        suffix = name[1:]
        if name.startswith("*.") and "*" not in suffix and "?" not in suffix:
            self._kind = _SUFFIX
            self._pattern = suffix
            return
        import fnmatch
        import re

        self._kind = _GLOB
        self._pattern = re.compile(fnmatch.translate(name)).match

    def _parse_network(self, text: str, host: str) -> None:
        address, slash, prefix_text = host.partition("/")
        key = _ip_key(address) if "%" not in address else None
        if key is None:
            what = "IPv6" if ":" in address else "IPv4"
            hint = "; an IPv6 address with a port goes in brackets, as in [::1]:80" if ":" in address else ""
            raise RuleError(text, f"{address!r} is not a valid {what} address{hint}")
        version, value = key
        written_bits = 32 if version == 4 and ":" not in address else 128
        if slash:
            if not prefix_text.isdigit() or not prefix_text.isascii():
                raise RuleError(text, f"prefix length {prefix_text!r} is not a number")
            bits = int(prefix_text)
            if bits > written_bits:
                raise RuleError(
                    text,
                    f"prefix length /{bits} is too long for an "
                    f"IPv{4 if written_bits == 32 else 6} address (at most /{written_bits})",
                )
        else:
            bits = written_bits
        if version == 4 and written_bits == 128:
            if bits >= 96:
                # An IPv4-mapped IPv6 rule (::ffff:a.b.c.d/n) covers the same addresses as the IPv4 rule.
                bits -= 96
            else:
                version, value = 6, (0xFFFF << 32) | value
        width = 32 if version == 4 else 128
        mask = ((1 << bits) - 1) << (width - bits) if bits else 0
        self._kind = _NET
        self._version = version
        self._mask = mask
        self._net = value & mask
        self._bits = bits
        address_text = _ip_text(version, self._net)
        self.host = address_text if bits == width else f"{address_text}/{bits}"

    def matches(self, proto: str, ip: str | None, port: int | None, hostname: str | None = None) -> bool:
        """Does a connection to ``ip``:``port`` over ``proto`` (``"tcp"``/``"udp"``) fall under this rule?

        Hostname rules look at ``hostname``, the name the app resolved to get ``ip`` when the shim knows it;
        IP and CIDR rules look at ``ip``.
        """
        key = _ip_key(ip) if ip and self._kind == _NET else None
        name = _norm_name(hostname) if hostname else None
        return self._match(proto, key, port, name)

    def _match(self, proto: str | None, key: tuple[int, int] | None, port: int | None, name: str | None) -> bool:
        # proto None means "either" (DNS lookups have no protocol).
        if self.proto is not None and proto is not None and proto != self.proto:
            return False
        if self.port is not None and port != self.port:
            return False
        kind = self._kind
        if kind == _ANY:
            return True
        if kind == _NET:
            return key is not None and key[0] == self._version and key[1] & self._mask == self._net
        if name is None:
            return False
        if kind == _NAME:
            return name == self._pattern
        if kind == _SUFFIX:
            return name.endswith(self._pattern)  # type: ignore[arg-type]
        return self._pattern(name) is not None  # type: ignore[operator]

    def __str__(self) -> str:
        """The canonical spelling: lower-case, networks normalised, IPv6 in brackets when a port follows."""
        out = f"{self.proto}://" if self.proto else ""
        host = self.host or ""
        if ":" in host and self.port is not None:
            host = f"[{host}]"
        out += host
        if self.port is not None:
            out += f":{self.port}"
        return out or "*"

    def __repr__(self) -> str:
        return f"AddressRule.parse({self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddressRule):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _parse_rules(local: list[str] | None, remote: list[str] | None, kind: str) -> tuple[bool, tuple | None]:
    if local is not None and remote is not None:
        raise ValueError(f"{kind}: give either 'local' or 'remote' rules, not both")
    texts = local if local is not None else remote
    if texts is None:
        return False, None
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"{kind}: rules must be a list of strings, got {texts!r}")
    return remote is not None, tuple(AddressRule.parse(t) for t in texts)


def _filter_from_json(cls: type, d: object) -> tuple[list[str] | None, list[str] | None]:
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_json: expected a dict, got {type(d).__name__}")
    unknown = set(d) - {"local", "remote"}
    if unknown:
        raise ValueError(f"{cls.__name__}.from_json: unknown keys {sorted(map(str, unknown))}")
    return d.get("local"), d.get("remote")


class _Filter:
    """Shared half of the two filters: a mode ("local" list, "remote" list or none) and parsed rules."""

    __slots__ = ("_names", "_nets", "_remote_mode", "_rules")

    _kind = "filter"

    def __init__(self, local: list[str] | None = None, remote: list[str] | None = None) -> None:
        self._remote_mode, self._rules = _parse_rules(local, remote, self._kind)
        rules = self._rules or ()
        # Only convert addresses / normalise names on the hot path when some rule will look at them.
        self._nets = any(r._kind == _NET for r in rules)
        self._names = any(r._kind in (_NAME, _SUFFIX, _GLOB) for r in rules)

    @property
    def mode(self) -> str | None:
        """``"local"`` (the rules name what stays local), ``"remote"`` (what goes remote) or ``None``."""
        if self._rules is None:
            return None
        return "remote" if self._remote_mode else "local"

    @property
    def rules(self) -> tuple[AddressRule, ...]:
        return self._rules or ()

    def _decide(self, proto: str | None, key: tuple[int, int] | None, port: int | None, name: str | None) -> bool:
        rules = self._rules
        if rules is None:
            return True
        for rule in rules:
            if rule._match(proto, key, port, name):
                return self._remote_mode
        return not self._remote_mode

    def to_json(self) -> dict:
        """A plain dict (``{"local": [...]}``, ``{"remote": [...]}`` or ``{}``) the session hands the shim."""
        if self._rules is None:
            return {}
        return {self.mode: [r.text for r in self._rules]}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.mode == other.mode and self.rules == other.rules  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.mode, self.rules))

    def __repr__(self) -> str:
        if self._rules is None:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}({self.mode}={[r.text for r in self._rules]!r})"


class TrafficFilter(_Filter):
    """Decides, per outgoing connection or datagram, whether it goes through the target.

    ``local=[...]``: everything is remote except what a rule matches. ``remote=[...]``: only what a rule
    matches is remote. Neither: everything is remote, which is the default because a service's dependencies
    (databases, sidecars on loopback) live next to the target, not next to the laptop.
    """

    __slots__ = ()
    _kind = "outgoing filter"

    def is_remote(self, proto: str, ip: str | None, port: int | None, hostname: str | None = None) -> bool:
        """True when a ``proto`` connection to ``ip``:``port`` (resolved from ``hostname``) goes remote."""
        if self._rules is None:
            return True
        key = _ip_key(ip) if ip and self._nets else None
        name = _norm_name(hostname) if hostname and self._names else None
        return self._decide(proto, key, port, name)

    def rule_says(self, proto: str, ip: str | None, port: int | None, names: tuple[str, ...] = ()) -> bool | None:
        """What an explicit rule says about a connection: True (remote) or False (local) when a rule matches
        the address, or any of ``names`` (every name the app resolved to get ``ip``); None when no rule does.

        Unlike :meth:`is_remote` this tells "a rule decided" from "nothing matched", so that the caller can
        put its own default between the rules and the filter's default.
        """
        return None if self.rule_for(proto, ip, port, names) is None else self._remote_mode

    def rule_for(self, proto: str, ip: str | None, port: int | None,
                 names: tuple[str, ...] = ()) -> AddressRule | None:
        """The first rule that matches, as :meth:`rule_says` looks for it (for saying which rule decided)."""
        rules = self._rules
        if rules is None:
            return None
        key = _ip_key(ip) if ip and self._nets else None
        norms = [_norm_name(n) for n in names] if names and self._names else [None]
        for rule in rules:
            for name in norms:
                if rule._match(proto, key, port, name):
                    return rule
        return None

    @property
    def lists_remotes(self) -> bool:
        """True for a ``remote`` list (its rules say what goes remote), False for a ``local`` list."""
        return bool(self._remote_mode)

    @property
    def default_remote(self) -> bool:
        """Where a connection no rule matches goes: remote, except under a ``remote`` list."""
        return not self._remote_mode

    @classmethod
    def from_json(cls, d: dict) -> TrafficFilter:
        """Rebuild a filter from :meth:`to_json` output; the rules are parsed (and checked) again."""
        local, remote = _filter_from_json(cls, d)
        return cls(local=local, remote=remote)


class NameFilter(_Filter):
    """Decides whether a DNS lookup is answered by the target's resolver or the laptop's.

    Rules have the same syntax as :class:`TrafficFilter` rules; only the host part and the port (the
    service port given to ``getaddrinfo``) matter, a protocol prefix is accepted and ignored so rules can be
    copied between the two filters. An IP or CIDR rule matches a lookup of that literal address.
    """

    __slots__ = ()
    _kind = "DNS filter"

    def is_remote(self, name: str, port: int | None = None) -> bool:
        """True when the lookup of ``name`` (for ``port``, if the app gave one) goes to the target."""
        if self._rules is None:
            return True
        key = None
        if self._nets and name and (name[0].isdigit() or ":" in name):
            key = _ip_key(name)
        norm = _norm_name(name) if name and self._names else None
        return self._decide(None, key, port, norm)

    @classmethod
    def from_json(cls, d: dict) -> NameFilter:
        """Rebuild a filter from :meth:`to_json` output; the rules are parsed (and checked) again."""
        local, remote = _filter_from_json(cls, d)
        return cls(local=local, remote=remote)
