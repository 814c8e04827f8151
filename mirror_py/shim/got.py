"""Writes the GOT slots found by :mod:`mirror_py.shim.elf`, with symmetric install and uninstall.

Each hooked symbol gets a few bytes of machine code, a *gate*: when a gate byte is set it jumps to the ctypes
callback, else straight to the original function. C code in a loaded object then calls the gate instead of libc.
The gate byte is what lets C threads keep running safely where Python cannot answer:

- at interpreter exit (``atexit``) the byte is cleared: grpc's or libuv's threads that call ``connect`` while
  the interpreter is finalised reach libc directly instead of a callback that would need a dead interpreter;
- in a child forked by C code (``fork()`` outside ``os.fork``) a handler registered with the C library's own
  at-fork list clears it, with no Python involved; ``os.fork()`` children set it again, since they are
  Python processes that stay interposed.

Where the system refuses executable anonymous memory (W^X policies), slots point at the callbacks directly and
the off switch at exit is restoring every slot instead; C-level fork children then are not protected, and
that is said once.

Objects: every object the loader has mapped, except the interpreter's own (the executable, libpython and the
standard library's extension modules, whose socket calls are the shim's own) and libc and the loader. In the
interpreter's objects only ``dlopen`` is hooked, so that imports and ``ctypes.CDLL`` rescan. Each object is
scanned once; a later ``dlopen`` (from Python or from C) scans what it added.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
import threading
from _thread import get_ident
from typing import Any, Callable

from . import elf
from .c_surface import ARCH_RELOCATIONS, C_FILE_SURFACE, C_SURFACE, NEVER, CHook

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SLOT_SIZE = 64  # bytes of code per gate

_lock = threading.RLock()
_guard = threading.local()
_in_flight: set[int] = set()  # threads inside a callback now
EXIT_DRAIN = 2.0  # seconds the exit waits for callbacks in progress (at_exit)


class _State:
    def __init__(self) -> None:
        self.built = False
        self.gate = 0  # address of the gate byte
        self.gates: dict[str, int] = {}  # symbol -> address its slots are pointed at
        self.originals: dict[str, Any] = {}  # symbol -> ctypes function calling the original
        self.keep: list[Any] = []  # callbacks and ctypes objects that must outlive the interpreter
        self.direct = False  # no gates: slots point at the callbacks
        self.active = False
        self.scanned: set[tuple[int, str]] = set()
        self.dynamics: dict[tuple[int, str], int] = {}  # scanned object -> its dynamic section
        self.patched: list[tuple[int, int, int, str, tuple[int, str]]] = []  # (slot, old, new, name, object key)
        self.counts = (-1, -1)
        self.interpreter: tuple[str, ...] = ()
        self.machine = elf._machine()
        self.warned = False
        self.exiting = False


_state = _State()


def supported() -> bool:
    """Linux on a machine whose relocation numbers and gate code this module knows."""
    return sys.platform.startswith("linux") and elf._machine() in ARCH_RELOCATIONS


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fn(lib: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


class _Libc:
    def __init__(self) -> None:
        lib = _libc()
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        self.mmap = _fn(lib, "mmap", vp, vp, sz, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        self.mprotect = _fn(lib, "mprotect", ctypes.c_int, vp, sz, ctypes.c_int)
        self.lib = lib


_c: list[_Libc] = []


def _libc_fns() -> _Libc:
    if not _c:
        _c.append(_Libc())
    return _c[0]


# ------------------------------------------------------------------------------------------------ machine code
def _x86_64_gate(gate: int, hook: int, original: int) -> bytes:
    q = lambda v: v.to_bytes(8, "little")  # noqa: E731
    return (b"\x48\xb8" + q(gate)        # movabs rax, gate
            + b"\x80\x38\x00"            # cmp byte [rax], 0
            + b"\x48\xb8" + q(hook)      # movabs rax, hook (flags kept)
            + b"\x75\x0a"                # jne +10: open gate, jump to the hook
            + b"\x48\xb8" + q(original)  # movabs rax, original
            + b"\xff\xe0")               # jmp rax


def _x86_64_closer(gate: int) -> bytes:
    return b"\x48\xb8" + gate.to_bytes(8, "little") + b"\xc6\x00\x00\xc3"  # mov byte [rax], 0; ret


def _a64(*words: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def _aarch64_gate(gate: int, hook: int, original: int) -> bytes:
    ldr = lambda at, lit, rt=16: 0x58000000 | (((lit - at) // 4) << 5) | rt  # noqa: E731 - LDR (literal)
    code = _a64(ldr(0, 32), 0x39400211,   # ldr x16, gate; ldrb w17, [x16]
                0x34000000 | (3 << 5) | 17,  # cbz w17, +12 (closed: to the original)
                ldr(12, 40), 0xD61F0200,  # ldr x16, hook; br x16
                ldr(20, 48), 0xD61F0200,  # ldr x16, original; br x16
                0xD503201F)               # nop (literals aligned)
    return code + gate.to_bytes(8, "little") + hook.to_bytes(8, "little") + original.to_bytes(8, "little")


def _aarch64_closer(gate: int) -> bytes:
    return _a64(0x58000000 | (4 << 5) | 16, 0x3900021F, 0xD65F03C0, 0xD503201F) + gate.to_bytes(8, "little")


def _exec_page(code: bytes) -> int:
    """``code`` in a fresh page made executable after it was written (never writable and executable at once);
    0 when the system refuses."""
    c = _libc_fns()
    size = (len(code) + _PAGE - 1) // _PAGE * _PAGE
    page = c.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if not page or page == ctypes.c_void_p(-1).value:
        return 0
    ctypes.memmove(page, code, len(code))
    if _state.machine == "aarch64":
        _sync_icache(page, len(code))
    if c.mprotect(page, size, PROT_READ | PROT_EXEC) != 0:
        return 0
    return page


def _sync_icache(start: int, size: int) -> None:
    try:
        gcc = ctypes.CDLL("libgcc_s.so.1")
        fn = _fn(gcc, "__clear_cache", None, ctypes.c_void_p, ctypes.c_void_p)
    except (OSError, AttributeError):
        return
    fn(start, start + size)


# ------------------------------------------------------------------------------------------------ callbacks
def _ctype(name: str | None) -> Any:
    return None if name is None else getattr(ctypes, name)


def _failure(hook: CHook) -> Any:
    if hook.restype == "c_void_p":
        return None
    if hook.symbol == "getaddrinfo":
        return -4  # EAI_FAIL
    if hook.symbol == "gethostbyname_r":
        return errno.EIO
    return -1


def _entry(hook: CHook, original: Any) -> Callable:
    """The Python side of a gate: nested calls pass straight through (the thread-local guard), and an error
    of mirror-py's own becomes the C function's failure with EIO, said on stderr — never a silent 0."""
    failure = _failure(hook)
    symbol = hook.symbol
    handler: list[Callable] = []  # resolved at the first call: the layer may start inside a handler's import

    def entry(*args):
        if getattr(_guard, "busy", False) or _state.exiting:
            return original(*args)
        _guard.busy = True
        thread = get_ident()
        _in_flight.add(thread)
        try:
            if not handler:
                handler.append(_handler(hook.handler))
            return handler[0](original, *args)
        except BaseException as exc:
            try:
                sys.stderr.write(f"mirror-py: error in the C-level {symbol}() hook, the call fails: "
                                 f"{type(exc).__name__}: {exc}\n")
            except BaseException:
                pass
            ctypes.set_errno(errno.EIO)
            return failure
        finally:
            _in_flight.discard(thread)
            _guard.busy = False

    return entry


def _handler(spec: str) -> Callable:
    module, _, name = spec.rpartition(".")
    return getattr(__import__(f"{__package__}.{module}", fromlist=[name]), name)


def _keep_forever(obj: Any) -> None:
    """A callback freed while a C thread may still jump to it would crash that thread: never freed."""
    _state.keep.append(obj)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _build() -> None:
    st = _state
    if st.built:
        return
    lib = _libc()
    data = _libc_fns().mmap(None, _PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if not data or data == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mirror-py: no memory for the C-level gate")
    st.gate = data
    hooks: dict[str, int] = {}
    originals: dict[str, int] = {}
    surface = _present(lib)
    for hook in surface:
        proto = ctypes.CFUNCTYPE(_ctype(hook.restype), *(_ctype(t) for t in hook.argtypes), use_errno=True)
        address = ctypes.cast(getattr(lib, hook.symbol), ctypes.c_void_p).value
        original = proto(address)
        callback = proto(_entry(hook, original))
        _keep_forever(callback)
        _keep_forever(original)
        st.originals[hook.symbol] = original
        hooks[hook.symbol] = ctypes.cast(callback, ctypes.c_void_p).value
        originals[hook.symbol] = address
    gate_code = _aarch64_gate if st.machine == "aarch64" else _x86_64_gate
    closer_code = _aarch64_closer if st.machine == "aarch64" else _x86_64_closer
    code = bytearray(closer_code(data).ljust(_SLOT_SIZE, b"\0"))
    offsets = {}
    for hook in surface:
        offsets[hook.symbol] = len(code)
        code += gate_code(data, hooks[hook.symbol], originals[hook.symbol]).ljust(_SLOT_SIZE, b"\0")
    page = _exec_page(bytes(code))
    if page:
        st.gates = {symbol: page + off for symbol, off in offsets.items()}
        register = _fn(lib, "__register_atfork", ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p)
        register(None, None, page, None)  # the closer: a C-forked child never enters Python
    else:
        st.direct = True
        st.gates = hooks
    st.interpreter = _interpreter_paths()
    st.built = True


def _present(lib: Any) -> tuple[CHook, ...]:
    """The rows to route: those whose function this C library has (``__xstat`` is gone from new builds,
    ``stat`` absent from glibc before 2.33, musl has neither ``__open_2`` nor ``open64``: an object cannot
    import from libc what libc does not define), and the file rows only when files are the target's."""
    from . import clayer

    files = clayer.files_routed()
    return tuple(hook for hook in C_SURFACE
                 if hasattr(lib, hook.symbol) and (files or hook not in C_FILE_SURFACE))


