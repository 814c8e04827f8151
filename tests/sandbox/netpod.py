"""Local "pods" built from Linux namespaces, for mirror-py's end-to-end tests.

mirror-py runs a local process as if it were inside a Kubernetes pod: outgoing connections, DNS, files and
environment must come from the pod.  To test that without a cluster, a pod here is:

* a network namespace (``mpt-...``) with ``lo`` up and a veth ``eth0`` on a host bridge (``mpbr...``),
  holding the pod IP from the network's /16 (10.244.0.0/16 for the first network) and a default route via
  the bridge address (10.244.0.1), so the host reaches pod IPs like a node does; when the host has IPv6, the
  pod is dual-stack as well: a unique local address from the network's /64 (fd00:244::/64 for the first
  network, pod 10.244.1.2 is fd00:244::1:2), a default route via the bridge (fd00:244::1) and ``::1``;
* a "pause" process that owns a private mount namespace and a private UTS namespace.  Inside that mount
  namespace only, ``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf`` and any extra files are
  replaced, so the host's files are never touched and only processes entering the pod see them;
* the pause process' environment is exactly the pod environment (``/proc/<pid>/environ``), which is
  where mirror-py can read it from;
* optionally the standard servers of ``tests/sandbox/servers.py`` plus Debian's redis-server, started
  inside the pod and probed until they accept before ``add_pod`` returns.

Everything owned by a live test process is marked by an ``flock``-ed file in ``/run/mirror-py-sandbox``;
``cleanup_leftovers()`` removes namespaces, bridges, processes and work directories whose owner died
(e.g. a test run killed with SIGKILL), and never touches ones that belong to a concurrent run.

Requires root, iproute2 and util-linux (``nsenter``, ``unshare``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVERS_MODULE = "tests.sandbox.servers"

NETNS_PREFIX = "mpt-"
BRIDGE_PREFIX = "mpbr"
VETH_PREFIX = "mpv"
STATE_DIR = Path("/run/mirror-py-sandbox")  # owner locks; /run is wiped on reboot just like namespaces
WORK_ROOT = Path(tempfile.gettempdir()) / "mirror-py-sandbox"

# The first network gets the conventional pod CIDR; concurrent networks (parallel test processes) fall
# back to the next free /16 so their routes never overlap on the host.
CANDIDATE_SUBNETS = tuple(ipaddress.IPv4Network(f"10.{n}.0.0/16") for n in range(244, 255))
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SEARCH_DOMAINS = "default.svc.cluster.local svc.cluster.local cluster.local"

HTTP_PODIP_PORT = 8080
HTTP_LOOPBACK_PORT = 8081
TCP_ECHO_PORT = 7000
TCP_SINK_PORT = 7001
TCP_SLOW_PORT = 7002
UDP_ECHO_PORT = 9999
UDP_LOOPBACK_ECHO_PORT = 9998
IPV6_PREFIX = "fd00"  # unique local addresses (RFC 4193): never routed beyond the host
REDIS_PORT = 6379
TLS_PORT = 8443
TLS_HOSTNAME = "secure.pod.internal"

READY_TIMEOUT = 30.0

FileContent = Union[str, bytes]

_HOST_ENV = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LC_ALL": "C"}
_NSENTER = shutil.which("nsenter", path=_HOST_ENV["PATH"]) or "nsenter"
_IP = shutil.which("ip", path=_HOST_ENV["PATH"]) or "ip"


# ------------------------------------------------------------------------------------------------ helpers


def _ip(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [_IP, *args], input=input, capture_output=True, text=True, env=_HOST_ENV, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ipv6_available() -> bool:
    """Whether the host can give pods IPv6 (a kernel without it, or with it switched off, cannot)."""
    try:
        return Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").read_text().strip() == "0"
    except OSError:
        return False


def _ipv6_for(ip: str) -> str:
    """The IPv6 address that goes with an IPv4 one (10.244.1.2 -> fd00:244::1:2: the decimal octets read as
    hexadecimal groups), so that both are easy to read side by side."""
    o = ip.split(".")
    return str(ipaddress.IPv6Address(f"{IPV6_PREFIX}:{o[1]}::{o[2]}:{o[3]}"))


def _ns_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids_in_netns(ident: tuple[int, int]) -> list[int]:
    """All processes whose network namespace is ``ident``: every process started in a pod lives there."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if _ns_inode(f"/proc/{entry}/ns/net") == ident:
            pids.append(int(entry))
    return pids


