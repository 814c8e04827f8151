"""libcurl driven through ctypes: C code that resolves names and connects by itself (``getaddrinfo`` on a
resolver thread of its own, then ``connect``, both through its GOT), for tests of the C-level layer where no
wheel of a C extension is at hand — the aarch64 userland run under qemu-user (tests/arm64.py), which has
Debian's ``libcurl4`` and nothing from PyPI. Loaded with ``ctypes.CDLL``, the way an app loads a library that
is not a module; only the standard library is used, so any interpreter can import this file.
"""

from __future__ import annotations

import ctypes
from typing import Any

CURLOPT_TIMEOUT = 13
CURLOPT_FILETIME = 69
CURLOPT_NOSIGNAL = 99
CURLOPT_URL = 10002
CURLOPT_ERRORBUFFER = 10010
CURLOPT_WRITEFUNCTION = 20011
CURLINFO_RESPONSE_CODE = 0x200002
CURLINFO_OS_ERRNO = 0x200019  # the errno of a failed connect
CURLINFO_FILETIME = 0x20000E  # a file:// URL's st_mtime, from fstat
CURL_GLOBAL_DEFAULT = 3
_WRITE = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p)


def load(name: str = "libcurl.so.4") -> Any:
    lib = ctypes.CDLL(name)
    lib.curl_easy_init.restype = ctypes.c_void_p
    lib.curl_easy_perform.argtypes = (ctypes.c_void_p,)
    lib.curl_easy_cleanup.argtypes = (ctypes.c_void_p,)
    lib.curl_easy_strerror.restype = ctypes.c_char_p
    lib.curl_easy_strerror.argtypes = (ctypes.c_int,)
    lib.curl_global_init(ctypes.c_long(CURL_GLOBAL_DEFAULT))
    return lib


def fetch(lib: Any, url: str, timeout: int = 20) -> dict[str, Any]:
    """One GET: curl's result code, the HTTP status, the body, curl's own error text (empty on success), the
    errno its failed connect saw, and the modification time it read (a ``file://`` URL's ``fstat``; -1 when
    unknown)."""
    body = bytearray()

    def write(data: int, size: int, count: int, _user: int) -> int:
        body.extend(ctypes.string_at(data, size * count))
        return size * count

    callback = _WRITE(write)
    error = ctypes.create_string_buffer(256)
    handle = ctypes.c_void_p(lib.curl_easy_init())
    # curl_easy_setopt is variadic: each argument is passed with its exact C type.
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_URL), ctypes.c_char_p(url.encode()))
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_WRITEFUNCTION), callback)
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_ERRORBUFFER), error)
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_TIMEOUT), ctypes.c_long(timeout))
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_NOSIGNAL), ctypes.c_long(1))
    lib.curl_easy_setopt(handle, ctypes.c_int(CURLOPT_FILETIME), ctypes.c_long(1))
    code = lib.curl_easy_perform(handle)
    status = ctypes.c_long(0)
    os_errno, filetime = ctypes.c_long(0), ctypes.c_long(-1)
    lib.curl_easy_getinfo(handle, ctypes.c_int(CURLINFO_RESPONSE_CODE), ctypes.byref(status))
    lib.curl_easy_getinfo(handle, ctypes.c_int(CURLINFO_OS_ERRNO), ctypes.byref(os_errno))
    lib.curl_easy_getinfo(handle, ctypes.c_int(CURLINFO_FILETIME), ctypes.byref(filetime))
    lib.curl_easy_cleanup(handle)
    message = error.value.decode(errors="replace") or (lib.curl_easy_strerror(code) or b"").decode()
    return {"code": code, "status": status.value, "body": body.decode(errors="replace"),
            "error": message if code else "", "errno": os_errno.value, "filetime": filetime.value}
