"""Stealing a port: nat REDIRECT rules in the target's network namespace, owned by one agent and never left
behind.

Each stealing agent has one chain, ``MIRRORPY-<rank>-<tag>``, jumped to from ``PREROUTING`` (clients outside
the pod) and from ``OUTPUT -o lo`` (clients inside it), with one ``REDIRECT`` per stolen port to the agent's
listener. Several sessions can steal on one target at once (say, with different HTTP filters): each agent
forwards what it does not take to the original destination, and that connection must skip the chains of this
agent and of every agent before it but still meet the ones after it. Ranks give that order: the jumps to the
chains stand in rank order (a new chain is inserted before the first chain of a higher rank), an agent of rank k
marks its forwarded connections with bits 1..k of :data:`MARK_BITS`, and the chain of rank j returns for
packets that carry bit j. A new agent takes the lowest rank no live chain has, so ranks are reused as sessions
come and go; connections an older agent forwards skip a newer chain of a lower rank (they were routed before
it existed).

Nothing may outlive the agent (the target's clients would be refused):

- a normal exit removes the chain;
- a dead-man helper, FORKED from the agent before the chain exists (so it runs no program from the target's
  file system and its command line is the agent's, which the idle program of agent containers watches for),
  holds a pipe from the agent and removes the chain when that pipe reaches EOF, which the kernel guarantees
  however the agent dies; it exits only after that;
- whatever runs last removes what is left: every agent sweeps stale chains before it creates one and when its
  session starts, and the idle program of agent containers sweeps the network namespaces of the agents it
  watched once they are all gone (:mod:`sweep`: a chain is live while its tag's abstract socket name is bound).

The lock that orders chain creation is the chain ``MIRRORPY-LOCK``, created atomically (so only a process with
CAP_NET_ADMIN in the namespace can hold it) and naming its holder's tag, so a lock whose holder died is taken
over. Every wait is bounded and ends with one line saying what was waited for.

Standard library only, Python 3.9+. Everything is imported here, at the agent's start: the helper imports
nothing and executes nothing but the iptables commands.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from . import sweep
from .sweep import CHAIN, LOCK_CHAIN, PREFIX, IptablesError, binaries, remove_chain

MARK_SHIFT = 20
MAX_RANK = 8
MARK_BITS = ((1 << MAX_RANK) - 1) << MARK_SHIFT  # bits 20..27: clear of kube-proxy's and service meshes' marks
LOCK_TIMEOUT = 15.0  # seconds to wait for another agent's chain creation
HELPER_EXIT_WAIT = 10.0  # seconds close() waits for the helper it released

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


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


@contextmanager
def netns_lock(bins: list[str], timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Serialises chain creation among the agents of one network namespace (ranks are read, then used).

    The lock is a chain created with its holder's tag in one atomic iptables commit: creating it needs
    CAP_NET_ADMIN, which the target's own processes do not have where stealing is worth guarding, and a holder
    whose marker name is free is dead, so its lock is removed and taken."""
    tag = secrets.token_hex(4)
    marker = sweep.try_bind(sweep.marker_name(tag))
    if marker is None:
        raise IptablesError("could not claim a marker name for the iptables lock")
    binary = bins[0]
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                sweep.restore(binary, f"-N {LOCK_CHAIN}\n" + sweep.lock_rule(tag))
                break
            except IptablesError as exc:
                holder = sweep.lock_holder(sweep.rules(binary))
                if holder is not None and not (holder and sweep.is_live(holder)):
                    sweep.release_lock(binary, holder)  # its holder is gone
                    continue
                if time.monotonic() > deadline:
                    if holder is None:  # free, yet the commit fails: say why
                        raise
                    raise IptablesError(
                        f"mirror-py agent {holder} held the iptables lock of this network namespace (chain "
                        f"{LOCK_CHAIN} in the nat table) for {timeout:g} s") from exc
                time.sleep(0.02)
        try:
            yield
        finally:
            sweep.release_lock(binary, tag)
    finally:
        marker.close()


def clean_stale(bins: list[str]) -> list[str]:
    """Removes the chains of agents that are gone; returns their names."""
    return sweep.sweep(bins)