def _interpreter_paths() -> tuple[str, ...]:
    """Path prefixes of the interpreter's own objects (lib-dynload, libpython's directory)."""
    paths = []
    for name in ("_ctypes", "_struct", "_socket"):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            paths.append(os.path.dirname(file) + os.sep)  # not realpath: the file surface's, remote maybe
    return tuple(dict.fromkeys(paths))


# ------------------------------------------------------------------------------------------------ slots
def _set_gate(on: bool) -> None:
    if _state.gate:
        ctypes.c_uint8.from_address(_state.gate).value = 1 if on else 0


def _mappings() -> list[tuple[int, int, int]]:
    out = []
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            span, perms = line.split(b" ", 2)[:2]
            start, end = span.split(b"-")
            prot = ((PROT_READ if perms[0:1] == b"r" else 0) | (PROT_WRITE if perms[1:2] == b"w" else 0)
                    | (PROT_EXEC if perms[2:3] == b"x" else 0))
            out.append((int(start, 16), int(end, 16), prot))
    return out


def _write(slot: int, value: int, maps: list[tuple[int, int, int]]) -> None:
    """Stores 8 aligned bytes (one store, so a thread calling through the slot sees old or new), making a
    RELRO page writable for the time of the store."""
    prot = next((p for start, end, p in maps if start <= slot < end), None)
    if prot is None:
        raise OSError(errno.EFAULT, f"mirror-py: GOT slot {slot:#x} is not mapped")
    cell = ctypes.c_uint64.from_address(slot)
    if prot & PROT_WRITE:
        cell.value = value
        return
    page = slot - slot % _PAGE
    mprotect = _libc_fns().mprotect
    if mprotect(page, _PAGE, prot | PROT_WRITE) != 0:
        raise OSError(ctypes.get_errno(), f"mirror-py: cannot make GOT slot {slot:#x} writable")
    try:
        cell.value = value
    finally:
        mprotect(page, _PAGE, prot)


