"""Does a process of this session listen on this loopback address and port on the laptop?

Outgoing traffic goes through the target, loopback included, because a service's sidecars listen on the
pod's loopback (a database proxy on 5432, a mesh's admin port). But tests and tools start servers of their own
on 127.0.0.1 and then connect to them: pytest-httpserver, aiohttp's test server, debugpy's adapter, a
multiprocessing manager. Those connects must reach the laptop. The rule
(``network.outgoing.local_listeners``):

- ``"session"`` (default): a connect to a loopback address stays local when a socket of the laptop listens on
  that address and port (a TCP listener, or a bound unconnected UDP socket; wildcard binds included) and the
  socket belongs to this process, to a descendant of it, or to a process whose environment carries this
  session's ``MIRROR_PY_SESSION`` (a process started under the session, even one that daemonized itself, as
  debugpy's adapter does). A listener of any other laptop process (the IDE's port that pydevd connects back
  to, a debug adapter the IDE started, a server run by hand) takes the connect only when nothing in the target
  listens on that address and port: the agent reads the target's socket tables (no connect a sidecar would
  see), so a pod's sidecar on the same port still wins, and a connect the pod would refuse reaches the laptop
  process the app means.
- ``"laptop"``: any listener of the laptop on that address and port wins, whoever owns it.
- ``"none"``: every loopback connect goes to the target.

Cost: only connects to loopback ask. They list the laptop's listening sockets (its network namespace):
through the kernel's sock_diag netlink interface, which walks only the listening table (tens of
microseconds), or where that is unavailable from ``/proc/net/{tcp,udp}[6]`` (the same sockets, but the kernel
walks every connection hash bucket to print them: milliseconds). Finding the owner walks ``/proc`` only when a
laptop listener exists, and its answer is cached per listening socket (port and inode) until another socket
listens there; the target is asked only about a laptop listener that is not the session's, and its answer is
kept for ``TARGET_ANSWER_TTL`` seconds. Nothing here raises: what cannot be read means "no listener found",
and a target that cannot say means "the target listens", so the connect goes to the target as it would
without this rule.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the shim's start-up imports nothing it does not use
    from collections.abc import Iterable, Iterator

MODES = ("session", "laptop", "none")

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
_V4_LOOPBACK = bytes((127, 0, 0, 1))
_V6_LOOPBACK = bytes(15) + b"\x01"
_MAPPED = bytes(10) + b"\xff\xff"

# (proto, port) -> (the listening inodes found, whether one of them is the session's)
_decided: dict[tuple[str, int], tuple[frozenset[int], bool]] = {}
# (proto, loopback address, port) -> (when asked, whether the target listens there)
_target_says: dict[tuple[str, str, int], tuple[float, bool]] = {}
TARGET_ANSWER_TTL = 5.0


def loopback_key(ip: str) -> tuple[int, bytes] | None:
    """``(4, 4 bytes)`` or ``(6, 16 bytes)`` for an address of this host (loopback, or 0.0.0.0/``::``, which a
    connect treats as loopback), None for any other address. IPv4-mapped IPv6 addresses count as IPv4."""
    if not isinstance(ip, str) or not ip.startswith(("127.", "0", ":")):
        return None  # the common case, a remote address, without parsing it
    from socket import AF_INET, AF_INET6, inet_pton

    try:
        if ":" in ip:
            raw = inet_pton(AF_INET6, ip.partition("%")[0])
            if raw.startswith(_MAPPED):
                raw4 = raw[12:]
                return (4, raw4) if raw4[0] == 127 else (4, _V4_LOOPBACK) if raw4 == bytes(4) else None
            if raw == _V6_LOOPBACK:
                return 6, raw
            return (6, _V6_LOOPBACK) if raw == bytes(16) else None
        raw = inet_pton(AF_INET, ip)
    except (OSError, ValueError, TypeError):
        return None
    if raw[0] == 127:
        return 4, raw
    return (4, _V4_LOOPBACK) if raw == bytes(4) else None


def kernel_hex(raw: bytes, byteorder: str = sys.byteorder) -> str:
    """An address as ``/proc/net/*`` spells it: each 32-bit word in the host's byte order, upper-case hex."""
    if byteorder == "big":
        return raw.hex().upper()
    return "".join(raw[i:i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def entries(text: str) -> Iterator[tuple[str, str, str, int]]:
    """``(local address hex, port hex, state, inode)`` of each socket line of a ``/proc/net`` table."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        addr, sep, port = fields[1].rpartition(":")
        if not sep:
            continue
        try:
            inode = int(fields[9])
        except ValueError:
            continue
        yield addr, port, fields[3], inode


def wanted_raw(key: tuple[int, bytes]) -> dict[int, set[bytes]]:
    """IP version of a socket -> the local addresses (network order) whose sockets take a connect to ``key``:
    the address itself, the wildcard of its family, and for IPv4 the dual-stack forms of an IPv6 socket."""
    version, raw = key
    if version == 6:
        return {6: {raw, bytes(16)}}
    return {4: {raw, bytes(4)}, 6: {_MAPPED + raw, bytes(16)}}


def wanted_addresses(key: tuple[int, bytes], byteorder: str = sys.byteorder) -> dict[str, set[str]]:
    """:func:`wanted_raw` as ``/proc/net`` spells it, keyed by table suffix ('4': tcp, '6': tcp6)."""
    return {str(v): {kernel_hex(a, byteorder) for a in addrs} for v, addrs in wanted_raw(key).items()}


def listening_inodes(text: str, proto: str, addresses: Iterable[str], port: int) -> set[int]:
    """Inodes of the sockets in one ``/proc/net`` table that listen on one of ``addresses`` (kernel hex) and
    ``port``: TCP in LISTEN state, UDP bound and not connected."""
    state = _TCP_LISTEN if proto == "tcp" else _UDP_UNCONNECTED
    port_hex = f"{port:04X}"
    wanted = set(addresses)
    return {inode for addr, p, st, inode in entries(text) if p == port_hex and st == state and addr in wanted}


def from_proc(proto: str, wanted: dict[int, set[bytes]], port: int) -> set[int]:
    """The listeners from ``/proc/net/{proto}[6]``; a table that cannot be read counts as empty."""
    found: set[int] = set()
    for version, addresses in wanted.items():
        name = proto if version == 4 else proto + "6"
        try:
            with open(f"/proc/net/{name}", encoding="ascii", errors="replace") as table:
                text = table.read()
        except OSError:
            continue
        found |= listening_inodes(text, proto, {kernel_hex(a) for a in addresses}, port)
    return found


# The same sockets from the kernel's sock_diag netlink interface (what ``ss -l`` reads). Asked for listeners
# only, the kernel walks just its small listening table, where /proc/net/tcp always walks the whole
# established-connections hash table: milliseconds on a machine with much memory, for every loopback connect.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x301
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_DIAG_STATES = {"tcp": 1 << 10, "udp": 1 << 7}  # TCP_LISTEN; TCP_CLOSE is an unconnected UDP socket
_DIAG_PROTOCOLS = {"tcp": 6, "udp": 17}
_netlink_broken: list[bool] = []


def diag_request(version: int, proto: str, seq: int) -> bytes:
    """A dump request (``inet_diag_req_v2``) for the listening sockets of one family and protocol."""
    import struct

    family = 2 if version == 4 else 10
    body = struct.pack("=BBBBI", family, _DIAG_PROTOCOLS[proto], 0, 0, _DIAG_STATES[proto]) + bytes(48)
    return struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, seq, 0) + body


def diag_sockets(data: bytes) -> tuple[list[tuple[int, bytes, int, int]], bool]:
    """``(state, local address, local port, inode)`` of each ``inet_diag_msg`` in a netlink reply, and
    whether the dump is done. An error message raises OSError."""
    import struct

    out = []
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if length < 16 or at + length > len(data):
            raise OSError("truncated sock_diag reply")
        if kind == _NLMSG_DONE:
            return out, True
        if kind == _NLMSG_ERROR:
            code = struct.unpack_from("=i", data, at + 16)[0]
            raise OSError(-code, "sock_diag refused the request")
        if kind == _SOCK_DIAG_BY_FAMILY and length >= 16 + 72:
            family, state = data[at + 16], data[at + 17]
            port = struct.unpack_from("!H", data, at + 20)[0]
            size = 4 if family == 2 else 16
            inode = struct.unpack_from("=I", data, at + 16 + 68)[0]
            out.append((state, bytes(data[at + 24:at + 24 + size]), port, inode))
        at += (length + 3) & ~3
    return out, False


def from_netlink(proto: str, wanted: dict[int, set[bytes]], port: int) -> set[int]:
    """The listeners as the kernel's sock_diag reports them; OSError when the interface is unavailable."""
    import _socket

    found: set[int] = set()
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(2.0)
        for seq, (version, addresses) in enumerate(wanted.items(), 1):
            sock.sendto(diag_request(version, proto, seq), (0, 0))
            done = False
            while not done:
                rows, done = diag_sockets(sock.recv(1 << 16))
                found.update(inode for _, addr, p, inode in rows if p == port and addr in addresses)
    finally:
        sock.close()
    return found


def laptop_listeners(proto: str, ip: str, port: int) -> set[int]:
    """Inodes of the laptop's sockets that a ``proto`` connect to ``ip``:``port`` would reach (empty when the
    address is not this host's, or neither sock_diag nor /proc can be read)."""
    key = loopback_key(ip)
    if key is None:
        return set()
    wanted = wanted_raw(key)
    if not _netlink_broken:
        try:
            return from_netlink(proto, wanted, port)
        except (OSError, ValueError, AttributeError):
            _netlink_broken.append(True)  # no sock_diag here (a sandbox, another kernel): /proc from now on
    return from_proc(proto, wanted, port)


# ---------------------------------------------------------------------------------------- owners
def _holds(pid: str, links: set[str]) -> bool:
    try:
        with os.scandir(f"/proc/{pid}/fd") as it:
            for entry in it:
                try:
                    if os.readlink(entry.path) in links:
                        return True
                except OSError:
                    continue
    except OSError:
        return False
    return False


def _parent(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after it start past the last ')'.
    rest = stat[stat.rfind(b")") + 2:].split()
    return rest[1].decode() if len(rest) > 1 else None


def _descends_from(pid: str, ancestor: str, parents: dict[str, str | None]) -> bool:
    seen = 0
    while pid not in ("0", "1") and seen < 256:
        parent = parents.get(pid) if pid in parents else _parent(pid)
        if parent is None:
            return False
        if parent == ancestor:
            return True
        pid, seen = parent, seen + 1
    return False


def _carries(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def session_owns(inodes: Iterable[int], me: str | None = None, session: str | None = None) -> bool:
    """Is one of these sockets held by this process, a descendant of it, or a process whose environment has
    ``MIRROR_PY_SESSION`` = ``session`` (default: this process's own value)?"""
    links = {f"socket:[{inode}]" for inode in inodes}
    if not links:
        return False
    me = me or str(os.getpid())
    if _holds(me, links):
        return True
    if session is None:
        session = os.environ.get("MIRROR_PY_SESSION") or ""
    marker = f"MIRROR_PY_SESSION={session}".encode() if session else None
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit() and name != me]
    except OSError:
        return False
    parents = {pid: _parent(pid) for pid in pids}
    for pid in pids:
        if (marker is not None and _carries(pid, marker)) or _descends_from(pid, me, parents):
            if _holds(pid, links):
                return True
    return False


# ---------------------------------------------------------------------------------------- the decision
def stays_local(proto: str, ip: str, port: int, mode: str) -> bool:
    """Should a ``proto`` connect to ``ip``:``port`` stay on the laptop because one of its own listeners (in
    the sense of ``mode``) takes it? Never raises."""
    if mode == "none":
        return False
    try:
        inodes = frozenset(laptop_listeners(proto, ip, port))
        if not inodes:
            return False
        if mode == "laptop":
            return True
        known = _decided.get((proto, port))
        if known is not None and known[0] == inodes:
            owned = known[1]
        else:
            owned = session_owns(inodes)
            if len(_decided) >= 1024:
                _decided.clear()
            _decided[(proto, port)] = (inodes, owned)
        return owned or target_listens(proto, ip, port) is False
    except Exception:  # a check that fails leaves the connect to its default route
        return False


def target_listens(proto: str, ip: str, port: int) -> bool | None:
    """Does a socket in the target take a ``proto`` connect to loopback ``ip``:``port``? None when the session
    cannot tell (an older agent, a lost link): the caller then keeps the connect's default route."""
    import time

    key = (proto, ip, port)
    now = time.monotonic()
    known = _target_says.get(key)
    if known is not None and now - known[0] < TARGET_ANSWER_TTL:
        return known[1]
    from . import rpc

    try:
        reply = rpc.call({"op": "listens", "proto": proto, "ip": ip, "port": port}, timeout=30.0)
    except OSError:
        return None
    if "ok" not in reply:
        return None
    answer = bool(reply["ok"].get("listens"))
    if len(_target_says) >= 1024:
        _target_says.clear()
    _target_says[key] = (now, answer)
    return answer
_own: dict[frozenset[int], bool] = {}  # listening inodes -> whether this very process holds one


def session_port(proto: str, port: int) -> bool:
    """After :func:`stays_local` kept a connect local in ``session`` mode: was it for a listener of the session
    (rather than because nothing in the target listens there)? Only says how the decision is reported."""
    known = _decided.get((proto, port))
    return bool(known and known[1])


def own_port(proto: str, port: int) -> bool:
    """After :func:`stays_local` kept a connect local in ``session`` mode: is the listener this process's own
    (rather than another process's of the session)? Only says how the decision is reported; never raises."""
    known = _decided.get((proto, port))
    if known is None:
        return False
    inodes = known[0]
    if inodes not in _own:
        if len(_own) >= 1024:
            _own.clear()
        _own[inodes] = _holds(str(os.getpid()), {f"socket:[{inode}]" for inode in inodes})
    return _own[inodes]


def forget_all() -> None:
    """Drops cached owner decisions (a forked child is another process: "this process" changed)."""
    _decided.clear()
    _target_says.clear()
    _own.clear()
