"""A stub resolver that reads the target's resolver files through its root and asks its name servers itself.

An agent that reaches the target from outside (the job placement, ``pid/`` targets) runs with more privilege
than the target and never enters its mount namespace, so it must not let glibc resolve names there: glibc would
read the target's ``nsswitch.conf`` and ``dlopen`` the NSS modules it names from the target's ``/lib``. This
module does what glibc's ``files`` and ``dns`` sources do, with nothing of the target's but data:

- ``/etc/nsswitch.conf`` (its ``hosts:`` line; sources other than ``files`` and ``dns`` are skipped, their
  status actions too), ``/etc/hosts``, ``/etc/resolv.conf`` (``nameserver``, ``search``/``domain``,
  ``options ndots: timeout: attempts: rotate use-vc edns0``), ``/etc/services`` and ``/etc/hostname``, each
  read through :class:`files.Root` and re-read on every lookup, as glibc re-reads a changed ``resolv.conf``;
- the search list and ``ndots`` over the queries of :mod:`dnswire` (UDP, TCP on truncation, each name server
  in turn; A and AAAA asked together, CNAME chains followed, PTR for reverse lookups);
- glibc's answers: the same tuples, in glibc's order (:mod:`addrsort`), the same
  ``socket.gaierror``/``socket.herror`` codes and words, so the laptop cannot tell it from libc in the pod.

Standard library only, Python 3.9+; the agent imports it before it joins any of the target's namespaces.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import Any, Callable, Optional

from .addrsort import sort_addresses
from .dnswire import AAAA, PTR, A, BadName, Unavailable, query

Reader = Callable[[str], Optional[bytes]]

_GAI_TEXT = {
    socket.EAI_BADFLAGS: "Bad value for ai_flags",
    socket.EAI_NONAME: "Name or service not known",
    socket.EAI_AGAIN: "Temporary failure in name resolution",
    socket.EAI_FAIL: "Non-recoverable failure in name resolution",
    socket.EAI_FAMILY: "ai_family not supported",
    socket.EAI_SOCKTYPE: "ai_socktype not supported",
    socket.EAI_SERVICE: "Servname not supported for ai_socktype",
    socket.EAI_NODATA: "No address associated with hostname",
    socket.EAI_ADDRFAMILY: "Address family for hostname not supported",
}
_H_TEXT = {1: "Unknown host", 2: "Host name lookup failure", 3: "Unknown server error",
           4: "No address associated with name"}
HOST_NOT_FOUND, TRY_AGAIN, NO_RECOVERY, NO_DATA = 1, 2, 3, 4


def gai_error(code: int) -> socket.gaierror:
    return socket.gaierror(code, _GAI_TEXT.get(code, "Unknown error"))


def h_error(code: int) -> socket.herror:
    return socket.herror(code, _H_TEXT.get(code, "Resolver internal error"))


# ------------------------------------------------------------------------------------------ configuration
class Config:
    """One reading of the target's resolver files."""

    def __init__(self, read: Reader) -> None:
        self.read = read
        self.nameservers: list[str] = []
        self.search: list[str] = []
        self.ndots, self.timeout, self.attempts = 1, 5.0, 2
        self.rotate = self.use_vc = self.edns0 = False
        self._resolv(read("/etc/resolv.conf"))
        self.sources = _nsswitch(read("/etc/nsswitch.conf"))

    def _resolv(self, raw: bytes | None) -> None:
        search: list[str] | None = None
        for line in (raw or b"").decode("utf-8", "replace").splitlines():
            words = line.split()
            if not words or words[0][0] in "#;":
                continue
            key, rest = words[0], words[1:]
            if key == "nameserver" and rest and len(self.nameservers) < 3:
                if _numeric(rest[0]) is not None:
                    self.nameservers.append(rest[0])
            elif key == "domain" and rest:
                search = [rest[0]]
            elif key == "search":
                search = rest[:32]
            elif key == "options":
                for opt in rest:
                    name, _, value = opt.partition(":")
                    num = int(value) if value.isdigit() else None
                    if name == "ndots" and num is not None:
                        self.ndots = min(num, 15)
                    elif name == "timeout" and num is not None:
                        self.timeout = float(min(max(num, 1), 30))
                    elif name == "attempts" and num is not None:
                        self.attempts = min(max(num, 1), 5)
                    elif name == "rotate":
                        self.rotate = True
                    elif name == "use-vc":
                        self.use_vc = True
                    elif name == "edns0":
                        self.edns0 = True
        if not self.nameservers:
            self.nameservers = ["127.0.0.1"]
        if search is None:
            # Without search or domain, glibc takes the domain part of the host name.
            host = socket.gethostname()
            search = [host.split(".", 1)[1]] if "." in host else []
        self.search = [d.rstrip(".") for d in search if d.rstrip(".")]


