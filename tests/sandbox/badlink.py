"""A slow, lossy network link between the host and a fresh network namespace (the "laptop"), for tests that
must show mirror-py keeps working over a bad network.

``tc qdisc ... netem delay 50ms loss 1%`` is the usual tool, but it needs the kernel's sch_netem, which many CI
and microVM kernels lack (built without it, and without module support to add it). So the link is made in
userspace from two TUN devices, one in the host and one in the namespace, with a thread between them that holds
each IP packet for ``delay`` seconds and drops it with probability ``loss``, independently in each direction:
what netem does per packet, on any kernel with TUN. TCP above it sees real delay, real losses and real
retransmissions.

The namespace has only that link (its default route) and ``lo``; a process started in it reaches the host's
addresses, e.g. a sandbox cluster's API server on the bridge address, only across the bad link::

    with BadLink(delay=0.05, loss=0.01) as link:
        subprocess.run(link.argv([sys.executable, "-m", "mirror_py", ...]))

Names start with the sandbox's ``mpt-`` prefix and hold an owner lock, so ``cleanup_leftovers`` removes the
namespace of a SIGKILLed run; the TUN devices disappear with the process that holds them.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import secrets
import select
import struct
import subprocess
import threading
import time
from collections.abc import Sequence

from . import netpod

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 1500


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class BadLink:
    """A namespace whose only way out is a link with ``delay`` seconds each way and ``loss`` per packet."""

    def __init__(self, delay: float = 0.05, loss: float = 0.01, seed: int | None = None) -> None:
        self.delay = delay
        self.loss = loss
        self.id = secrets.token_hex(4)
        self.netns = f"{netpod.NETNS_PREFIX}{self.id}-laptop"
        self.host_dev = f"mpw{self.id}h"
        self.ns_dev = f"mpw{self.id}n"
        # An address from the benchmarking range (RFC 2544), never a pod's or the host's.
        self.address = f"198.18.{int(self.id[:2], 16)}.{int(self.id[2:4], 16) % 250 + 2}"
        self.sent = {"out": 0, "in": 0}
        self.dropped = {"out": 0, "in": 0}
        self._random = random.Random(seed)
        self._fds: list[int] = []
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> BadLink:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        with netpod._global_lock():
            self._lock_fd = netpod._take_owner_lock(self.netns)
        netpod._ip("netns", "add", self.netns)
        host_fd = _open_tun(self.host_dev)
        self._fds.append(host_fd)
        ns_fd = _open_tun(self.ns_dev)
        self._fds.append(ns_fd)
        netpod._ip("link", "set", self.ns_dev, "netns", self.netns)
        netpod._ip("-n", self.netns, "-batch", "-", input="\n".join([
            "link set lo up",
            f"addr add {self.address}/32 dev {self.ns_dev}",
            f"link set {self.ns_dev} mtu {MTU} up",
            f"route add default dev {self.ns_dev}",
        ]) + "\n")
        netpod._ip("link", "set", self.host_dev, "mtu", str(MTU), "up")
        netpod._ip("route", "add", f"{self.address}/32", "dev", self.host_dev)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._relay, args=(host_fd, ns_fd), name="badlink", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fds, self._wake_r, self._wake_w = [], -1, -1
        if os.path.exists(f"/run/netns/{self.netns}"):
            ident = netpod._ns_inode(f"/run/netns/{self.netns}")
            if ident is not None:
                netpod._kill_netns_processes(ident)
            netpod._ip("netns", "del", self.netns, check=False)
        netpod._release_owner_lock(self.netns, self._lock_fd)
        self._lock_fd = None

    # -- use -----------------------------------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (files and the rest of the host stay as they are)."""
        return [netpod._IP, "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), **kwargs)  # type: ignore[call-overload]

    # -- the wire ------------------------------------------------------------------------------------

    def _relay(self, host_fd: int, ns_fd: int) -> None:
        """Reads packets from either end and writes each to the other end ``delay`` later, unless lost.
        A constant delay keeps each direction in order, so a deque per direction is the whole schedule."""
        queues: dict[int, collections.deque[tuple[float, bytes]]] = {host_fd: collections.deque(),
                                                                     ns_fd: collections.deque()}
        other = {host_fd: ns_fd, ns_fd: host_fd}
        direction = {ns_fd: "out", host_fd: "in"}  # read from the namespace's device: leaving the laptop
        while not self._stopping:
            now = time.monotonic()
            due = [q[0][0] for q in queues.values() if q]
            timeout = max(0.0, min(due) - now) if due else None
            readable, _, _ = select.select([host_fd, ns_fd, self._wake_r], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                if fd == self._wake_r:
                    return
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    continue
                way = direction[fd]
                if self._random.random() < self.loss:
                    self.dropped[way] += 1
                    continue
                self.sent[way] += 1
                queues[other[fd]].append((now + self.delay, packet))
            for fd, queue in queues.items():
                while queue and queue[0][0] <= now:
                    _due, packet = queue.popleft()
                    try:
                        os.write(fd, packet)
                    except OSError:
                        pass  # the kernel refused it (e.g. the device went down): like a lost packet