def _skipped(name: str) -> bool:
    base = os.path.basename(name)
    return any(base.startswith(prefix) for prefix in NEVER)


def _interpreter_object(obj: elf.LoadedObject, first: bool) -> bool:
    if first or not obj.name:
        return True  # the executable
    if "libpython" in os.path.basename(obj.name):
        return True
    return obj.name.startswith(_state.interpreter) or obj.name == sys.executable


def scan() -> int:
    """Hooks the slots of every object loaded since the last scan; the number of slots written."""
    st = _state
    with _lock:
        found = elf.loaded(st.dynamics)
        if (found.adds, found.subs) == st.counts:
            return 0
        st.counts = (found.adds, found.subs)
        live = {(o.base, o.name) for o in found.objects}
        gone = st.scanned - live
        if gone:  # unloaded (dlclose): their slots are no longer ours to restore
            st.patched = [p for p in st.patched if p[4] not in gone]
            st.scanned &= live
            for key in gone:
                st.dynamics.pop(key, None)
        todo: list[tuple[elf.LoadedObject, frozenset[str]]] = []
        everything = frozenset(h.symbol for h in C_SURFACE if h.symbol in st.gates)
        interpreter_only = frozenset(h.symbol for h in C_SURFACE if h.interpreter_too and h.symbol in st.gates)
        for i, obj in enumerate(found.objects):
            key = (obj.base, obj.name)
            if key in st.scanned:
                continue
            st.scanned.add(key)
            st.dynamics[key] = obj.dynamic
            if _skipped(obj.name):
                continue
            todo.append((obj, interpreter_only if _interpreter_object(obj, i == 0) else everything))
        slots = []
        for obj, symbols in todo:
            try:
                slots.extend((obj, s) for s in elf.slots(obj, symbols, st.machine))
            except (OSError, ValueError, struct.error) as exc:  # an object whose tables cannot be read: left alone
                _say(f"{obj.name or 'the executable'} is not interposed: {exc}")
        if not slots:
            return 0
        maps = _mappings()
        written = 0
        for obj, slot in slots:
            new = st.gates[slot.symbol]
            old = ctypes.c_uint64.from_address(slot.address).value
            if old == new:
                continue
            _write(slot.address, new, maps)
            st.patched.append((slot.address, old, new, obj.name, (obj.base, obj.name)))
            written += 1
        return written



