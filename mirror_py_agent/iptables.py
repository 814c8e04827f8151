"""Stealing a port: nat REDIRECT rules in the target's network namespace, owned by one agent and never left
behind.

Each stealing agent has its own chain, ``MIRRORPY-<rank>-<tag>``, jumped to from ``PREROUTING`` (clients
outside the pod) and from ``OUTPUT -o lo`` (clients inside it), with one ``REDIRECT`` per stolen port to the
agent's listener. Several sessions can steal on one target at once (say, with different HTTP filters): each
agent forwards what it does not take to the original destination, and that connection must skip the chains of
this agent and of every agent before it but still meet the ones after it. Ranks give that order: chains are
appended in rank order, an agent of rank k marks its forwarded connections with bits 1..k of
:data:`MARK_BITS`, and the chain of rank j returns for packets that carry bit j.

Nothing may outlive the agent:

- a normal exit removes the chain;
- a dead-man helper — a separate small process started with the chain, holding a pipe from the agent —
  removes it when that pipe reaches EOF, which the kernel guarantees however the agent dies (SIGKILL too);
- every agent that can, removes stale chains on start: a chain is live while an abstract unix socket named
  after its tag is bound (the agent and its helper hold it; abstract names belong to the network namespace,
  like the rules), so a chain whose name is free belongs to nobody.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

PREFIX = "MIRRORPY-"
MARK_SHIFT = 20
MAX_RANK = 8
MARK_BITS = ((1 << MAX_RANK) - 1) << MARK_SHIFT  # bits 20..27: clear of kube-proxy's and service meshes' marks
_CHAIN = re.compile(r"^MIRRORPY-([0-9]+)-([0-9a-f]{8})$")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
LOCK_NAME = b"\0mirror-py-iptables-lock"

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


class IptablesError(OSError):
    pass


def capabilities() -> int:
    """This process's effective capability set, as a bit mask (0 if it cannot be read)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def has_capability(cap: int) -> bool:
    return bool(capabilities() >> cap & 1)


def binaries() -> list[str]:
    """The iptables commands to drive: iptables, plus ip6tables when it can use the nat table here."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
    found = []
    for name in ("iptables", "ip6tables"):
        binary = shutil.which(name, path=path)
        if binary is None:
            continue
        if name == "ip6tables":
            probe = subprocess.run([binary, "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True, text=True)
            if probe.returncode != 0:
                continue
        found.append(binary)
    return found


def _run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise IptablesError(f"{' '.join(argv[:4])} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


# The code that removes one chain, shared by the agent and its dead-man helper (which runs it as a program of
# its own, since the agent's modules exist only in the agent's memory).
_REMOVE_CHAIN = r'''
def remove_chain(binary, chain):
    import shlex, subprocess
    def run(args):
        return subprocess.run([binary, "-w", "-t", "nat", *args], capture_output=True, text=True, timeout=60)
    listing = run(["-S"]).stdout
    for line in listing.splitlines():
        words = shlex.split(line)
        if len(words) > 2 and words[0] == "-A" and words[1] != chain and words[-2:] == ["-j", chain]:
            run(["-D", *words[1:]])
    run(["-F", chain])
    run(["-X", chain])
'''
_ns: dict = {}
exec(_REMOVE_CHAIN, _ns)
remove_chain = _ns["remove_chain"]

HELPER = _REMOVE_CHAIN + r'''
import os, sys
chain, binaries = sys.argv[1], sys.argv[2:]
got = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    got += chunk
if b"done" not in got:
    for binary in binaries:
        try:
            remove_chain(binary, chain)
        except Exception:
            pass
'''


def _marker_name(tag: str) -> bytes:
    return b"\0mirror-py-agent-" + tag.encode()


def _try_bind(name: bytes) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(name)
    except OSError:
        sock.close()
        return None
    return sock


@contextmanager
def netns_lock(timeout: float = 15.0) -> Iterator[None]:
    """Serialises chain creation among the agents of one network namespace (ranks are read, then used)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = _try_bind(LOCK_NAME)
        if sock is not None:
            break
        if time.monotonic() > deadline:
            raise IptablesError("another mirror-py agent held the iptables lock of this network namespace for "
                                f"{timeout:g} s")
        time.sleep(0.01)
    try:
        yield
    finally:
        sock.close()


