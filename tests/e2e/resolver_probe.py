"""Runs a list of name service calls and prints their outcomes as JSON, with libc or with the agent's stub
resolver, so a test can compare the two answer for answer.

    python resolver_probe.py libc CALLS_JSON        # inside the pod: glibc with the pod's own files
    python resolver_probe.py stub PID CALLS_JSON    # in the pod's network and UTS namespaces only, reading the
                                                    # pod's resolver files through /proc/PID/root
"""

from __future__ import annotations

import json
import socket
import sys


def _libc(fn: str, args: list):
    if fn == "getaddrinfo":
        return [[int(f), int(t), p, c, list(sa)] for f, t, p, c, sa in socket.getaddrinfo(*args)]
    if fn == "getnameinfo":
        return list(socket.getnameinfo(tuple(args[0]), args[1]))
    out = getattr(socket, fn)(*args)
    return list(out) if isinstance(out, tuple) else out


def _stub(pid: int):
    from mirror_py_agent import files, resolver

    read = files.Root(f"/proc/{pid}/root").read_small

    def call(fn: str, args: list):
        if fn == "getaddrinfo":
            host, port, *rest = args
            return resolver.getaddrinfo(read, host, port, *rest)
        if fn == "getnameinfo":
            return resolver.getnameinfo(read, list(args[0]), args[1])
        return getattr(resolver, fn)(read, *args)

    return call


def main() -> None:
    mode = sys.argv[1]
    call = _libc if mode == "libc" else _stub(int(sys.argv[2]))
    out = []
    for fn, args in json.loads(sys.argv[-1]):
        try:
            out.append(["ok", call(fn, args)])
        except (socket.gaierror, socket.herror) as exc:
            out.append(["err", type(exc).__name__, exc.errno, exc.strerror])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