def _say(text: str) -> None:
    sys.stderr.write(f"mirror-py: {text}\n")


def install() -> None:
    """Routes the C surface of every loaded object (and of those loaded later); idempotent."""
    with _lock:
        if _state.active:
            return
        _build()
        _state.active = True
        _set_gate(True)
        if _state.direct and not _state.warned:
            _state.warned = True
            _say("executable memory is refused here, so C code forked from C (not os.fork) in this process "
                 "would call the shim; C-level hooks are removed at exit")
        scan()


def uninstall() -> None:
    """Puts every slot back as it was (newest first) and closes the gate; the gates and callbacks stay, since a
    C thread may be inside one. Idempotent."""
    st = _state
    with _lock:
        if not st.active:
            return
        st.active = False
        _set_gate(False)
        maps = _mappings() if st.patched else []
        first: BaseException | None = None
        while st.patched:
            slot, old, new, _, _ = st.patched.pop()
            try:
                if ctypes.c_uint64.from_address(slot).value == new:
                    _write(slot, old, maps)
            except OSError as exc:
                first = first or exc
        st.scanned.clear()
        st.dynamics.clear()
        st.counts = (-1, -1)
        if first is not None:
            raise first


def at_exit() -> None:
    """The off switch: after this, C threads still running reach libc without entering Python.

    A C thread that passed its gate just before is inside a callback, or waiting there for the GIL. Once the
    interpreter starts finalizing, such a thread is ended where it stands (Python ends threads that ask for
    the GIL then), in the middle of the library's own work: c-ares then frees its lists twice. So the exit
    waits, GIL released, until every callback has returned (they pass straight to libc now), up to
    EXIT_DRAIN seconds."""
    _state.exiting = True
    if _state.direct:
        uninstall()
    else:
        _set_gate(False)
    import time

    deadline = time.monotonic() + EXIT_DRAIN
    time.sleep(0.002)  # threads waiting for the GIL at a gate take it now, and enter the count
    while _in_flight and time.monotonic() < deadline:
        time.sleep(0.002)


def after_fork_in_child() -> None:
    """An ``os.fork()`` child is a Python process: it stays interposed (a C fork's child does not)."""
    _in_flight.clear()  # the parent's other threads do not exist here
    if _state.active:
        _set_gate(True)


def is_active() -> bool:
    return _state.active


def patched_slots() -> list[tuple[int, str]]:
    """(slot address, object name) of every slot routed now, for tests and diagnostics."""
    return [(p[0], p[3]) for p in _state.patched]


def after_dlopen(original: Callable, filename: Any, flags: int) -> Any:
    """``dlopen`` from any object: load, then scan what the load added before anyone calls into it."""
    handle = original(filename, flags)
    if handle:
        saved = ctypes.get_errno()
        try:
            scan()
        except Exception as exc:
            _say(f"a library loaded with dlopen is not interposed: {exc}")
        ctypes.set_errno(saved)
    return handle
