"""Name lookups of C code answered like Python's: the same :func:`mirror_py.shim.dns.remote_name` decides, and
a name sent to the target is resolved by the session (its cache included) through the same calls.

A local name goes to libc's own function with the caller's exact arguments. A remote answer is built in C
memory the way glibc builds its own: each ``addrinfo`` and its sockaddr in one ``malloc`` block, the canonical
name ``strdup``'ed, so that libc's ``freeaddrinfo`` can free it too; ``freeaddrinfo`` is routed anyway (the
layout is libc-specific) and frees the chains made here itself.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import threading
from typing import Any, Callable

from . import csockaddr, dns

EAI_AGAIN, EAI_FAIL, EAI_MEMORY, EAI_SYSTEM = -3, -4, -10, -11
HOST_NOT_FOUND, TRY_AGAIN, NO_RECOVERY = 1, 2, 3
_AI = struct.Struct("<iiiiI4xQQQ")  # flags, family, socktype, protocol, addrlen, addr, canonname, next
_HOSTENT = struct.Struct("<QQiiQ")  # name, aliases, addrtype, length, addr_list

_libc = ctypes.CDLL(None, use_errno=True)
_malloc = _libc.malloc
_malloc.restype, _malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
_free = _libc.free
_free.restype, _free.argtypes = None, (ctypes.c_void_p,)
_strdup = _libc.strdup
_strdup.restype, _strdup.argtypes = ctypes.c_void_p, (ctypes.c_char_p,)
_h_errno = _libc.__h_errno_location
_h_errno.restype = ctypes.POINTER(ctypes.c_int)

_ours: dict[int, list[int]] = {}  # head of each chain made here -> its blocks and strings
_ours_lock = threading.Lock()
_static = threading.local()  # gethostbyname's per-thread result, as libc keeps one


def _text(address: int | None) -> str | None:
    if not address:
        return None
    return ctypes.string_at(address).decode("utf-8", "surrogateescape")


def _eai(exc: OSError) -> int:
    if isinstance(exc, socket.gaierror) and isinstance(exc.errno, int) and exc.errno < 0:
        return exc.errno
    ctypes.set_errno(exc.errno or errno.EIO)
    return EAI_SYSTEM


def getaddrinfo(original: Callable, node: int | None, service: int | None, hints: int | None, res: int) -> int:
    host = _text(node)
    flags = family = socktype = proto = 0
    if hints:
        flags, family, socktype, proto = struct.unpack("<iiii", ctypes.string_at(hints, 16))
    port: Any = _text(service)
    if port is not None and port.isdigit():
        port = int(port)
    name = dns.remote_name(host, port, flags)
    if name is None:
        return original(node, service, hints, res)
    try:
        infos = dns.remote_getaddrinfo(name, port, family, socktype, proto, flags)
    except OSError as exc:
        return _eai(exc)
    if not infos:
        return -2  # EAI_NONAME
    head = _build(infos)
    if not head:
        return EAI_MEMORY
    ctypes.c_void_p.from_address(res).value = head
    return 0


def _build(infos: list[tuple]) -> int:
    blocks: list[int] = []
    prev_next = 0
    head = 0
    for i, (family, kind, proto, canon, sockaddr) in enumerate(infos):
        data = csockaddr.pack(int(family), sockaddr)
        block = _malloc(_AI.size + len(data))
        if not block:
            for b in blocks:
                _free(b)
            return 0
        blocks.append(block)
        name = _strdup(canon.encode()) if (i == 0 and canon) else None
        if name:
            blocks.append(-name)  # negative: a string, freed the same way, told apart for clarity
        ctypes.memmove(block, _AI.pack(0, int(family), int(kind), int(proto), len(data), block + _AI.size,
                                       name or 0, 0), _AI.size)
        ctypes.memmove(block + _AI.size, data, len(data))
        if prev_next:
            ctypes.c_void_p.from_address(prev_next).value = block
        else:
            head = block
        prev_next = block + _AI.size - 8
    with _ours_lock:
        _ours[head] = blocks
    return head


def freeaddrinfo(original: Callable, res: int | None) -> None:
    with _ours_lock:
        blocks = _ours.pop(res, None) if res else None
    if blocks is None:
        original(res)
        return
    for block in blocks:
        _free(abs(block))


def _lookup_ex(name: str) -> tuple[Any, int]:
    """(canonical name, aliases, IPv4 addresses) from the target, or (None, h_errno)."""
    try:
        return dns.remote_gethostbyname_ex(name), 0
    except socket.gaierror as exc:
        return None, TRY_AGAIN if exc.errno == socket.EAI_AGAIN else HOST_NOT_FOUND
    except OSError:
        return None, TRY_AGAIN


def _fill(answer: tuple, ret: int, buf: int, buflen: int) -> bool:
    """A hostent at ``ret`` whose strings and arrays live in ``buf``, as gethostbyname_r lays it out; False
    when ``buflen`` is too small."""
    canon, aliases, addrs = answer
    addrs = [a for a in addrs if ":" not in a]
    strings = [canon.encode() + b"\0"] + [a.encode() + b"\0" for a in aliases]
    raw = [socket.inet_aton(a) for a in addrs]
    need = 8 * (len(aliases) + 1) + 8 * (len(raw) + 1) + 4 * len(raw) + sum(len(s) for s in strings)
    if need > buflen:
        return False
    at = buf
    addr_ptrs = []
    for r in raw:
        ctypes.memmove(at, r, 4)
        addr_ptrs.append(at)
        at += 4
    at = (at + 7) & ~7 if raw else at
    need_aligned = at - buf + 8 * (len(aliases) + 1) + 8 * (len(raw) + 1) + sum(len(s) for s in strings)
    if need_aligned > buflen:
        return False
    str_ptrs = []
    list_at = at
    at += 8 * (len(aliases) + 1) + 8 * (len(raw) + 1)
    for s in strings:
        ctypes.memmove(at, s, len(s))
        str_ptrs.append(at)
        at += len(s)
    alias_list = list_at
    for i, p in enumerate(str_ptrs[1:]):
        ctypes.c_void_p.from_address(alias_list + 8 * i).value = p
    ctypes.c_void_p.from_address(alias_list + 8 * len(aliases)).value = None
    addr_list = alias_list + 8 * (len(aliases) + 1)
    for i, p in enumerate(addr_ptrs):
        ctypes.c_void_p.from_address(addr_list + 8 * i).value = p
    ctypes.c_void_p.from_address(addr_list + 8 * len(raw)).value = None
    ctypes.memmove(ret, _HOSTENT.pack(str_ptrs[0], alias_list, socket.AF_INET, 4, addr_list), _HOSTENT.size)
    return True


def gethostbyname_r(original: Callable, name: bytes | None, ret: int, buf: int, buflen: int, result: int,
                    h_errnop: int) -> int:
    host = name.decode("utf-8", "surrogateescape") if name is not None else None
    remote = dns.remote_name(host)
    if remote is None:
        return original(name, ret, buf, buflen, result, h_errnop)
    answer, herr = _lookup_ex(remote)
    out = ctypes.c_void_p.from_address(result)
    out.value = None
    if answer is None or not [a for a in answer[2] if ":" not in a]:
        if h_errnop:
            ctypes.c_int.from_address(h_errnop).value = herr or HOST_NOT_FOUND
        return 0
    if not _fill(answer, ret, buf, buflen):
        if h_errnop:
            ctypes.c_int.from_address(h_errnop).value = -1  # NETDB_INTERNAL: errno says ERANGE
        ctypes.set_errno(errno.ERANGE)
        return errno.ERANGE
    out.value = ret
    return 0


def gethostbyname(original: Callable, name: bytes | None) -> int | None:
    host = name.decode("utf-8", "surrogateescape") if name is not None else None
    remote = dns.remote_name(host)
    if remote is None:
        return original(name)
    answer, herr = _lookup_ex(remote)
    if answer is None or not [a for a in answer[2] if ":" not in a]:
        _h_errno().contents.value = herr or HOST_NOT_FOUND
        return None
    if getattr(_static, "buf", None) is None:
        _static.buf = ctypes.create_string_buffer(_HOSTENT.size + 8192)
    base = ctypes.addressof(_static.buf)
    if not _fill(answer, base, base + _HOSTENT.size, 8192):
        _h_errno().contents.value = NO_RECOVERY
        return None
    return base
