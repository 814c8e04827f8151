"""The C-level surface, declared as data: which libc functions of loaded shared objects are routed, with what
C signature, to which handler.

This is the C twin of :mod:`mirror_py.shim.patches`: the handlers in :mod:`mirror_py.shim.cnet` turn each call
into the same Python-level operation the patched ``socket`` module performs, so a connect from libpq and one
from ``socket.socket.connect`` are decided by the same rules and go through the same session and relays.
Types are names of ctypes types, resolved when the layer is activated: the interpreter's start-up never
imports ctypes for this.
"""

from __future__ import annotations

from typing import NamedTuple


class CHook(NamedTuple):
    symbol: str
    restype: str | None  # a ctypes type name ("c_int", "c_void_p"), None for void
    argtypes: tuple[str, ...]
    handler: str  # "module.function" in mirror_py.shim, called with the original function first
    interpreter_too: bool = False  # also hooked in the interpreter's own objects (dlopen only)


C_SURFACE: tuple[CHook, ...] = (
    CHook("connect", "c_int", ("c_int", "c_void_p", "c_uint32"), "cnet.connect"),
    CHook("bind", "c_int", ("c_int", "c_void_p", "c_uint32"), "cnet.bind"),
    CHook("listen", "c_int", ("c_int", "c_int"), "cnet.listen"),
    CHook("accept", "c_int", ("c_int", "c_void_p", "c_void_p"), "cnet.accept"),
    CHook("accept4", "c_int", ("c_int", "c_void_p", "c_void_p", "c_int"), "cnet.accept4"),
    CHook("getpeername", "c_int", ("c_int", "c_void_p", "c_void_p"), "cnet.getpeername"),
    CHook("getsockname", "c_int", ("c_int", "c_void_p", "c_void_p"), "cnet.getsockname"),
    CHook("close", "c_int", ("c_int",), "cnet.close"),
    CHook("recvfrom", "c_ssize_t", ("c_int", "c_void_p", "c_size_t", "c_int", "c_void_p", "c_void_p"),
          "cnet.recvfrom"),
    CHook("getaddrinfo", "c_int", ("c_void_p", "c_void_p", "c_void_p", "c_void_p"), "cdns.getaddrinfo"),
    CHook("freeaddrinfo", None, ("c_void_p",), "cdns.freeaddrinfo"),
    CHook("gethostbyname", "c_void_p", ("c_char_p",), "cdns.gethostbyname"),
    CHook("gethostbyname_r", "c_int",
          ("c_char_p", "c_void_p", "c_void_p", "c_size_t", "c_void_p", "c_void_p"), "cdns.gethostbyname_r"),
    # Objects loaded later: imports, ctypes.CDLL, and plugins that C code loads itself (OpenSSL engines, SASL).
    CHook("dlopen", "c_void_p", ("c_void_p", "c_int"), "got.after_dlopen", interpreter_too=True),
)