def _nsswitch(raw: bytes | None) -> list[tuple[str, dict]]:
    """The ``hosts:`` sources mirror-py can run, each with its status actions (glibc's default without
    the file: ``dns [!UNAVAIL=return] files``)."""
    if raw is None:
        return [("dns", {"NOTFOUND": "return", "TRYAGAIN": "return", "SUCCESS": "return"}),
                ("files", {"SUCCESS": "return"})]
    for line in raw.decode("utf-8", "replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("hosts:"):
            continue
        out: list[tuple[str, dict]] = []
        words = line[len("hosts:"):].replace("[", " [ ").replace("]", " ] ").split()
        i = 0
        while i < len(words):
            word = words[i]
            if word == "[":
                j = words.index("]", i) if "]" in words[i:] else len(words)
                if out and out[-1][0] != "":
                    actions = out[-1][1]
                    for item in words[i + 1:j]:
                        status, _, action = item.upper().partition("=")
                        if status.startswith("!"):
                            for other in ("SUCCESS", "NOTFOUND", "UNAVAIL", "TRYAGAIN"):
                                if other != status[1:]:
                                    actions[other] = action.lower()
                        else:
                            actions[status] = action.lower()
                i = j + 1
                continue
            # A source mirror-py cannot run is skipped along with its actions (marked by an empty name).
            out.append((word if word in ("files", "dns") else "", {"SUCCESS": "return"}))
            i += 1
        return [s for s in out if s[0]]
    return [("dns", {"SUCCESS": "return"}), ("files", {"SUCCESS": "return"})]


def hosts_entries(read: Reader) -> list[tuple[str, list[str]]]:
    entries = []
    for line in (read("/etc/hosts") or b"").decode("utf-8", "replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and _numeric(words[0]) is not None:
            entries.append((words[0], words[1:]))
    return entries


def _numeric(text: str) -> tuple[int, str] | None:
    """(family, address text) of an IP literal as glibc's inet_aton/inet_pton read it, or None."""
    try:
        return socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6,
                                                                                text.split("%", 1)[0]))
    except (OSError, ValueError):
        pass
    if text and all(c in "0123456789abcdefABCDEFxX." for c in text):
        try:
            return socket.AF_INET, socket.inet_ntoa(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _candidates(config: Config, name: str) -> list[str]:
    """The names to ask in order, as glibc's res_search builds them."""
    if name.endswith("."):
        return [name.rstrip(".")]
    dots = name.count(".")
    out = [name] if dots >= config.ndots else []
    out += [f"{name}.{domain}" for domain in config.search]
    if dots < config.ndots:
        out.append(name)
    return out


def dns_search(config: Config, name: str, qtypes: list[int]) -> tuple[str, dict]:
    """(the name that answered, qtype → (final name, aliases, records)) or a status: "NOTFOUND" with
    h_errno HOST_NOT_FOUND or NO_DATA, "TRYAGAIN", "UNAVAIL" (raised as :class:`_Status`)."""
    got_nodata = got_servfail = False
    for candidate in _candidates(config, name):
        try:
            answers = query(config, candidate, qtypes)
        except BadName:  # a label too long with this suffix: no such name
            continue
        except Unavailable:
            raise _Status("UNAVAIL", TRY_AGAIN) from None
        except TimeoutError:
            raise _Status("TRYAGAIN", TRY_AGAIN) from None
        results = {qt: ans.follow(candidate, qt) for qt, ans in answers.items()}
        if any(r[2] for r in results.values()):
            return candidate, results
        if all(ans.rcode == 0 for ans in answers.values()):
            got_nodata = True
        elif any(ans.rcode == 2 for ans in answers.values()):
            got_servfail = True
    if got_nodata:
        raise _Status("NOTFOUND", NO_DATA)
    if got_servfail:
        raise _Status("TRYAGAIN", TRY_AGAIN)
    raise _Status("NOTFOUND", HOST_NOT_FOUND)


class _Status(Exception):
    def __init__(self, status: str, herrno: int) -> None:
        super().__init__(status)
        self.status = status
        self.herrno = herrno


# ---------------------------------------------------------------------------------------------- sources
class Lookup:
    """What one forward lookup found: canonical name, aliases, and (family, address) pairs in order."""

    def __init__(self, canon: str, aliases: list[str], addrs: list[tuple[int, str]]) -> None:
        self.canon, self.aliases, self.addrs = canon, aliases, addrs


def _files_forward(read: Reader, name: str, families: tuple[int, ...]) -> Lookup | None:
    """glibc's ``files`` source. Both families (getaddrinfo's AF_UNSPEC) take every matching line as it is
    written; an IPv4 lookup also takes ``::1`` as 127.0.0.1 and ``::ffff:a.b.c.d`` as a.b.c.d, as glibc
    does. Every matching line counts: the first gives the canonical name, the others add their names as
    aliases and their addresses (duplicates included)."""
    low = name.rstrip(".").lower()
    canon, aliases, addrs = None, [], []
    for addr, names in hosts_entries(read):
        if low not in (n.lower() for n in names):
            continue
        fam, text = _numeric(addr)  # type: ignore[misc]
        if families == (socket.AF_INET,) and fam == socket.AF_INET6:
            packed = socket.inet_pton(socket.AF_INET6, text)
            if text == "::1":
                fam, text = socket.AF_INET, "127.0.0.1"
            elif packed[:12] == b"\0" * 10 + b"\xff\xff":
                fam, text = socket.AF_INET, socket.inet_ntop(socket.AF_INET, packed[12:])
        if fam not in families:
            continue
        if canon is None:
            canon = names[0]
            aliases.extend(names[1:])
        else:
            aliases.extend(n for n in names if n != canon)
        addrs.append((fam, text))
    return Lookup(canon, aliases, addrs) if canon is not None else None


def _dns_forward(config: Config, name: str, families: tuple[int, ...]) -> Lookup:
    qtypes = [A if fam == socket.AF_INET else AAAA for fam in families]
    asked, results = dns_search(config, name, qtypes)
    canon, aliases, addrs = "", [], []
    for qtype in qtypes:
        final, chain, data = results[qtype]
        if data and not canon:
            canon, aliases = final, chain
        fam = socket.AF_INET if qtype == A else socket.AF_INET6
        addrs += [(fam, d) for d in data]
    return Lookup(canon or asked, aliases, addrs)


def forward(read: Reader, name: str, families: tuple[int, ...]) -> Lookup:
    """Runs the nsswitch ``hosts`` sources in order; raises ``_Status`` with the last source's failure."""
    config = Config(read)
    last = _Status("NOTFOUND", HOST_NOT_FOUND)
    for source, actions in config.sources:
        try:
            if source == "files":
                found = _files_forward(read, name, families)
                if found is None:
                    raise _Status("NOTFOUND", HOST_NOT_FOUND)
                return found
            return _dns_forward(config, name, families)
        except _Status as status:
            last = status
            if actions.get(status.status, "continue") == "return":
                break
    raise last


def reverse(read: Reader, family: int, addr: str) -> tuple[str, list[str]]:
    config = Config(read)
    last = _Status("NOTFOUND", HOST_NOT_FOUND)
    for source, actions in config.sources:
        try:
            if source == "files":
                for entry, names in hosts_entries(read):
                    if _numeric(entry) == (family, addr):
                        return names[0], names[1:]
                raise _Status("NOTFOUND", HOST_NOT_FOUND)
            packed = socket.inet_pton(family, addr)
            if family == socket.AF_INET:
                qname = ".".join(str(b) for b in reversed(packed)) + ".in-addr.arpa"
            else:
                qname = ".".join(reversed(packed.hex())) + ".ip6.arpa"
            answers = query(config, qname, [PTR])
            _final, aliases, names = answers[PTR].follow(qname, PTR)
            if names:
                return names[0], aliases
            raise _Status("NOTFOUND", NO_DATA if answers[PTR].rcode == 0 else HOST_NOT_FOUND)
        except Unavailable:
            last = _Status("UNAVAIL", TRY_AGAIN)
        except TimeoutError:
            last = _Status("TRYAGAIN", TRY_AGAIN)
        except _Status as status:
            last = status
        if actions.get(last.status, "continue") == "return":
            break
    raise last


# ------------------------------------------------------------------------------------- the socket calls
_FLAGS = (socket.AI_PASSIVE | socket.AI_CANONNAME | socket.AI_NUMERICHOST | socket.AI_V4MAPPED | socket.AI_ALL
          | socket.AI_ADDRCONFIG | socket.AI_NUMERICSERV | getattr(socket, "AI_IDN", 0x40)
          | getattr(socket, "AI_CANONIDN", 0x80))
_TYPES = [(socket.SOCK_STREAM, socket.IPPROTO_TCP, "tcp"), (socket.SOCK_DGRAM, socket.IPPROTO_UDP, "udp"),
          (socket.SOCK_RAW, 0, None)]


def _service(read: Reader, name: str, proto: str) -> int | None:
    for line in (read("/etc/services") or b"").decode("utf-8", "replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and "/" in words[1]:
            port, _, p = words[1].partition("/")
            if p == proto and (words[0] == name or name in words[2:]) and port.isdigit():
                return int(port)
    return None


def service_name(read: Reader, port: int, proto: str) -> str | None:
    for line in (read("/etc/services") or b"").decode("utf-8", "replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[1] == f"{port}/{proto}":
            return words[0]
    return None


def _socktypes(read: Reader, port: Any, socktype: int, proto: int, flags: int) -> list[tuple[int, int, int]]:
    """(socktype, protocol, port) triples, as glibc's gaih_inet_serv builds them."""
    # A protocol without a socket type picks the types of that protocol only; raw sockets take any protocol
    # but are chosen only by name.
    chosen = [t for t in _TYPES if (t[0] == socktype if socktype else not proto or t[1] == proto)
              and (not proto or not t[1] or t[1] == proto)]
    if socktype and not any(t[0] == socktype for t in _TYPES):
        raise gai_error(socket.EAI_SOCKTYPE)
    if port is None:
        return [(t, p or proto, 0) for t, p, _ in chosen]
    text = str(port)
    if isinstance(port, int) or text.isdigit():
        num = int(text)
        if socktype == socket.SOCK_RAW and not proto:
            raise gai_error(socket.EAI_SERVICE)
        return [(t, p or proto, num) for t, p, _ in chosen]
    if flags & socket.AI_NUMERICSERV:
        raise gai_error(socket.EAI_NONAME)
    out = []
    for t, p, pname in chosen:
        if pname is None:
            continue
        num = _service(read, text, pname)
        if num is not None:
            out.append((t, p, num))
    if not out:
        raise gai_error(socket.EAI_SERVICE)
    return out


def _families(family: int, flags: int) -> tuple[int, ...]:
    if family == socket.AF_INET:
        return (socket.AF_INET,)
    if family == socket.AF_INET6:
        return (socket.AF_INET6,)
    return (socket.AF_INET, socket.AF_INET6)


def _gai_status(status: _Status) -> socket.gaierror:
    if status.status in ("TRYAGAIN", "UNAVAIL") and status.herrno == TRY_AGAIN:
        return gai_error(socket.EAI_AGAIN)
    return gai_error(socket.EAI_NODATA if status.herrno == NO_DATA else socket.EAI_NONAME)


def _forward_addresses(read: Reader, host: str, families: tuple[int, ...], flags: int) -> tuple[list, str]:
    """(addresses, canonical name) of a name for getaddrinfo. ``AI_V4MAPPED`` with IPv6 asks for IPv4
    separately, as glibc does, when there is no IPv6 address or ``AI_ALL`` wants both."""
    try:
        found = forward(read, host, families)
        addrs, canon = list(found.addrs), found.canon
    except _Status as status:
        if not (families == (socket.AF_INET6,) and flags & socket.AI_V4MAPPED):
            raise _gai_status(status) from None
        addrs, canon, first = [], "", status
    else:
        first = None
    if families == (socket.AF_INET6,) and flags & socket.AI_V4MAPPED and (flags & socket.AI_ALL or not addrs):
        try:
            four = forward(read, host, (socket.AF_INET,))
        except _Status:
            if first is not None:
                raise _gai_status(first) from None
        else:
            addrs += [(socket.AF_INET6, "::ffff:" + a) for _, a in four.addrs]
            canon = canon or four.canon
    return addrs, canon


def _addrconfig() -> set:
    """The families this network namespace has a usable address of (loopback and link-local do not count)."""
    have = set()
    for _index, name in socket.if_nameindex():
        if name == "lo":
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                have.add(socket.AF_INET)
            except OSError:
                pass
    try:
        # The agent's own procfs, as this thread sees it: the network namespace it entered.
        with open("/proc/thread-self/net/if_inet6") as f:
            for line in f:
                words = line.split()
                if words and words[-1] != "lo" and not words[0].startswith("fe80"):
                    have.add(socket.AF_INET6)
    except OSError:
        pass
    return have


def getaddrinfo(read: Reader, host: str | None, port: Any, family: int = 0, socktype: int = 0, proto: int = 0,
                flags: int = 0) -> list:
    if flags & ~_FLAGS or (flags & socket.AI_CANONNAME and host is None):
        raise gai_error(socket.EAI_BADFLAGS)
    if host is None and port is None:
        raise gai_error(socket.EAI_NONAME)
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise gai_error(socket.EAI_FAMILY)
    types = _socktypes(read, port, socktype, proto, flags)
    canon = ""
    if host is None:
        passive = flags & socket.AI_PASSIVE
        addrs = [(socket.AF_INET6, "::" if passive else "::1"), (socket.AF_INET, "0.0.0.0" if passive else "127.0.0.1")]
        addrs = [a for a in addrs if family in (socket.AF_UNSPEC, a[0])]
    else:
        numeric = _numeric(host)
        if numeric is not None:
            fam, text = numeric
            if family == socket.AF_INET6 and fam == socket.AF_INET:
                if not flags & socket.AI_V4MAPPED:
                    raise gai_error(socket.EAI_ADDRFAMILY)
                fam, text = socket.AF_INET6, "::ffff:" + text
            elif family == socket.AF_INET and fam == socket.AF_INET6:
                raise gai_error(socket.EAI_ADDRFAMILY)
            addrs, canon = [(fam, text + ("%" + host.split("%", 1)[1] if "%" in host else ""))], host
        else:
            if flags & socket.AI_NUMERICHOST:
                raise gai_error(socket.EAI_NONAME)
            try:
                host.encode("ascii")
            except UnicodeEncodeError:
                host = host.encode("idna").decode("ascii")
            families = _families(family, flags)
            if flags & socket.AI_ADDRCONFIG:
                usable = _addrconfig()
                families = tuple(f for f in families if f in usable) or families
            addrs, canon = _forward_addresses(read, host, families, flags)
            if not addrs:
                raise gai_error(socket.EAI_NODATA)
            addrs = sort_addresses(addrs)
    out = []
    for fam, addr in addrs:
        for t, p, num in types:
            if fam == socket.AF_INET:
                sockaddr: list = [addr, num]
            else:
                text, _, scope = addr.partition("%")
                scope_id = 0
                if scope:
                    scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
                sockaddr = [text, num, 0, scope_id]
            out.append([int(fam), int(t), int(p), canon if not out and flags & socket.AI_CANONNAME else "",
                        sockaddr])
    return out


def gethostbyname_ex(read: Reader, host: str) -> list:
    infos = getaddrinfo(read, host, None, socket.AF_INET)  # Python checks the name with getaddrinfo first
    if _numeric(host) is not None:
        return [host, [], [infos[0][4][0]]]
    try:
        found = forward(read, host, (socket.AF_INET,))
    except _Status as status:
        raise h_error(status.herrno) from None
    aliases = found.aliases if found.aliases else []
    return [found.canon, aliases, [a for _, a in found.addrs]]


def gethostbyname(read: Reader, host: str) -> str:
    return getaddrinfo(read, host, None, socket.AF_INET)[0][4][0]


def gethostbyaddr(read: Reader, host: str) -> list:
    numeric = _numeric(host)
    if numeric is None:
        infos = getaddrinfo(read, host, None)
        fam, addr = infos[0][0], infos[0][4][0]
    else:
        fam, addr = numeric
    try:
        name, aliases = reverse(read, fam, addr)
    except _Status as status:
        raise h_error(status.herrno if status.herrno != NO_DATA else HOST_NOT_FOUND) from None
    return [name, aliases, [addr]]


def getnameinfo(read: Reader, sockaddr: list, flags: int) -> list:
    host, port = sockaddr[0], int(sockaddr[1])
    numeric = _numeric(host) if isinstance(host, str) else None
    if numeric is None:
        raise gai_error(socket.EAI_NONAME)
    fam, addr = numeric
    name = None
    if not flags & socket.NI_NUMERICHOST:
        try:
            name = reverse(read, fam, addr)[0]
        except _Status as status:
            # glibc: a name server that failed is an error even when a numeric answer would do.
            if status.herrno == TRY_AGAIN:
                raise gai_error(socket.EAI_AGAIN) from None
            if flags & socket.NI_NAMEREQD:
                raise gai_error(socket.EAI_NONAME) from None
        if name is not None and flags & socket.NI_NOFQDN:
            local = socket.gethostname().partition(".")[2]
            if local and name.endswith("." + local):
                name = name[: -len(local) - 1]
    if name is None:
        name = addr
        if fam == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            try:
                name += "%" + socket.if_indextoname(int(sockaddr[3]))
            except OSError:
                name += "%" + str(sockaddr[3])
    service = None
    if not flags & socket.NI_NUMERICSERV:
        service = service_name(read, port, "udp" if flags & socket.NI_DGRAM else "tcp")
    return [name, service or str(port)]


def hostname(read: Reader) -> str:
    raw = read("/etc/hostname")
    name = raw.decode("utf-8", "replace").strip() if raw else ""
    return name or socket.gethostname()
