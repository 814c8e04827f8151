"""Cluster DNS for the sandbox: a real dnsmasq answering ``*.cluster.local`` and nothing else.

mirror-py resolves names the way the pod does (its resolv.conf, search domains, ndots), so the tests need a
real DNS server with cluster semantics: service names answer, unknown names are NXDOMAIN (not a timeout and
not the host's upstream resolver, which would hide a leak of lookups to the laptop).  dnsmasq listens only on
the bridge gateway address, reads a hosts file this module rewrites, and is told to re-read it with SIGHUP;
``update`` waits until a new name actually answers so callers never race the reload.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 53


class DnsError(RuntimeError):
    """dnsmasq is missing or did not come up."""


def query(server: str, name: str, qtype: int = 1, port: int = DNS_PORT, timeout: float = 2.0) -> tuple[int, list[str]]:
    """One UDP DNS query: returns (rcode, A/AAAA addresses).  Enough to wait for a record and to test rcodes."""
    ident = secrets.randbelow(0xFFFF)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    packet = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        while True:
            data = sock.recv(4096)
            if struct.unpack(">H", data[:2])[0] == ident:
                break
    flags, qdcount, ancount = struct.unpack(">HHH", data[2:8])
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(data, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = _skip_name(data, offset)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[offset : offset + 10])
        offset += 10
        rdata = data[offset : offset + rdlen]
        offset += rdlen
        if rtype == 1:
            addresses.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            addresses.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return flags & 0xF, addresses


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


class ClusterDns:
    """One dnsmasq bound to ``listen`` (the bridge gateway) serving the records given to :meth:`update`."""

    def __init__(self, listen: str, workdir: Path, port: int = DNS_PORT) -> None:
        self.listen = listen
        self.port = port
        self.workdir = workdir
        self.hosts_file = workdir / "cluster-hosts"
        self.log_file = workdir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None
        self._records: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        binary = shutil.which("dnsmasq") or next(
            (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.path.exists(p)), None
        )
        if binary is None:
            raise DnsError("dnsmasq not found: install Debian's dnsmasq-base")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text("")
        argv = [
            binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",  # the host's /etc/dnsmasq.conf (if any) must not leak in
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--local=/#/",  # every name is local: unknown names get NXDOMAIN, nothing is forwarded
            f"--addn-hosts={self.hosts_file}",
            f"--listen-address={self.listen}",
            "--bind-interfaces",
            f"--port={self.port}",
            "--user=root",
            "--pid-file=",
            "--no-negcache",
            "--local-ttl=5",
            f"--log-facility={self.log_file}",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise DnsError(f"dnsmasq exited ({self.proc.returncode}): {err.strip()}")
            with contextlib.suppress(OSError):
                if query(self.listen, f"ready.{CLUSTER_DOMAIN}", port=self.port, timeout=0.2)[0] == 3:
                    return
            time.sleep(0.02)
        raise DnsError("dnsmasq did not answer within 10 s")

    @property
    def records(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self._records.items()}

    def update(self, records: Mapping[str, Sequence[str]], timeout: float = 5.0) -> None:
        """Replace all records (name → addresses) and return once dnsmasq serves the new set."""
        with self._lock:
            new = {name.lower().rstrip("."): sorted(set(addrs)) for name, addrs in records.items() if addrs}
            old, self._records = self._records, new
            if new == old:
                return
            lines = [f"{addr} {name}" for name, addrs in sorted(new.items()) for addr in addrs]
            tmp = self.hosts_file.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self.hosts_file)
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGHUP)
            # Wait for one changed name to answer its new way: that proves the reload happened.
            changed = [(n, a) for n, a in sorted(new.items()) if old.get(n) != a]
            removed = sorted(set(old) - set(new))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if changed:
                        name, addrs = changed[0]
                        if sorted(query(self.listen, name, port=self.port, timeout=0.2)[1]) == addrs:
                            return
                    elif query(self.listen, removed[0], port=self.port, timeout=0.2)[0] == 3:
                        return
                time.sleep(0.01)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