#: Files opened by name from C (libsqlite3, OpenSSL's CA loading, libcurl): the file rules decide, as for
#: Python's open and os.stat (cfiles.py). Routed only when files are the target's (``fs.mode`` not local):
#: nearly every object imports these names, and finding their slots is most of the scan's cost.
#: open/openat are variadic: on x86_64 and aarch64 the mode travels where a named third (fourth) integer
#: would. The 64 names are the same functions on these machines; the __xstat family is what objects built
#: against glibc before 2.33 call; __open_2 is the fortified open. close (above) writes a remote file back;
#: fclose closes inside libc, so it is routed too.
C_FILE_SURFACE: tuple[CHook, ...] = (
    CHook("open", "c_int", ("c_char_p", "c_int", "c_uint"), "cfiles.open"),
    CHook("open64", "c_int", ("c_char_p", "c_int", "c_uint"), "cfiles.open"),
    CHook("__open_2", "c_int", ("c_char_p", "c_int"), "cfiles.open_2"),
    CHook("__open64_2", "c_int", ("c_char_p", "c_int"), "cfiles.open_2"),
    CHook("openat", "c_int", ("c_int", "c_char_p", "c_int", "c_uint"), "cfiles.openat"),
    CHook("openat64", "c_int", ("c_int", "c_char_p", "c_int", "c_uint"), "cfiles.openat"),
    CHook("__openat_2", "c_int", ("c_int", "c_char_p", "c_int"), "cfiles.openat_2"),
    CHook("__openat64_2", "c_int", ("c_int", "c_char_p", "c_int"), "cfiles.openat_2"),
    CHook("fopen", "c_void_p", ("c_char_p", "c_char_p"), "cfiles.fopen"),
    CHook("fopen64", "c_void_p", ("c_char_p", "c_char_p"), "cfiles.fopen"),
    CHook("fclose", "c_int", ("c_void_p",), "cfiles.fclose"),
    CHook("stat", "c_int", ("c_char_p", "c_void_p"), "cfiles.stat"),
    CHook("stat64", "c_int", ("c_char_p", "c_void_p"), "cfiles.stat"),
    CHook("lstat", "c_int", ("c_char_p", "c_void_p"), "cfiles.lstat"),
    CHook("lstat64", "c_int", ("c_char_p", "c_void_p"), "cfiles.lstat"),
    CHook("fstatat", "c_int", ("c_int", "c_char_p", "c_void_p", "c_int"), "cfiles.fstatat"),
    CHook("fstatat64", "c_int", ("c_int", "c_char_p", "c_void_p", "c_int"), "cfiles.fstatat"),
    CHook("__xstat", "c_int", ("c_int", "c_char_p", "c_void_p"), "cfiles.xstat"),
    CHook("__xstat64", "c_int", ("c_int", "c_char_p", "c_void_p"), "cfiles.xstat"),
    CHook("__lxstat", "c_int", ("c_int", "c_char_p", "c_void_p"), "cfiles.lxstat"),
    CHook("__lxstat64", "c_int", ("c_int", "c_char_p", "c_void_p"), "cfiles.lxstat"),
    CHook("__fxstatat", "c_int", ("c_int", "c_int", "c_char_p", "c_void_p", "c_int"), "cfiles.fxstatat"),
    CHook("__fxstatat64", "c_int", ("c_int", "c_int", "c_char_p", "c_void_p", "c_int"), "cfiles.fxstatat"),
    CHook("fstat", "c_int", ("c_int", "c_void_p"), "cfiles.fstat"),
    CHook("fstat64", "c_int", ("c_int", "c_void_p"), "cfiles.fstat"),
    CHook("__fxstat", "c_int", ("c_int", "c_int", "c_void_p"), "cfiles.fxstat"),
    CHook("__fxstat64", "c_int", ("c_int", "c_int", "c_void_p"), "cfiles.fxstat"),
    CHook("access", "c_int", ("c_char_p", "c_int"), "cfiles.access"),
    CHook("faccessat", "c_int", ("c_int", "c_char_p", "c_int", "c_int"), "cfiles.faccessat"),
    CHook("readlink", "c_ssize_t", ("c_char_p", "c_void_p", "c_size_t"), "cfiles.readlink"),
    CHook("unlink", "c_int", ("c_char_p",), "cfiles.unlink"),
)
C_SURFACE += C_FILE_SURFACE

#: Standard-library calls that hand a file name to a library that opens it from C (libsqlite3; OpenSSL loading a
#: ``cafile``): (module, class or None, function). When files are the target's (``fs.mode`` not local) and such a
#: call names a file the target serves, the layer is activated first, as a foreign extension module's import
#: does. Not their import: every asyncio or requests app imports ssl, and would pay a scan it does not need.
FILE_ENTRY_POINTS: tuple[tuple[str, str | None, str], ...] = (
    ("ssl", "SSLContext", "load_verify_locations"),
    ("ssl", "SSLContext", "load_cert_chain"),
    ("ssl", "SSLContext", "load_dh_params"),
    ("sqlite3", None, "connect"),
    ("sqlite3.dbapi2", None, "connect"),
)

#: Relocation types whose slot holds a function's address, per machine: an ordinary PLT call, a GOT entry of a
#: ``-fno-plt`` build or of a function whose address is taken, and a plain 64-bit pointer (tables of functions;
#: taken only with addend 0).
ARCH_RELOCATIONS: dict[str, dict[str, int]] = {
    "x86_64": {"jump_slot": 7, "glob_dat": 6, "abs64": 1},
    "aarch64": {"jump_slot": 1026, "glob_dat": 1025, "abs64": 257},
}

#: Objects never routed: the interpreter itself and the loader and libc (whose internal calls go through no GOT,
#: as they should). Matched against the object's file name; the interpreter's executable, libpython and its
#: lib-dynload directory are recognised by path (got.py).
NEVER: tuple[str, ...] = ("linux-vdso", "linux-gate", "ld-linux", "ld-musl", "libc.so", "libc.musl",
                          "libpthread.so", "libdl.so", "libffi.so")  # libffi: what the callbacks run on

#: Why the layer is absent where it is: said once, when a C extension that networks is imported.
UNSUPPORTED = ("C extensions are interposed only on Linux x86_64 and aarch64 (their GOT is patched in "
               "place, which needs the ELF layout and relocation numbers of those machines)")