def _dead_man(pipe: int, keep: int, chain: str, bins: list[str]) -> None:
    """The forked helper's whole life: wait for the agent's pipe to close, and unless the agent said it removed
    the chain itself, remove it. Runs in a fresh session with only ``pipe`` and the marker ``keep`` open (a
    stolen listener left open here would take connections nobody accepts), ignoring the signals a terminal or
    a process group would send: only the end of the agent ends it."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    kept = sorted({0, 1, 2, pipe, keep})
    for low, high in zip(kept, kept[1:] + [os.sysconf("SC_OPEN_MAX")]):
        os.closerange(low + 1, high)
    got = b""
    while True:
        try:
            chunk = os.read(pipe, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        got += chunk
    if b"done" not in got:
        for binary in bins:
            try:
                remove_chain(binary, chain)
            except Exception:
                pass


class Rules:
    """This agent's chain: created with the first stolen port, removed with the last or at exit. Thread-safe:
    subscriptions arrive concurrently, and there is one chain and one helper per agent."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.marker: socket.socket | None = sweep.try_bind(sweep.marker_name(self.tag))
        if self.marker is None:
            raise IptablesError("could not claim this agent's marker name")
        self.bins = binaries()
        if not self.bins:
            self.marker.close()
            raise IptablesError("no iptables command in the agent's environment; stealing needs iptables "
                                "(the agent image in k8s/Dockerfile.agent has it)")
        self.rank = 0
        self.chain = ""
        self.helper: tuple[int, int] | None = None  # (pid, write end of its pipe)
        self.ports: dict[int, tuple[int, int | None]] = {}
        self.stale_removed: list[str] = []
        self._mutex = threading.Lock()

    @property
    def forward_mark(self) -> int:
        """The mark of this agent's own connections to the original destinations."""
        return ((1 << self.rank) - 1) << MARK_SHIFT

    def _start_helper(self, chain: str) -> None:
        assert self.marker is not None
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fork() in a multi-threaded process": the child runs no Python lock
            pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(write)
                _dead_man(read, self.marker.fileno(), chain, self.bins)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(read)
        self.helper = (pid, write)

    def _create(self) -> None:
        with netns_lock(self.bins):
            self.stale_removed = sweep.sweep(self.bins)
            listings = {binary: sweep.rules(binary) for binary in self.bins}
            taken = {int(m.group(1)) for listing in listings.values() for words in listing
                     if words[0] == "-N" and len(words) == 2 for m in [CHAIN.match(words[1])] if m}
            free = [rank for rank in range(1, MAX_RANK + 1) if rank not in taken]
            if not free:
                raise IptablesError(f"{MAX_RANK} mirror-py sessions already steal traffic on this target")
            rank = free[0]
            chain = f"{PREFIX}{rank}-{self.tag}"
            self._start_helper(chain)  # before the chain exists: it never exists without someone to remove it
            self.rank, self.chain = rank, chain
            bit = 1 << (MARK_SHIFT + rank - 1)
            try:
                for binary, listing in listings.items():
                    sweep.restore(binary, (
                        f":{chain} - [0:0]\n"
                        f"-A {chain} -m mark --mark {bit:#x}/{bit:#x} -j RETURN\n"
                        f"{_jump(listing, 'PREROUTING', rank)} -p tcp -j {chain}\n"
                        f"{_jump(listing, 'OUTPUT', rank)} -o lo -p tcp -j {chain}\n"))
            except BaseException:
                self._teardown()
                raise

    def add(self, port: int, to_v4: int, to_v6: int | None) -> None:
        """REDIRECT ``port`` to the agent's listeners (blocking: run it off the event loop)."""
        with self._mutex:
            if not self.chain:
                self._create()
            for binary in self.bins:
                to = to_v6 if _is_v6(binary) else to_v4
                if to is None:
                    continue
                sweep.run(binary, ["-A", self.chain, "-p", "tcp", "--dport", str(port), "-j", "REDIRECT",
                                   "--to-ports", str(to)])
            self.ports[port] = (to_v4, to_v6)

    def remove(self, port: int) -> None:
        with self._mutex:
            to = self.ports.pop(port, None)
            if to is None or not self.chain:
                return
            for binary in self.bins:
                target = to[1] if _is_v6(binary) else to[0]
                if target is None:
                    continue
                try:
                    sweep.run(binary, ["-D", self.chain, "-p", "tcp", "--dport", str(port), "-j", "REDIRECT",
                                       "--to-ports", str(target)])
                except IptablesError:
                    pass

    def _teardown(self) -> None:
        """Removes the chain, then releases the helper (killed in between, the helper removes it again)."""
        if self.chain:
            for binary in self.bins:
                try:
                    remove_chain(binary, self.chain)
                except Exception:
                    pass
            self.chain = ""
        self.ports.clear()
        if self.helper is not None:
            pid, write = self.helper
            self.helper = None
            try:
                os.write(write, b"done")
            except OSError:
                pass
            os.close(write)
            deadline = time.monotonic() + HELPER_EXIT_WAIT
            while True:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > deadline:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.005)

    def close(self) -> None:
        """Removes the chain and lets the helper go; safe to call twice."""
        with self._mutex:
            self._teardown()
            if self.marker is not None:
                self.marker.close()
                self.marker = None


def _jump(listing: list[list[str]], parent: str, rank: int) -> str:
    """Where the jump to a chain of ``rank`` goes in ``parent``: before the first chain of a higher rank, so
    the jumps stay in rank order, else at the end."""
    position = 0
    for words in listing:
        if words[:2] != ["-A", parent]:
            continue
        position += 1
        m = CHAIN.match(words[-1]) if words[-2:-1] == ["-j"] else None
        if m is not None and int(m.group(1)) > rank:
            return f"-I {parent} {position}"
    return f"-A {parent}"


def _is_v6(binary: str) -> bool:
    return os.path.basename(binary).startswith("ip6")
