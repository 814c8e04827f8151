"""Finds, in the shared objects loaded in this process, the GOT slots through which they call libc functions.

A shared object calls ``connect``, ``getaddrinfo``, … through a slot of its Global Offset Table that the
dynamic loader filled in. Its dynamic section (``PT_DYNAMIC``) says where the relocations that name those
slots are; each relocation names a symbol, and an *undefined* symbol of that name is a call out of the object.
This module only reads: :mod:`mirror_py.shim.got` writes the slots.

Reading is done in bulk (one ``string_at`` per table, searches in C over the bytes), because a large object
such as grpcio's core has tens of thousands of relocations and a ctypes call per entry would cost
milliseconds per object.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import NamedTuple

from .c_surface import ARCH_RELOCATIONS

PT_DYNAMIC = 2
DT_NULL, DT_PLTRELSZ, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ, DT_STRSZ, DT_JMPREL = 0, 2, 5, 6, 7, 8, 10, 23
_SYM_SIZE = 24  # Elf64_Sym
_RELA_SIZE = 24  # Elf64_Rela
_DYN = struct.Struct("<qQ")


class _PhdrInfo(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("phdr", ctypes.c_void_p),
        ("phnum", ctypes.c_uint16),
        ("adds", ctypes.c_ulonglong),
        ("subs", ctypes.c_ulonglong),
    ]


class _Phdr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("offset", ctypes.c_uint64),
        ("vaddr", ctypes.c_uint64), ("paddr", ctypes.c_uint64), ("filesz", ctypes.c_uint64),
        ("memsz", ctypes.c_uint64), ("align", ctypes.c_uint64),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p)


class Slot(NamedTuple):
    address: int  # of the 8-byte GOT entry
    symbol: str
    kind: str  # "jump_slot", "glob_dat" or "abs64"


class LoadedObject(NamedTuple):
    base: int
    name: str  # its path as the loader knows it ("" for the executable)
    dynamic: int  # address of its dynamic section, 0 when it has none


class Loaded(NamedTuple):
    objects: list[LoadedObject]
    adds: int  # the loader's count of loads and unloads: unchanged counts mean an unchanged list
    subs: int


def _iterate() -> ctypes._CFuncPtr:
    # Called through the process's own namespace as a PyDLL function: the GIL stays held while the loader's lock
    # is, so no thread holding the GIL can be waiting for that lock inside dlopen while our callback waits for
    # the GIL (a lock-order deadlock otherwise).
    fn = ctypes.PyDLL(None).dl_iterate_phdr
    fn.argtypes = (_CALLBACK, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


_fn: list = []


def loaded(known: dict[tuple[int, str], int] | None = None) -> Loaded:
    """Every object the loader has mapped, in its order (the executable first). ``known`` maps objects seen
    before to their dynamic section, whose program headers are then not read again."""
    if not _fn:
        _fn.append(_iterate())
    found: list[LoadedObject] = []
    counts = [0, 0]

    def visit(info_p, size, data):
        info = info_p.contents
        if not found:
            counts[0], counts[1] = info.adds, info.subs
        name = (info.name or b"").decode("utf-8", "surrogateescape")
        if known is not None and (info.addr, name) in known:
            found.append(LoadedObject(info.addr, name, known[(info.addr, name)]))
            return 0
        dynamic = 0
        phdrs = ctypes.cast(info.phdr, ctypes.POINTER(_Phdr))
        for i in range(info.phnum):
            if phdrs[i].type == PT_DYNAMIC:
                dynamic = info.addr + phdrs[i].vaddr
                break
        found.append(LoadedObject(info.addr, name, dynamic))
        return 0

    _fn[0](_CALLBACK(visit), None)
    return Loaded(found, counts[0], counts[1])


def _dynamic_entries(obj: LoadedObject) -> dict[int, int]:
    entries: dict[int, int] = {}
    address = obj.dynamic
    while True:
        tag, value = _DYN.unpack(ctypes.string_at(address, 16))
        if tag == DT_NULL:
            return entries
        entries.setdefault(tag, value)
        address += 16


def _absolute(obj: LoadedObject, value: int) -> int:
    # glibc rewrites d_ptr to absolute addresses in place; musl and the vdso leave them relative to the base.
    return value + obj.base if value < obj.base else value


def _offsets(strtab: bytes, name: bytes) -> list[int]:
    """Every st_name that reads ``name``: the linker may share a string's tail with a longer one."""
    found, at, needle = [], -1, name + b"\0"
    while True:
        at = strtab.find(needle, at + 1)
        if at < 0:
            return found
        found.append(at)


def slots(obj: LoadedObject, symbols: frozenset[str], machine: str | None = None) -> list[Slot]:
    """The GOT slots of ``obj`` whose relocation names one of ``symbols`` as an undefined (imported) symbol."""
    if not obj.dynamic:
        return []
    kinds = ARCH_RELOCATIONS.get(machine or _machine())
    if kinds is None:
        return []
    dyn = _dynamic_entries(obj)
    if DT_SYMTAB not in dyn or DT_STRTAB not in dyn or DT_STRSZ not in dyn:
        return []
    tables = []
    if DT_JMPREL in dyn and dyn.get(DT_PLTRELSZ):
        tables.append(ctypes.string_at(_absolute(obj, dyn[DT_JMPREL]), dyn[DT_PLTRELSZ]))
    if DT_RELA in dyn and dyn.get(DT_RELASZ):
        tables.append(ctypes.string_at(_absolute(obj, dyn[DT_RELA]), dyn[DT_RELASZ]))
    if not tables:
        return []
    strtab = ctypes.string_at(_absolute(obj, dyn[DT_STRTAB]), dyn[DT_STRSZ])
    by_offset: dict[int, str] = {}
    for name in symbols:
        for off in _offsets(strtab, name.encode()):
            by_offset[off] = name
    if not by_offset:
        return []  # none of the names occurs: the common case, decided without reading any relocation
    indices = [memoryview(table).cast("I")[3::6].tolist() for table in tables]  # r_info's high half
    count = max((max(column) + 1 for column in indices if column), default=0)
    symtab = ctypes.string_at(_absolute(obj, dyn[DT_SYMTAB]), count * _SYM_SIZE)
    sym_words = memoryview(symtab).cast("I")
    names = sym_words[0::6]
    wanted: dict[int, str] = {}
    for index, st_name in enumerate(names):
        name = by_offset.get(st_name)
        if name is not None and index:
            shndx = struct.unpack_from("<H", symtab, index * _SYM_SIZE + 6)[0]
            if shndx == 0:  # undefined here: a call out of the object, not its own function of that name
                wanted[index] = name
    out: list[Slot] = []
    base = obj.base
    by_number = {number: kind for kind, number in kinds.items()}
    for table, column in zip(tables, indices):
        for entry in [i for i, sym in enumerate(column) if sym in wanted]:  # one pass, in C mostly
            offset, info, addend = struct.unpack_from("<QQq", table, entry * _RELA_SIZE)
            kind = by_number.get(info & 0xFFFFFFFF)
            if kind is not None and (kind != "abs64" or addend == 0):
                out.append(Slot(base + offset, wanted[column[entry]], kind))
    return out


def _machine() -> str:
    multiarch = getattr(sys.implementation, "_multiarch", "")
    return multiarch.split("-", 1)[0]