def _kill_netns_processes(
    ident: tuple[int, int] | None, children: Sequence[subprocess.Popen] = (), timeout: float = 10.0
) -> None:
    """SIGKILL everything in the namespace until nothing is left, reaping our own children as we go."""
    for proc in children:
        with contextlib.suppress(OSError):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()
    deadline = time.monotonic() + timeout
    while True:
        pids = _pids_in_netns(ident) if ident else []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for proc in children:
            with contextlib.suppress(Exception):
                proc.poll()
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for proc in children:
        with contextlib.suppress(Exception):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialises owner-lock creation against leftover scans (also across processes)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / ".global.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _take_owner_lock(name: str) -> int:
    """Mark ``name`` as owned by this process for as long as the returned fd stays open.

    Must be called under ``_global_lock`` and before the resource exists, so a concurrent
    ``cleanup_leftovers`` can never see the resource without a held lock.
    """
    fd = os.open(STATE_DIR / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release_owner_lock(name: str, fd: int | None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(STATE_DIR / f"{name}.lock")
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _owner_alive(name: str) -> bool:
    try:
        fd = os.open(STATE_DIR / f"{name}.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _list_links() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except FileNotFoundError:
        return []


def cleanup_leftovers() -> list[str]:
    """Remove pods and networks left by a test process that died without closing them.

    Only resources whose owner lock is not held are removed, so this is safe to call while other test
    processes (or this one) have live networks.  Returns the names that were removed.
    """
    removed: list[str] = []
    with _global_lock():
        names: set[str] = set()
        names.update(n for n in _list_netns() if n.startswith(NETNS_PREFIX))
        names.update(n for n in _list_links() if n.startswith(BRIDGE_PREFIX))
        ours = (NETNS_PREFIX, BRIDGE_PREFIX)
        names.update(p.stem for p in STATE_DIR.glob("*.lock") if p.stem.startswith(ours))
        if WORK_ROOT.is_dir():
            names.update(p.name for p in WORK_ROOT.iterdir() if p.name.startswith(ours))
        dead = {n for n in names if not _owner_alive(n)}
        for name in sorted(dead):
            if name.startswith(NETNS_PREFIX):
                netns_path = f"/run/netns/{name}"
                if os.path.exists(netns_path):
                    _kill_netns_processes(_ns_inode(netns_path))
                    _ip("netns", "del", name, check=False)
            elif os.path.exists(f"/sys/class/net/{name}"):
                _ip("link", "del", name, check=False)
            shutil.rmtree(WORK_ROOT / name, ignore_errors=True)
            _release_owner_lock(name, None)
            removed.append(name)
        # A host-side veth outlives its pod only if the netns removal failed half-way.
        live_ids = {n.split("-")[1] for n in names - dead if n.startswith(NETNS_PREFIX) and n.count("-") >= 2}
        for link in _list_links():
            if link.startswith(VETH_PREFIX) and link[len(VETH_PREFIX) :] not in live_ids:
                _ip("link", "del", link, check=False)
                removed.append(link)
    return removed


# ------------------------------------------------------------------------------------------------ pods


@dataclass
class PodSpec:
    """What makes a pod: its name, environment, extra hosts entries, hostname and files.

    ``files`` maps absolute paths to contents; they are visible only inside the pod (missing parent
    directories are created in a private overlay).  ``servers`` starts the standard servers.
    """

    name: str
    env: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    files: dict[str, FileContent] = field(default_factory=dict)
    servers: bool = True


_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def _hosts_file(ip: str, hostname: str, extra: Mapping[str, str]) -> str:
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
        f"{ip}\t{hostname}",
    ]
    if extra:
        lines += ["", "# Entries added by HostAliases."]
        lines += [f"{addr}\t{name}" for name, addr in extra.items()]
    return "\n".join(lines) + "\n"


def _mount_plan(files: Mapping[str, bytes], src_dir: Path, stage_dir: Path) -> list[str]:
    """Shell commands that make ``files`` appear in the (already private) mount namespace.

    Existing files are bind-mounted over.  A file whose directory does not exist cannot be a bind target
    without creating it on the host, so its nearest existing ancestor gets an overlay whose upper layer
    (on a tmpfs mounted only in the pod) already contains the new entries.
    """
    binds: list[tuple[str, str]] = []
    overlays: dict[str, list[tuple[str, bytes]]] = {}
    for index, (target, content) in enumerate(sorted(files.items())):
        if not os.path.isabs(target):
            raise ValueError(f"pod file paths must be absolute: {target!r}")
        real = os.path.realpath(target)
        if os.path.isdir(real):
            raise ValueError(f"pod file {target!r} is a directory on the host")
        if os.path.exists(real):
            src = src_dir / f"{index}-{os.path.basename(real)}"
            src.write_bytes(content)
            binds.append((str(src), real))
            continue
        ancestor = os.path.dirname(real)
        while not os.path.isdir(ancestor):
            ancestor = os.path.dirname(ancestor)
        if ancestor == "/":
            raise ValueError(f"cannot add {target!r}: a new top-level directory would need an overlay on /")
        if re.search(r"[,:\s\\]", ancestor):
            raise ValueError(f"cannot overlay {ancestor!r}: unsupported characters")
        overlays.setdefault(ancestor, []).append((os.path.relpath(real, ancestor), content))

    # An overlay nested inside another one is folded into the outer one (mounted once, from the top).
    merged: dict[str, list[tuple[str, bytes]]] = {}
    for ancestor in sorted(overlays, key=len):
        outer = next((r for r in merged if ancestor.startswith(r.rstrip("/") + "/")), None)
        if outer is None:
            merged[ancestor] = list(overlays[ancestor])
        else:
            prefix = os.path.relpath(ancestor, outer)
            merged[outer] += [(os.path.join(prefix, rel), c) for rel, c in overlays[ancestor]]
    overlays = merged

    q = shlex.quote
    cmds: list[str] = []
    if overlays:
        cmds.append(f"mount -t tmpfs -o mode=0755 mpt-stage {q(str(stage_dir))}")
    for number, ancestor in enumerate(sorted(overlays, key=len)):
        layer = src_dir / f"overlay{number}"
        for rel, content in overlays[ancestor]:
            dest = layer / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(content)
        upper, work = stage_dir / f"{number}u", stage_dir / f"{number}w"
        cmds.append(f"mkdir {q(str(upper))} {q(str(work))}")
        cmds.append(f"cp -a {q(str(layer))}/. {q(str(upper))}/")
        opts = f"lowerdir={ancestor},upperdir={upper},workdir={work}"
        cmds.append(f"mount -t overlay mpt-overlay -o {q(opts)} {q(ancestor)}")
    for src, dst in binds:
        cmds.append(f"mount --bind {q(src)} {q(dst)}")
    return cmds


class Pod:
    """One running pod; create it with :meth:`Network.add_pod`."""

    def __init__(self, network: Network, spec: PodSpec, ip: str) -> None:
        if not _NAME_RE.match(spec.name):
            raise ValueError(f"pod name must be a short DNS label: {spec.name!r}")
        self.network = network
        self.spec = spec
        self.name = spec.name
        self.ip = ip
        self.ip6: str | None = _ipv6_for(ip) if network.gateway6 else None
        self.hostname = spec.hostname or spec.name
        self.id = secrets.token_hex(4)
        self.netns = f"{NETNS_PREFIX}{self.id}-{spec.name}"
        self.veth = f"{VETH_PREFIX}{self.id}"
        self.env: dict[str, str] = dict(spec.env)
        self.env.setdefault("PATH", DEFAULT_PATH)
        self.workdir = WORK_ROOT / self.netns
        self.tls_ca_file: str = network.ca_file
        self.pid: int = 0
        self.servers: dict[str, subprocess.Popen] = {}
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        self._netns_ident: tuple[int, int] | None = None
        self._pause: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def _start(self) -> None:
        with _global_lock():
            self._lock_fd = _take_owner_lock(self.netns)
        self.workdir.mkdir(parents=True)
        (self.workdir / "logs").mkdir()
        _ip("netns", "add", self.netns)
        self._netns_ident = _ns_inode(f"/run/netns/{self.netns}")
        net = self.network
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("link", "set", self.veth, "master", net.bridge, "up")
        _ip(
            "-n",
            self.netns,
            "-batch",
            "-",
            input="\n".join(
                [
                    "link set lo up",
                    f"addr add {self.ip}/{net.subnet.prefixlen} dev eth0",
                    # nodad: the address is usable at once, not after duplicate address detection
                    *([f"addr add {self.ip6}/64 dev eth0 nodad"] if self.ip6 else []),
                    "link set eth0 up",
                    f"route add default via {net.gateway}",
                    *([f"route add default via {net.gateway6}"] if self.ip6 else []),
                ]
            )
            + "\n",
        )
        self._start_pause()
        if self.spec.servers:
            self._start_servers()

    def _start_pause(self) -> None:
        src_dir = self.workdir / "files"
        stage_dir = self.workdir / "stage"
        src_dir.mkdir()
        stage_dir.mkdir()
        files: dict[str, bytes] = {
            "/etc/hosts": _hosts_file(self.ip, self.hostname, self.spec.hosts).encode(),
            "/etc/hostname": f"{self.hostname}\n".encode(),
            "/etc/resolv.conf": f"nameserver {self.network.gateway}\nsearch {SEARCH_DOMAINS}\n".encode(),
        }
        for path, content in self.spec.files.items():
            files[path] = content.encode() if isinstance(content, str) else bytes(content)
        q = shlex.quote
        env_words = " ".join(q(f"{k}={v}") for k, v in self.env.items())
        script = "\n".join(
            [
                "set -e",
                "cd /",
                *_mount_plan(files, src_dir, stage_dir),
                f"printf %s {q(self.hostname)} > /proc/sys/kernel/hostname",
                "echo ready",
                f"exec env -i {env_words} sleep infinity </dev/null >/dev/null 2>&1",
            ]
        )
        log = open(self.workdir / "logs" / "pause.log", "wb")
        try:
            # `ip netns exec` enters the netns and remounts /sys for it (in its own mount namespace);
            # unshare then gives the pod a further private mount namespace plus a UTS namespace, so the
            # bind mounts below exist only there.  Neither tool forks, so Popen.pid is the pause process.
            self._pause = subprocess.Popen(
                [
                    _IP,
                    "netns",
                    "exec",
                    self.netns,
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_HOST_ENV,
                start_new_session=True,
            )
        finally:
            log.close()
        self._procs.append(self._pause)
        assert self._pause.stdout is not None
        ready, _, _ = select.select([self._pause.stdout], [], [], READY_TIMEOUT)
        line = self._pause.stdout.readline() if ready else b""
        self._pause.stdout.close()
        if line.strip() != b"ready":
            raise RuntimeError(f"pod {self.name}: pause process failed to start: {self._log('pause')}")
        self.pid = self._pause.pid

    def _start_servers(self) -> None:
        py = [sys.executable, "-m", SERVERS_MODULE]
        tls_pem = self.workdir / "tls-server.pem"
        self.network.ca.issue_cert(TLS_HOSTNAME).private_key_and_cert_chain_pem.write_to_path(str(tls_pem))
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        commands: dict[str, list[str]] = {
            "http-loopback": [
                *py,
                "http",
                "--pod",
                self.name,
                "--label",
                "loopback",
                "--bind",
                f"127.0.0.1:{HTTP_LOOPBACK_PORT}",
            ],
            "http-podip": [
                *py,
                "http",
                "--pod",
                self.name,
                "--label",
                "podip",
                "--bind",
                f"0.0.0.0:{HTTP_PODIP_PORT}",
            ],
            "tcp-echo": [*py, "tcp-echo", "--bind", f"0.0.0.0:{TCP_ECHO_PORT}"],
            "tcp-sink": [*py, "tcp-sink", "--bind", f"0.0.0.0:{TCP_SINK_PORT}"],
            "tcp-slow": [*py, "tcp-slow", "--bind", f"0.0.0.0:{TCP_SLOW_PORT}"],
            "udp-echo": [*py, "udp-echo", "--bind", f"0.0.0.0:{UDP_ECHO_PORT}"],
            "udp-echo-loopback": [*py, "udp-echo", "--bind", f"127.0.0.1:{UDP_LOOPBACK_ECHO_PORT}"],
            "tls": [*py, "tls", "--pod", self.name, "--bind", f"0.0.0.0:{TLS_PORT}", "--cert", str(tls_pem)],
            # IPv6 twins of the echo servers: on [::] (IPv6 only, beside the IPv4 ones on the same ports), so
            # they answer on the pod's IPv6 address and on ::1.
            **(
                {
                    "tcp-echo-v6": [*py, "tcp-echo", "--bind", f"[::]:{TCP_ECHO_PORT}"],
                    "udp-echo-v6": [*py, "udp-echo", "--bind", f"[::]:{UDP_ECHO_PORT}"],
                }
                if self.ip6
                else {}
            ),
            "redis": [
                "/usr/bin/redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(redis_dir),
            ],
        }
        for kind, argv in commands.items():
            self.servers[kind] = self._run_logged(kind, argv)
        loop = "127.0.0.1"
        targets = [
            f"tcp:{loop}:{port}"
            for port in (
                HTTP_LOOPBACK_PORT,
                HTTP_PODIP_PORT,
                TCP_ECHO_PORT,
                TCP_SINK_PORT,
                TCP_SLOW_PORT,
                TLS_PORT,
            )
        ]
        targets += [
            f"udp:{loop}:{UDP_ECHO_PORT}",
            f"udp:{loop}:{UDP_LOOPBACK_ECHO_PORT}",
            f"redis:{loop}:{REDIS_PORT}",
        ]
        if self.ip6:
            targets += [f"tcp:[::1]:{TCP_ECHO_PORT}", f"udp:[::1]:{UDP_ECHO_PORT}"]
        waiter = self._run_logged(
            "wait",
            [
                *py,
                "wait",
                "--timeout",
                str(READY_TIMEOUT),
                "--redis-set",
                f"{loop}:{REDIS_PORT}",
                "pod:name",
                self.name,
                *targets,
            ],
        )
        # Poll the readiness checker, but give up early if a server died (e.g. a bind error).
        while waiter.poll() is None:
            dead = [kind for kind, proc in self.servers.items() if proc.poll() is not None]
            if dead:
                waiter.kill()
                waiter.wait()
                raise RuntimeError(
                    f"pod {self.name}: server(s) {dead} exited: "
                    + "; ".join(f"{k}: {self._log(k)}" for k in dead)
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                waiter.wait(timeout=0.02)
        if waiter.returncode != 0:
            raise RuntimeError(f"pod {self.name}: servers not ready: {self._log('wait')}")

    def _run_logged(self, kind: str, argv: list[str]) -> subprocess.Popen:
        with open(self.workdir / "logs" / f"{kind}.log", "wb") as log:
            return self.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(PROJECT_ROOT),
                extra_env={"PYTHONPATH": str(PROJECT_ROOT)},
            )

    def _log(self, kind: str) -> str:
        try:
            text = (self.workdir / "logs" / f"{kind}.log").read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text.strip()[-2000:] or "<empty log>"

    def log_path(self, kind: str) -> Path:
        """Where a server's (``http-podip``, ``redis``, ...) or the pause process' output goes."""
        return self.workdir / "logs" / f"{kind}.log"

    def close(self) -> None:
        """Kill every process in the pod and remove its netns, mounts and files; safe to call repeatedly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            _kill_netns_processes(self._netns_ident, self._procs)
            # Deleting the host end removes the pair synchronously; netns removal alone may lag.
            if os.path.exists(f"/sys/class/net/{self.veth}"):
                _ip("link", "del", self.veth, check=False)
            if os.path.exists(f"/run/netns/{self.netns}"):
                _ip("netns", "del", self.netns, check=False)
            shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            _release_owner_lock(self.netns, self._lock_fd)
            self._lock_fd = None
            self.network._forget(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pod(name={self.name!r}, ip={self.ip!r}, netns={self.netns!r}, pid={self.pid})"

    # -- running things inside -----------------------------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """The command line that runs ``argv`` in the pod's network, mount and UTS namespaces.

        Entering a mount namespace resets the working directory to its root, so ``cwd`` is applied
        afterwards (and resolved in the pod's view of the file system).
        """
        if not self.pid:
            raise RuntimeError(f"pod {self.name} is not running")
        prefix = [_NSENTER, "-t", str(self.pid), "-n", "-m", "-u", "--"]
        if cwd is not None:
            prefix += ["env", "-C", os.fspath(cwd), "--"]
        return [*prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        **popen_kwargs: Any,
    ) -> subprocess.Popen:
        """Start ``argv`` inside the pod with the pod's environment (``env=`` replaces it entirely).

        ``cwd=`` is a directory inside the pod (default ``/``).  The process gets its own session by
        default so ``close()`` can kill it and its children; it is killed with the pod in any case
        because it lives in the pod's netns.  ``prefix`` runs on the host before entering the pod
        (e.g. a wrapper that moves the process into a cgroup, which the pod's /sys would not show).
        """
        if self._closed:
            raise RuntimeError(f"pod {self.name} is closed")
        env = popen_kwargs.pop("env", None)
        env = dict(self.env if env is None else env)
        if extra_env:
            env.update(extra_env)
        cmd = [*prefix, *self.nsenter_argv(argv, popen_kwargs.pop("cwd", None))]
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(cmd, env=env, **popen_kwargs)
        with self._lock:
            self._procs = [p for p in self._procs if p is self._pause or p.poll() is None]
            self._procs.append(proc)
        return proc

    def exec_output(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0, **popen_kwargs: Any
    ) -> str:
        """Run ``argv`` to completion inside the pod and return its stdout; raise on a non-zero exit."""
        proc = self.run(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen_kwargs,
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, output=out, stderr=err)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, list(argv), output=out, stderr=err)
        return out

    def environ(self) -> dict[str, str]:
        """The pause process' environment as the kernel reports it (what an outside reader would see)."""
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


# --------------------------------------------------------------------------------------------- network


_LIVE_NETWORKS: set[Network] = set()
_LIVE_LOCK = threading.Lock()


def _assigned_ipv4() -> set[ipaddress.IPv4Address]:
    data = json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
    return {
        ipaddress.IPv4Address(a["local"]) for link in data for a in link.get("addr_info", []) if "local" in a
    }


class Network:
    """A host bridge plus the pods attached to it; the bridge address plays the node / DNS address."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(4)
        self.bridge = f"{BRIDGE_PREFIX}{self.id}"
        self.subnet: ipaddress.IPv4Network = CANDIDATE_SUBNETS[0]
        self.gateway = ""
        self.gateway6 = ""  # the bridge's IPv6 address; empty when the host has no IPv6
        self.workdir = WORK_ROOT / self.bridge
        self.pods: list[Pod] = []
        self._next_index = 0
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        self.ca: Any = None
        self.ca_file = str(self.workdir / "ca.pem")

    @classmethod
    def create(cls, subnet: str | None = None) -> Network:
        """Create the bridge (first free /16 from 10.244.0.0/16 on, unless ``subnet`` is given).

        Dead leftovers of earlier runs are removed first, so a crashed run never blocks the next one.
        """
        cleanup_leftovers()
        net = cls()
        try:
            net._create(subnet)
        except BaseException:
            net.close()
            raise
        return net

    def _create(self, subnet: str | None) -> None:
        import trustme  # test-only dependency; imported lazily so the module imports without it

        with _global_lock():
            self._lock_fd = _take_owner_lock(self.bridge)
            with _LIVE_LOCK:
                _LIVE_NETWORKS.add(self)
            used = _assigned_ipv4()
            candidates = [ipaddress.IPv4Network(subnet)] if subnet else list(CANDIDATE_SUBNETS)
            for candidate in candidates:
                if not any(addr in candidate for addr in used):
                    self.subnet = candidate
                    break
            else:
                raise RuntimeError(f"no free subnet for a sandbox network among {candidates}")
            self.gateway = str(self.subnet.network_address + 1)
            # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and changes it as veths
            # join, and pods that cached the gateway's old MAC are cut off until their ARP entry expires.
            mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            _ip("link", "add", "name", self.bridge, "address", mac, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            if ipv6_available():
                self.gateway6 = _ipv6_for(self.gateway)
                _ip("addr", "add", f"{self.gateway6}/64", "dev", self.bridge, "nodad")
            _ip("link", "set", self.bridge, "up")
        # Pods reach the host (and each other) through the bridge; forwarding matters once traffic is
        # routed between namespaces.  It is a global switch, so it is left on.
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(self.ca_file)

    def _allocate_ip(self) -> str:
        with self._lock:
            index = self._next_index
            self._next_index += 1
        # Pods start at x.y.1.2: x.y.0.0/24 stays free for the gateway and for made-up "elsewhere" IPs.
        per_block = 250
        addr = self.subnet.network_address + 256 * (1 + index // per_block) + 2 + index % per_block
        if addr not in self.subnet or addr == self.subnet.broadcast_address:
            raise RuntimeError(f"subnet {self.subnet} is full")
        return str(addr)

    def add_pod(self, spec: PodSpec) -> Pod:
        """Create and start a pod; with ``spec.servers`` all standard servers accept before this returns."""
        if self._closed:
            raise RuntimeError("network is closed")
        pod = Pod(self, spec, self._allocate_ip())
        with self._lock:
            self.pods.append(pod)
        try:
            pod._start()
        except BaseException:
            pod.close()
            raise
        return pod

    def _forget(self, pod: Pod) -> None:
        with self._lock:
            if pod in self.pods:
                self.pods.remove(pod)

    def close(self) -> None:
        """Close all pods and remove the bridge; safe to call repeatedly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pods = list(self.pods)
        try:
            for pod in reversed(pods):
                with contextlib.suppress(Exception):
                    pod.close()
            if os.path.exists(f"/sys/class/net/{self.bridge}"):
                _ip("link", "del", self.bridge, check=False)
            shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            _release_owner_lock(self.bridge, self._lock_fd)
            self._lock_fd = None
            with _LIVE_LOCK:
                _LIVE_NETWORKS.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Network(bridge={self.bridge!r}, subnet={str(self.subnet)!r}, pods={len(self.pods)})"


@atexit.register
def _close_all_networks() -> None:
    """Last-resort cleanup for tests that forgot to close; SIGKILLed runs are handled by cleanup_leftovers."""
    with _LIVE_LOCK:
        networks = list(_LIVE_NETWORKS)
    for net in networks:
        with contextlib.suppress(Exception):
            net.close()


__all__ = [
    "HTTP_LOOPBACK_PORT",
    "HTTP_PODIP_PORT",
    "REDIS_PORT",
    "TCP_ECHO_PORT",
    "TCP_SINK_PORT",
    "TCP_SLOW_PORT",
    "TLS_HOSTNAME",
    "TLS_PORT",
    "UDP_ECHO_PORT",
    "UDP_LOOPBACK_ECHO_PORT",
    "Network",
    "Pod",
    "PodSpec",
    "cleanup_leftovers",
]
