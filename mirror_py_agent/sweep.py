"""Finding and removing the steal rules that no live mirror-py agent owns, and the iptables lock.

This module stands alone (standard library only, no relative imports, everything imported here at the top):
the agent imports it, and the idle program of agent containers (``mirror_py/kube/placement.py``) carries its
text, so that whatever runs last in a network namespace (the agent, its dead-man helper, the idle program or
the next agent) can remove what an agent killed mid-way left behind.

Ownership: the chain ``MIRRORPY-<rank>-<tag>`` is live while the abstract unix socket name
:func:`marker_name` of its tag is bound. Abstract names belong to the network namespace, like the rules, and
the kernel frees them when the last process holding the socket dies, however it dies.

Python 3.9+.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess

PREFIX = "MIRRORPY-"
LOCK_CHAIN = "MIRRORPY-LOCK"
CHAIN = re.compile(r"^MIRRORPY-([0-9]+)-([0-9a-f]{8})$")
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
XTABLES_WAIT = "5"  # seconds an iptables command waits for the xtables lock (a file another process may hold)
COMMAND_TIMEOUT = 30.0  # seconds before an iptables command is killed


class IptablesError(OSError):
    pass


def binaries() -> list[str]:
    """The iptables commands to drive: iptables, plus ip6tables when it can use the nat table here."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    found = []
    for name in ("iptables", "ip6tables"):
        binary = shutil.which(name, path=path)
        if binary is None:
            continue
        if name == "ip6tables":
            try:
                run(binary, ["-S", "OUTPUT"])
            except IptablesError:
                continue
        found.append(binary)
    return found


def _command(argv: list[str], stdin: str | None) -> str:
    """Runs one iptables command: bytes in and out (no locale codec to load), bounded in time, one-line errors."""
    try:
        proc = subprocess.run(argv, input=None if stdin is None else stdin.encode(), capture_output=True,
                              timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise IptablesError(f"{' '.join(argv[:4])} did not finish in {COMMAND_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().replace("\n", "; ")
        raise IptablesError(f"{' '.join(argv[:4])} failed: {text[-500:]}")
    return proc.stdout.decode("utf-8", "replace")


def run(binary: str, args: list[str]) -> str:
    """``binary -t nat args``; raises :class:`IptablesError`."""
    return _command([binary, "-w", XTABLES_WAIT, "-t", "nat", *args], None)


def restore(binary: str, text: str) -> None:
    """Applies ``text`` (iptables-restore format, nat table) in one atomic commit, keeping everything else."""
    _command([binary + "-restore", "-w", XTABLES_WAIT, "-n"], "*nat\n" + text + "COMMIT\n")


def rules(binary: str) -> list[list[str]]:
    """The nat table as argument lists (``-N chain``, ``-A chain ...``)."""
    return [shlex.split(line) for line in run(binary, ["-S"]).splitlines()]


def marker_name(tag: str) -> bytes:
    return b"\0mirror-py-agent-" + tag.encode()


def try_bind(name: bytes) -> socket.socket | None:
    """Binds an abstract unix socket name; None when a live process holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(name)
    except OSError:
        sock.close()
        return None
    return sock


def is_live(tag: str) -> bool:
    probe = try_bind(marker_name(tag))
    if probe is None:
        return True
    probe.close()
    return False


def remove_chain(binary: str, chain: str, listing: list[list[str]] | None = None) -> None:
    """Deletes the jumps to ``chain``, then the chain; each step on its own, so one failure does not keep the
    rest in place (a rule that is already gone is no error)."""
    for words in listing if listing is not None else rules(binary):
        if len(words) > 2 and words[0] == "-A" and words[1] != chain and words[-2:] == ["-j", chain]:
            try:
                run(binary, ["-D", *words[1:]])
            except IptablesError:
                pass
    for step in ("-F", "-X"):
        try:
            run(binary, [step, chain])
        except IptablesError:
            pass


def lock_holder(listing: list[list[str]]) -> str | None:
    """The tag of the agent holding the lock, "" for a lock chain with no holder, None when it is free."""
    holder = None
    for words in listing:
        if words[:2] == ["-N", LOCK_CHAIN] and holder is None:
            holder = ""
        elif words[:2] == ["-A", LOCK_CHAIN] and "--comment" in words:
            holder = words[words.index("--comment") + 1]
    return holder


def lock_rule(tag: str) -> str:
    return f"-A {LOCK_CHAIN} -m comment --comment {tag} -j RETURN\n"


def release_lock(binary: str, tag: str) -> bool:
    """Removes the lock if ``tag`` holds it (one atomic commit: never someone else's lock)."""
    try:
        if tag:
            restore(binary, lock_rule(tag).replace("-A ", "-D ", 1) + f"-X {LOCK_CHAIN}\n")
        else:
            restore(binary, f"-X {LOCK_CHAIN}\n")
        return True
    except IptablesError:
        return False


def sweep(bins: list[str]) -> list[str]:
    """Removes the chains of agents that are gone, and a lock whose holder is gone; returns the chains."""
    removed = []
    for i, binary in enumerate(bins):
        listing = rules(binary)
        if i == 0:
            holder = lock_holder(listing)
            if holder is not None and not (holder and is_live(holder)):
                release_lock(binary, holder)
        for words in listing:
            m = CHAIN.match(words[1]) if words[0] == "-N" and len(words) == 2 else None
            if m is None or is_live(m.group(2)):
                continue
            remove_chain(binary, words[1], listing)
            removed.append(words[1])
    return removed
