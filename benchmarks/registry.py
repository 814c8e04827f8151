"""What the shim's socket registry costs per call, in the app's interpreter (no session, no pod).

The registry is keyed by the kernel socket (an ``fstat`` per lookup) so that every descriptor of a socket finds
its entry. This measures the calls that look it up, with the socket patches installed and one relayed socket
registered (so no "registry empty" shortcut applies), against the same calls unpatched:

    .venv/bin/python benchmarks/registry.py [--number N]

Prints one markdown table: nanoseconds per call, the best of five timeit repeats.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mirror_py.shim import net, patches, settings


def _pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def _cases() -> dict:
    remote, _keep = _pair()
    local, _keep2 = _pair()
    info = net.Remote("tcp", ("10.244.1.2", 7000), ("10.244.1.3", 40000), remote.getpeername(),
                      remote.getsockname())
    register = getattr(net, "register", None)
    if register is not None:
        register(remote, info)
    else:  # a shim keyed by descriptor
        net.registry[remote.fileno()] = info
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    here = udp.getsockname()

    def udp_round() -> None:
        udp.sendto(b"x", here)
        udp.recvfrom(16)

    def dup_close() -> None:
        remote.dup().close()

    return {
        "getpeername, relayed socket": remote.getpeername,
        "getpeername, local socket": local.getpeername,
        "getsockname, relayed socket": remote.getsockname,
        "dup() + close(), relayed socket": dup_close,
        "sendto + recvfrom, local UDP": udp_round,
        "_keep": (_keep, _keep2),
    }


def _time(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=200000)
    args = parser.parse_args()
    settings.reset({"outgoing": {"enabled": False}})
    rows = [row for row in patches.SOCKET_SURFACE if row.factory.startswith("net.")]
    plain = {k: v for k, v in _cases().items() if not k.startswith("_")}
    before = {k: _time(fn, args.number) for k, fn in plain.items()}
    patches.install(tuple(rows))
    cases = _cases()
    after = {k: _time(fn, args.number) for k, fn in cases.items() if not k.startswith("_")}
    patches.uninstall()
    print("| call | unpatched ns | patched ns |")
    print("|---|---:|---:|")
    for name in before:
        print(f"| {name} | {before[name]:.0f} | {after[name]:.0f} |")


if __name__ == "__main__":
    main()