def _chains(binary: str) -> list[str]:
    return [line.split()[1] for line in _run([binary, "-w", "-t", "nat", "-S"]).splitlines()
            if line.startswith("-N " + PREFIX)]


def clean_stale(bins: list[str]) -> list[str]:
    """Removes the chains of agents that are gone; returns their names."""
    removed = []
    for binary in bins:
        for chain in _chains(binary):
            m = _CHAIN.match(chain)
            if m is None:
                continue
            probe = _try_bind(_marker_name(m.group(2)))
            if probe is None:
                continue  # its agent (or its helper) is alive
            try:
                remove_chain(binary, chain)
            finally:
                probe.close()
            removed.append(chain)
    return removed


class Rules:
    """This agent's chain: created with the first stolen port, removed with the last or at exit."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.marker = _try_bind(_marker_name(self.tag))
        if self.marker is None:
            raise IptablesError("could not claim this agent's marker name")
        self.bins = binaries()
        if not self.bins:
            raise IptablesError("no iptables command in the agent's environment; stealing needs iptables "
                                "(the agent image in k8s/Dockerfile.agent has it)")
        self.rank = 0
        self.chain = ""
        self.helper: subprocess.Popen | None = None
        self.ports: dict[int, tuple[int, int | None]] = {}
        self.stale_removed: list[str] = []

    @property
    def forward_mark(self) -> int:
        """The mark of this agent's own connections to the original destinations."""
        return ((1 << self.rank) - 1) << MARK_SHIFT

    def _create(self) -> None:
        with netns_lock():
            self.stale_removed = clean_stale(self.bins)
            ranks = [int(m.group(1)) for b in self.bins for c in _chains(b) for m in [_CHAIN.match(c)] if m]
            rank = max(ranks, default=0) + 1
            if rank > MAX_RANK:
                raise IptablesError(f"{MAX_RANK} mirror-py sessions already steal traffic on this target")
            self.rank = rank
            self.chain = f"{PREFIX}{rank}-{self.tag}"
            self.helper = subprocess.Popen(
                [sys.executable, "-I", "-c", HELPER, self.chain, *self.bins], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(self.marker.fileno(),),
                start_new_session=True)
            bit = 1 << (MARK_SHIFT + rank - 1)
            for binary in self.bins:
                _run(_restore(binary), stdin=(
                    "*nat\n"
                    f":{self.chain} - [0:0]\n"
                    f"-A {self.chain} -m mark --mark {bit:#x}/{bit:#x} -j RETURN\n"
                    f"-A PREROUTING -p tcp -j {self.chain}\n"
                    f"-A OUTPUT -o lo -p tcp -j {self.chain}\n"
                    "COMMIT\n"))

    def add(self, port: int, to_v4: int, to_v6: int | None) -> None:
        """REDIRECT ``port`` to the agent's listeners (blocking: run it off the event loop)."""
        if not self.chain:
            self._create()
        for binary in self.bins:
            to = to_v6 if _is_v6(binary) else to_v4
            if to is None:
                continue
            _run([binary, "-w", "-t", "nat", "-A", self.chain, "-p", "tcp", "--dport", str(port), "-j",
                  "REDIRECT", "--to-ports", str(to)])
        self.ports[port] = (to_v4, to_v6)

    def remove(self, port: int) -> None:
        to = self.ports.pop(port, None)
        if to is None or not self.chain:
            return
        for binary in self.bins:
            target = to[1] if _is_v6(binary) else to[0]
            if target is None:
                continue
            subprocess.run([binary, "-w", "-t", "nat", "-D", self.chain, "-p", "tcp", "--dport", str(port), "-j",
                            "REDIRECT", "--to-ports", str(target)], capture_output=True, timeout=60)

    def close(self) -> None:
        """Removes the chain and lets the helper go; safe to call twice."""
        if self.chain:
            for binary in self.bins:
                try:
                    remove_chain(binary, self.chain)
                except Exception:
                    pass
            self.chain = ""
        self.ports.clear()
        if self.helper is not None:
            try:
                self.helper.stdin.write(b"done\n")  # type: ignore[union-attr]
                self.helper.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.helper.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.helper = None
        if self.marker is not None:
            self.marker.close()
            self.marker = None


def _is_v6(binary: str) -> bool:
    return os.path.basename(binary).startswith("ip6")


def _restore(binary: str) -> list[str]:
    return [binary + "-restore", "-w", "-n"]
