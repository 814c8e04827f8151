"""One app run that touches each core surface of mirror-py, for running under every supported Python.

``python core_probe.py LISTEN_PORT`` resolves a name only the pod knows, fetches HTTP from the pod's loopback
server by that name, sends a UDP datagram to the pod's loopback echo server, reads a variable only the pod's
environment has and files only the pod's file system has (with open(), pathlib and glob), asks for the
hostname, then listens on LISTEN_PORT and prints ``READY``. The test then sends a request to the pod's port that
LISTEN_PORT is mapped to; the app prints everything as one JSON line once that connection (a mirrored copy)
reached it.

Standard library only, and nothing newer than the oldest client Python mirror-py supports.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import socket
import sys
import urllib.request

NAME = "api.pod.internal"  # in the pod's /etc/hosts only
HTTP_LOOPBACK_PORT = 8081
UDP_LOOPBACK_ECHO_PORT = 9998


def outgoing() -> dict:
    out: dict = {"python": "{}.{}".format(*sys.version_info[:2])}
    infos = socket.getaddrinfo(NAME, HTTP_LOOPBACK_PORT, type=socket.SOCK_STREAM)
    out["dns"] = sorted({info[4][0] for info in infos})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{NAME}:{HTTP_LOOPBACK_PORT}/core", timeout=20) as r:
        out["http"] = json.loads(r.read())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(20)
        u.sendto(b"ping", ("127.0.0.1", UDP_LOOPBACK_ECHO_PORT))
        data, peer = u.recvfrom(1024)
    out["udp"] = {"data": data.decode(), "peer": list(peer[:2])}
    out["env"] = os.environ.get("POD_ONLY")
    with open("/etc/nsswitch.conf") as f:
        out["file"] = f.read()
    # pathlib and glob hold references of their own to the file functions on some versions (3.10's pathlib
    # accessor, 3.13's glob): the same reads through them.
    out["pathlib"] = pathlib.Path("/etc/nsswitch.conf").read_text()
    out["glob"] = sorted(str(p) for p in pathlib.Path("/etc/config").glob("*.yaml")) + glob.glob("/etc/config/*")
    out["hostname"] = socket.gethostname()
    return out


def incoming(port: int) -> dict:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen()
        print("READY", flush=True)
        srv.settimeout(60)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(20)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            return {"request": data.split(b"\r\n", 1)[0].decode(), "sockname": list(conn.getsockname()[:2])}


def main() -> int:
    result = outgoing()
    result["incoming"] = incoming(int(sys.argv[1]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
