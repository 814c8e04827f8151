"""An app whose connections and lookups go around socket.socket: gevent, eventlet, or the C type itself."""

import json
import sys

mode = sys.argv[1]
if mode == "gevent":
    from gevent import monkey

    monkey.patch_all()
elif mode == "eventlet":
    import eventlet

    eventlet.monkey_patch()

import socket  # noqa: E402

out = {}
if mode == "saved-reference":
    # A reference to the unpatched function, as a module that did `from socket import getaddrinfo` before the
    # shim was installed would hold it.
    from mirror_py.shim import patches

    original = next(s.own for s in patches._installed[id(patches.SOCKET_SURFACE)] if s.name == "getaddrinfo")
    try:
        original("api.pod.internal", 80)
    except OSError as exc:
        out["lookup"] = type(exc).__name__
elif mode == "raw":
    import _socket

    raw = _socket.socket()
    try:
        raw.connect(("127.0.0.1", 8081))
        out["connect"] = "laptop"
    except OSError as exc:
        out["connect"] = type(exc).__name__
    raw.close()
else:
    try:
        with socket.create_connection(("127.0.0.1", 8081), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            out["reply"] = s.recv(12).decode()
    except OSError as exc:
        out["connect"] = type(exc).__name__
print(json.dumps(out))
