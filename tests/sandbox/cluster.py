"""The sandbox cluster: Kubernetes objects backed by real namespaces, processes, DNS and an API server.

mirror-py talks to Kubernetes through the official client and the exec websocket, and then works inside the
target's namespaces.  Mocking the API would test nothing of that, so this module keeps a small object store
(what the API server serves) and makes every pod real: a network + mount + UTS namespace from ``netpod``
with the pod's resolv.conf, hosts, hostname, mounted ConfigMaps/Secrets and service-account token, and one
process per container with the container's environment.  Deployments, StatefulSets, DaemonSets and Jobs are
expanded into pods the way their controllers name and label them, because target resolution depends on it.

Sandbox-only knobs (nothing a real cluster has; all documented on :class:`Cluster`):

* ``sandbox.mirror-py/no-python`` pod annotation, ``"true"`` or a comma-separated list of container names:
  those containers' PATH holds common tools but no python3 (also ``Cluster.set_no_python``).
* ``sandbox.mirror-py/ready: "false"`` keeps a pod Running but not Ready (also ``Cluster.set_ready``).
* an image containing ``does-not-exist`` or ``invalid`` never "pulls": the container waits in
  ErrImagePull / ImagePullBackOff.
* ``Cluster.ephemeral_containers_enabled = False`` answers the ephemeralcontainers subresource with the 404 of a
  cluster that has the feature off; ``Cluster.v4_only`` drops ``v5.channel.k8s.io`` as an older cluster does.

Like a container runtime, a container's processes (its own and exec'd ones) get NET_ADMIN and SYS_PTRACE only
in a privileged container or one whose securityContext adds them (NET_RAW stays, as in the runtimes' default
set), and run as the ``runAsUser``/``runAsGroup`` of the container's or else the pod's securityContext (so the
kernel's own rules decide who may read another container's ``/proc/PID/environ``).

Limits, on purpose: a Service's ClusterIP is the IP of its first ready pod (so ``port`` must equal
``targetPort``); all containers of a pod share one mount namespace (volume mounts of one container are
visible to all); images are ignored (every container runs on the host's file system and binaries), except
that agent containers of known images get a root of their own (tests/sandbox/images.py).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tests.sandbox import admission, attach, images, kubelet_events, netpod, runtimes
from tests.sandbox.dns import CLUSTER_DOMAIN, ClusterDns
from tests.sandbox.manifest import (
    RESOURCES,
    SUBRESOURCES,
    ApiError,
    decode_secret_data,
    load_manifest,
    new_uid,
    now_rfc3339,
    owner_reference,
    random_suffix,
    selector_matches,
    template_hash,
)
from tests.sandbox.netpod import STATE_DIR, WORK_ROOT, Network, Pod, PodSpec

CLUSTER_PREFIX = "mpc-"
CGROUP_PREFIX = "mirror-py-sandbox-"
NODE_NAME = "sandbox-node"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_PYTHON_ANNOTATION = "sandbox.mirror-py/no-python"
READY_ANNOTATION = "sandbox.mirror-py/ready"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
DEFAULT_COMMAND = ("sleep", "infinity")  # what an image without a long-running entrypoint is given here
BAD_IMAGE_MARKERS = ("does-not-exist", "invalid")
SERVER_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.4-sandbox"}
V4_ONLY_VERSION = {"major": "1", "minor": "29", "gitVersion": "v1.29.12-sandbox"}
NO_PYTHON_TOOLS = (
    "sh",
    "bash",
    "dash",
    "env",
    "cat",
    "ls",
    "echo",
    "printf",
    "sleep",
    "true",
    "false",
    "test",
    "id",
    "hostname",
    "head",
    "tail",
    "grep",
    "sed",
    "tr",
    "cut",
    "wc",
    "sort",
    "uname",
    "date",
    "kill",
    "ps",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "stat",
    "readlink",
    "nsenter",
    "timeout",
)

SandboxPod = Union[Pod, "HostPod"]


# ------------------------------------------------------------------------------------------------ users


@dataclass
class User:
    """An authenticated identity and its RBAC rules (PolicyRule dicts, optionally limited to namespaces)."""

    name: str
    token: str
    rules: list[dict[str, Any]]
    namespaces: tuple[str, ...] | None = None  # None: rules hold cluster-wide (a ClusterRoleBinding)
    groups: tuple[str, ...] = ("system:authenticated",)


def _all_resource_names() -> list[str]:
    names = list(RESOURCES)
    for resource, subs in SUBRESOURCES.items():
        names += [f"{resource}/{sub}" for sub in subs]
    return names


def rules_without(*excluded: str) -> list[dict[str, Any]]:
    """Everything except the given ``resource/subresource`` names (how the restricted test users are made)."""
    return [{"apiGroups": ["*"], "resources": [r for r in _all_resource_names() if r not in excluded], "verbs": ["*"]}]


ADMIN_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
    {"nonResourceURLs": ["*"], "verbs": ["*"]},
]
PUBLIC_PATHS = ("/version", "/version/", "/healthz", "/livez", "/readyz")
# The system:basic-user ClusterRole, bound to every authenticated user: anyone may ask what they may do
# (`kubectl auth can-i`, `mirror-py doctor`), even with nothing but a namespaced Role.
BASIC_USER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
]


def rule_allows(rule: Mapping[str, Any], verb: str, group: str, resource: str, name: str = "") -> bool:
    """RBAC's matching: ``*`` is everything incl. subresources, ``pods/*`` all subresources of pods."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and verb not in verbs:
        return False
    groups = rule.get("apiGroups")
    if groups is None or ("*" not in groups and group not in groups):
        return False
    resources = rule.get("resources") or []
    base, _, sub = resource.partition("/")
    ok = "*" in resources or resource in resources or (sub and (f"{base}/*" in resources or f"*/{sub}" in resources))
    if not ok:
        return False
    names = rule.get("resourceNames")
    return not names or name in names


def user_allows(user: User | None, verb: str, group: str, resource: str, namespace: str, name: str = "") -> bool:
    if user is None:
        return False
    if any(rule_allows(r, verb, group, resource, name) for r in BASIC_USER_RULES):
        return True
    if user.namespaces is not None and namespace not in user.namespaces:
        return False
    return any(rule_allows(r, verb, group, resource, name) for r in user.rules if "nonResourceURLs" not in r)


def user_allows_path(user: User | None, verb: str, path: str) -> bool:
    if path in PUBLIC_PATHS:
        return True
    if user is None:
        return False
    if path.startswith(("/api", "/apis", "/openapi")):  # system:discovery is bound to every authenticated user
        return True
    for rule in user.rules:
        urls = rule.get("nonResourceURLs") or []
        verbs = rule.get("verbs") or []
        if ("*" in verbs or verb in verbs) and any(
            u == path or u == "*" or (u.endswith("*") and path.startswith(u[:-1])) for u in urls
        ):
            return True
    return False


@dataclass
class ApiCall:
    """One request as the API server saw it, with the attributes RBAC authorizes on."""

    method: str
    path: str
    query: dict[str, list[str]]
    user: str | None
    verb: str = ""
    api_group: str = ""
    resource: str = ""  # "pods", or with subresource "pods/exec"
    namespace: str = ""
    name: str = ""
    code: int = 0
    # The connection it came on: connections are numbered from 1 in the order the server accepted them (TLS
    # done); ``connections`` is how many had been accepted when this call arrived.
    connection: int = 0
    connections: int = 0

    @property
    def is_resource_request(self) -> bool:
        return bool(self.resource)


# ------------------------------------------------------------------------------------------------ store


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


class Store:
    """The API objects, one global resourceVersion, and a bounded event history for watches."""

    HISTORY = 20000

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 1000
        self.history: list[WatchEvent] = []
        self.subscribers: list[Callable[[WatchEvent], None]] = []

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (res, ns, _), o in self.objects.items()
                if res == resource and (namespace is None or ns == namespace)
            ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; emits ADDED or MODIFIED (nothing when unchanged) and returns the stored copy."""
        resource = _resource_of(obj)
        meta = obj["metadata"]
        key = (resource, meta.get("namespace", ""), meta["name"])
        with self.lock:
            old = self.objects.get(key)
            if old is not None:
                comparable = dict(obj, metadata={k: v for k, v in meta.items() if k != "resourceVersion"})
                old_cmp = dict(old, metadata={k: v for k, v in old["metadata"].items() if k != "resourceVersion"})
                if comparable == old_cmp:
                    return copy.deepcopy(old)
            self.rv += 1
            stored = copy.deepcopy(obj)
            stored["metadata"]["resourceVersion"] = str(self.rv)
            if old is None:
                stored["metadata"].setdefault("uid", new_uid())
                stored["metadata"].setdefault("creationTimestamp", now_rfc3339())
            self.objects[key] = stored
            self._emit(WatchEvent(self.rv, "ADDED" if old is None else "MODIFIED", resource, key[1], stored, old))
            return copy.deepcopy(stored)

    def update(
        self, resource: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """Read-modify-write under the lock (controllers and the API server race otherwise)."""
        with self.lock:
            obj = self.get(resource, namespace, name)
            if obj is None:
                return None
            change(obj)
            return self.put(obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            old = self.objects.pop((resource, namespace, name), None)
            if old is None:
                return None
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(WatchEvent(self.rv, "DELETED", resource, namespace, gone, old))
            return gone

    def _emit(self, event: WatchEvent) -> None:
        self.history.append(event)
        if len(self.history) > self.HISTORY:
            del self.history[: len(self.history) - self.HISTORY]
        for callback in list(self.subscribers):
            with contextlib.suppress(Exception):
                callback(event)

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        with self.lock:
            self.subscribers.append(callback)

        def unsubscribe() -> None:
            with self.lock, contextlib.suppress(ValueError):
                self.subscribers.remove(callback)

        return unsubscribe


def _resource_of(obj: Mapping[str, Any]) -> str:
    for resource in RESOURCES.values():
        if resource.kind == obj.get("kind"):
            return resource.plural
    raise ValueError(f"unknown kind {obj.get('kind')!r}")


# ------------------------------------------------------------------------------------------------ cgroups


def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


class Cgroups:
    """The cluster's cgroup (best effort) under which every container's cgroups are made, named as its
    runtime layout names them (:mod:`tests.sandbox.runtimes`) so a job agent finds a container's processes by
    container ID in ``/proc/*/cgroup`` as on a node — and so every process of a container, however it was
    started, can be killed at cleanup even after a SIGKILL of the test run."""

    def __init__(self, cluster_id: str) -> None:
        mount = _cgroup2_mount()
        self.root: Path | None = None
        if mount is not None:
            root = mount / f"{CGROUP_PREFIX}{cluster_id}.slice"
            try:
                root.mkdir()
                self.root = root
            except OSError:
                self.root = None

    @staticmethod
    def kill_tree(path: Path, timeout: float = 5.0) -> None:
        """Kill every process in ``path`` and its children cgroups, then remove them (deepest first)."""
        if not path.is_dir():
            return
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        dirs.append(path)
        kill_file = path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        deadline = time.monotonic() + timeout
        for directory in dirs:
            while time.monotonic() < deadline:
                try:
                    pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            with contextlib.suppress(OSError):
                directory.rmdir()

    def close(self) -> None:
        if self.root is not None:
            self.kill_tree(self.root)


# ------------------------------------------------------------------------------------------------ host pods


class HostPod:
    """A pod with ``hostPID``/``hostNetwork``: its containers are plain host processes (like a node agent).

    Offers the parts of :class:`netpod.Pod` the cluster uses (``run``, ``nsenter_argv``, ``close``, ``ip``,
    ``env``); ``pid`` is 0 because there is no pod namespace to enter.
    """

    def __init__(self, name: str, ip: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.ip = ip
        self.env = dict(env)
        self.pid = 0
        self.netns = ""
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._lock = threading.Lock()

    def nsenter_argv(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        if cwd is not None:
            return ["env", "-C", os.fspath(cwd), "--", *argv]
        return list(argv)

    def run(
        self,
        argv: Sequence[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        **popen_kwargs: Any,
    ) -> subprocess.Popen:
        if self._closed:
            raise RuntimeError(f"pod {self.name} is closed")
        env = dict(popen_kwargs.pop("env", None) or self.env)
        env.update(extra_env or {})
        cmd = [*prefix, *self.nsenter_argv(argv, popen_kwargs.pop("cwd", None))]
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(cmd, env=env, **popen_kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)

    def __repr__(self) -> str:
        return f"HostPod(name={self.name!r}, ip={self.ip!r})"


# ------------------------------------------------------------------------------------------------ runtime


@dataclass
class Container:
    """The runtime side of one container (regular or ephemeral)."""

    name: str
    spec: dict[str, Any]
    ephemeral: bool = False
    id: str = field(default_factory=lambda: secrets.token_hex(32))
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    cwd: str | None = None
    cgroups: runtimes.ContainerCgroups | None = None  # where its processes (and a runtime's monitor) live
    layout: runtimes.Layout = runtimes.DEFAULT  # the runtime whose cgroup names and ID scheme it has
    image_root: images.Image | None = None  # a root file system of its image's, not the pod's (images.py)
    proc: subprocess.Popen | None = None
    state: str = "waiting"  # waiting, running, terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    restart_count: int = 0
    ready: bool = False
    last_state: dict[str, Any] = field(default_factory=dict)
    no_python: bool = False
    start_after: float = 0.0  # ephemeral containers "pull" for a moment before they run
    pod_security: dict[str, Any] = field(default_factory=dict)  # the pod's securityContext (runAsUser...)
    console: attach.Console | None = None  # stdin kept for pods/attach (``stdin: true``)

    @property
    def image(self) -> str:
        return str(self.spec.get("image") or "")

    @property
    def bad_image(self) -> bool:
        return any(marker in self.image for marker in BAD_IMAGE_MARKERS)

    def status(self) -> dict[str, Any]:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": "Completed" if self.exit_code == 0 else "Error",
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                    "containerID": f"{self.layout.scheme}://{self.id}",
                }
            }
        else:
            waiting: dict[str, Any] = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "" if self.state == "waiting" else f"{self.image}@sha256:{self.id}",
            "ready": self.ready and self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_state,
        }
        if self.state != "waiting":
            out["containerID"] = f"{self.layout.scheme}://{self.id}"
        if not self.ephemeral:
            out["started"] = self.state == "running"
        return out


@dataclass
class PodRuntime:
    """Everything running for one pod object."""

    namespace: str
    name: str
    uid: str
    host: bool
    sandbox: SandboxPod | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    ephemeral: dict[str, Container] = field(default_factory=dict)
    ip: str = ""
    failed: str = ""
    config_error: str = ""
    deleting: bool = False
    unready: bool = False
    probes: dict[str, tuple[int, float]] = field(default_factory=dict)  # container -> (port, next try)

    def container(self, name: str) -> Container | None:
        return self.containers.get(name) or self.ephemeral.get(name)


class ExecProblem(Exception):
    """A failure the runtime reports for an exec (no such executable, container not running)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ExecPlan:
    """What the API server starts for an exec: the host argv (entering the container), env and tty."""

    argv: list[str]
    env: dict[str, str]
    container: str
    pod: PodRuntime


# ------------------------------------------------------------------------------------------------ cluster


class Cluster:
    """A running sandbox cluster.  Start it with :meth:`start` (a context manager).

    For tests:

    * ``kubeconfig`` — path of the written kubeconfig; contexts ``sandbox`` (admin, current),
      ``sandbox-no-exec``, ``sandbox-no-ephemeral`` and ``sandbox-cert`` (client certificate, admin).
    * ``tokens`` — user name → bearer token (``admin``, ``no-exec``, ``no-ephemeral``); ``add_user`` makes more
      with any RBAC rules (e.g. a Role from ``k8s/``).
    * ``pods`` — pod name → the running :class:`netpod.Pod` (or :class:`HostPod`); ``pod(name, namespace)``.
    * ``base_url``, ``ca_file``, ``namespace`` (the kubeconfig's default namespace), ``calls`` (recorded
      :class:`ApiCall` list, ``clear_calls()``), ``configuration(user)`` (a kubernetes client Configuration).
    * knobs: ``v4_only``, ``ephemeral_containers_enabled``, ``missing_executable`` (``"runtime-error"``: exec of a
      missing binary fails like containerd — v5 Failure status after the upgrade, v4 an HTTP 500; ``"exit-127"``:
      the process is started anyway and exits 127), ``set_no_python``, ``set_ready``, ``ephemeral_start_delay``,
      ``exec_idle_timeout`` (seconds without data either way before an exec stream is cut, as the kubelet's
      streaming idle timeout does; websocket pings do not count; ``exec_idle_closes`` counts the cuts).
    * faults: ``restart_apiserver(down_for)``; ``patch_deployment`` (also PATCH on the API) rolls out a new
      ReplicaSet when the template changes, as ``kubectl rollout restart`` makes it do.
    """

    def __init__(
        self,
        *,
        kubeconfig_path: str | os.PathLike[str] | None = None,
        v4_only: bool = False,
        ephemeral_containers: bool = True,
        namespace: str | None = None,
        server_prefix: str = "",
    ) -> None:
        self.id = secrets.token_hex(4)
        self.lock_name = f"{CLUSTER_PREFIX}{self.id}"
        self.workdir = WORK_ROOT / self.lock_name
        self.v4_only = v4_only
        self.ephemeral_containers_enabled = ephemeral_containers
        self.missing_executable = "runtime-error"
        self.ephemeral_start_delay = 0.2
        self.exec_idle_timeout: float | None = None  # the kubelet's streaming idle timeout (4 h by default)
        self.watch_bookmark_interval = 60.0  # how often a watch that allows bookmarks gets one, as the watch cache
        self.exec_idle_closes = 0
        self.server_prefix = server_prefix.rstrip("/")
        self.namespace = namespace or ""
        self._kubeconfig_arg = Path(kubeconfig_path) if kubeconfig_path else None
        self.kubeconfig = ""
        self.store = Store()
        self.users: dict[str, User] = {}
        self.network: Network | None = None
        self.dns: ClusterDns | None = None
        self.cgroups: Cgroups | None = None
        self.cgroups_v1 = runtimes.V1Root(f"{CGROUP_PREFIX}{self.id}.slice", self.workdir)
        self.apiserver: Any = None
        self.runtimes: dict[tuple[str, str], PodRuntime] = {}
        self._calls: list[ApiCall] = []
        self._connections = 0
        self._calls_lock = threading.Lock()
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._closed = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-pod")
        self._no_python_dir = self.workdir / "no-python" / "bin"
        self._cert_files: tuple[str, str] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        manifest: str | os.PathLike[str] | None = None,
        kubeconfig_path: str | os.PathLike[str] | None = None,
        *,
        v4_only: bool = False,
        ephemeral_containers: bool = True,
        namespace: str | None = None,
        server_prefix: str = "",
        ready_timeout: float = 30.0,
    ) -> Cluster:
        """Clean leftovers of dead runs, build network, DNS, API server and kubeconfig, apply ``manifest``
        (YAML text or a path) and return once its pods are Ready."""
        cleanup_leftovers()
        cluster = cls(
            kubeconfig_path=kubeconfig_path,
            v4_only=v4_only,
            ephemeral_containers=ephemeral_containers,
            namespace=namespace,
            server_prefix=server_prefix,
        )
        try:
            cluster._start()
            if manifest is not None:
                objects = load_manifest(manifest if isinstance(manifest, str) else Path(manifest))
                if not cluster.namespace:
                    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
                    cluster.namespace = next((n for n in namespaces if n != "default"), "default")
                    cluster._write_kubeconfig()
                cluster.apply(objects, ready_timeout=ready_timeout)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _start(self) -> None:
        from tests.sandbox.apiserver import ApiServer  # the server imports this module

        with netpod._global_lock():
            self._lock_fd = netpod._take_owner_lock(self.lock_name)
        self.workdir.mkdir(parents=True)
        (self.workdir / "logs").mkdir()
        self.network = Network.create()
        self.cgroups = Cgroups(self.id)
        self._write_state()
        self._make_no_python_dir()
        self.dns = ClusterDns(self.network.gateway, self.workdir / "dns")
        self.dns.start()
        for name, rules in (
            ("admin", ADMIN_RULES),
            ("no-exec", rules_without("pods/exec")),
            ("no-ephemeral", rules_without("pods/ephemeralcontainers")),
        ):
            self.add_user(name, rules)
        self.apiserver = ApiServer(self, hosts=("127.0.0.1", self.network.gateway))
        self.apiserver.start()
        self._write_kubeconfig()
        for ns in ("default", "kube-system", "kube-public"):
            self._put_namespace(ns)
        self.store.put(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
                "status": {"addresses": [{"type": "InternalIP", "address": self.network.gateway}]},
            }
        )
        self._refresh_dns()
        self._monitor = threading.Thread(target=self._monitor_loop, name="sandbox-monitor", daemon=True)
        self._monitor.start()

    def _write_state(self) -> None:
        """What ``cleanup_leftovers`` needs to undo this cluster if the process is SIGKILLed."""
        state = {
            "pid": os.getpid(),
            "cgroup": str(self.cgroups.root) if self.cgroups and self.cgroups.root else "",
            "cgroup_v1_mount": str(self.workdir / "cgroup-v1"),
            "kubeconfig": str(self._kubeconfig_arg or ""),
        }
        (self.workdir / "state.json").write_text(json.dumps(state))

    def _make_no_python_dir(self) -> None:
        self._no_python_dir.mkdir(parents=True)
        for tool in NO_PYTHON_TOOLS:
            found = shutil.which(tool, path=netpod.DEFAULT_PATH)
            if found:
                (self._no_python_dir / tool).symlink_to(found)

    def close(self) -> None:
        """Stop everything and remove all that was made (namespaces, processes, cgroups, files)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        errors: list[BaseException] = []
        for step in (
            lambda: self.apiserver and self.apiserver.stop(),
            lambda: self._pool.shutdown(wait=True, cancel_futures=True),  # no pod starts behind our back
            self._close_runtimes,
            lambda: self.dns and self.dns.close(),
            lambda: self.cgroups and self.cgroups.close(),
            lambda: self.cgroups_v1.close(Cgroups.kill_tree),
            lambda: self.network and self.network.close(),
        ):
            try:
                step()
            except BaseException as exc:  # keep cleaning, report the first error
                errors.append(exc)
        if self._kubeconfig_arg is not None and self.kubeconfig:
            with contextlib.suppress(OSError):
                Path(self.kubeconfig).unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)
        netpod._release_owner_lock(self.lock_name, self._lock_fd)
        self._lock_fd = None
        if errors:
            raise errors[0]

    def _close_runtimes(self) -> None:
        with self._lock:
            runtimes = list(self.runtimes.values())
            self.runtimes.clear()
        for rt in runtimes:
            with contextlib.suppress(Exception):
                self._stop_runtime(rt, grace=0)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def restart_apiserver(self, down_for: float = 1.0) -> None:
        """Stop the API server (every open connection, exec streams included, is dropped, as when the server
        process restarts), keep its port closed for ``down_for`` seconds, then serve again on the same port."""
        from tests.sandbox.apiserver import ApiServer

        old = self.apiserver
        old.stop(kill_execs=False)
        time.sleep(down_for)
        self.apiserver = ApiServer(self, hosts=old.hosts, port=old.port)
        self.apiserver.start()

    # -- what tests use ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver.port}{self.server_prefix}"

    @property
    def ca_file(self) -> str:
        assert self.network is not None
        return self.network.ca_file

    @property
    def tokens(self) -> dict[str, str]:
        return {
            name: user.token
            for name, user in self.users.items()
            if not name.startswith("system:") and name != "cert-admin"  # that one authenticates by certificate
        }

    @property
    def contexts(self) -> dict[str, str]:
        """User name → kubeconfig context name."""
        return {"admin": "sandbox", "no-exec": "sandbox-no-exec", "no-ephemeral": "sandbox-no-ephemeral"}

    @property
    def pods(self) -> dict[str, SandboxPod]:
        """Pod name → running sandbox pod (also ``namespace/name`` keys, for names used in several namespaces)."""
        with self._lock:
            out: dict[str, SandboxPod] = {}
            for (ns, name), rt in sorted(self.runtimes.items()):
                if rt.sandbox is not None:
                    out.setdefault(name, rt.sandbox)
                    out[f"{ns}/{name}"] = rt.sandbox
            return out

    def pod(self, name: str, namespace: str | None = None) -> SandboxPod:
        rt = self.runtime(name, namespace)
        if rt.sandbox is None:
            raise KeyError(f"pod {name} is not running")
        return rt.sandbox

    def runtime(self, name: str, namespace: str | None = None) -> PodRuntime:
        with self._lock:
            if namespace is not None:
                return self.runtimes[(namespace, name)]
            matches = [rt for (_ns, n), rt in self.runtimes.items() if n == name]
            if not matches:
                raise KeyError(f"no pod named {name!r}")
            return matches[0]

    def pod_names(self, namespace: str | None = None, prefix: str = "") -> list[str]:
        return [
            o["metadata"]["name"]
            for o in self.store.list("pods", namespace)
            if o["metadata"]["name"].startswith(prefix)
        ]

    def container_pid(self, pod: str, container: str | None = None, namespace: str | None = None) -> int:
        """The host pid of a container's main process (what a hostPID agent would look up)."""
        rt = self.runtime(pod, namespace)
        c = rt.container(container) if container else next(iter(rt.containers.values()))
        if c is None or c.proc is None:
            raise KeyError(f"container {container!r} of pod {pod} is not running")
        return runtimes.main_pid(c.proc.pid, c.cgroups)

    @property
    def calls(self) -> list[ApiCall]:
        with self._calls_lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()

    def record(self, call: ApiCall) -> None:
        with self._calls_lock:
            call.connections = self._connections
            self._calls.append(call)

    def count_connection(self) -> int:
        """The number of a newly accepted connection (see ApiCall.connection)."""
        with self._calls_lock:
            self._connections += 1
            return self._connections

    def add_user(self, name: str, rules: list[dict[str, Any]], namespaces: Sequence[str] | None = None) -> str:
        """A new bearer token with these RBAC PolicyRules (``namespaces`` limits them like a RoleBinding)."""
        token = f"sandbox-{name}-{secrets.token_urlsafe(24)}"
        self.users[name] = User(name, token, list(rules), tuple(namespaces) if namespaces is not None else None)
        return token

    def authenticate(self, token: str) -> User | None:
        for user in self.users.values():
            if secrets.compare_digest(user.token, token):
                return user
        return None

    def configuration(self, user: str = "admin") -> Any:
        """A ``kubernetes.client.Configuration`` for a user's context, loaded from the kubeconfig."""
        from kubernetes import client, config

        cfg = client.Configuration()
        context = self.contexts.get(user, f"sandbox-{user}")
        config.load_kube_config(config_file=self.kubeconfig, context=context, client_configuration=cfg)
        return cfg

    def set_no_python(
        self, pod: str, container: str | None = None, value: bool = True, namespace: str | None = None
    ) -> None:
        """Make (or unmake) a container one without python3 on its PATH, for execs started from now on."""
        rt = self.runtime(pod, namespace)
        for c in rt.containers.values():
            if container is None or c.name == container:
                c.no_python = value

    def set_ready(self, pod: str, ready: bool, namespace: str | None = None) -> None:
        rt = self.runtime(pod, namespace)
        rt.unready = not ready
        self._sync_pod_status(rt)
        self._refresh_dns()

    # -- kubeconfig ----------------------------------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        assert self.network is not None and self.network.ca is not None
        path = self._kubeconfig_arg or (self.workdir / "kubeconfig")
        ca_data = base64.b64encode(self.network.ca.cert_pem.bytes()).decode()
        if self._cert_files is None:
            cert = self.network.ca.issue_cert("sandbox-cert-admin", common_name="cert-admin")
            self._cert_files = (
                base64.b64encode(b"".join(b.bytes() for b in cert.cert_chain_pems)).decode(),
                base64.b64encode(cert.private_key_pem.bytes()).decode(),
            )
            self.users.setdefault("cert-admin", User("cert-admin", secrets.token_hex(32), list(ADMIN_RULES)))
        namespace = self.namespace or "default"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {"name": "sandbox", "cluster": {"server": self.base_url, "certificate-authority-data": ca_data}}
            ],
            "users": [
                *({"name": user, "user": {"token": self.users[user].token}} for user in self.contexts),
                {
                    "name": "cert-admin",
                    "user": {"client-certificate-data": self._cert_files[0], "client-key-data": self._cert_files[1]},
                },
            ],
            "contexts": [
                *(
                    {"name": ctx, "context": {"cluster": "sandbox", "user": user, "namespace": namespace}}
                    for user, ctx in self.contexts.items()
                ),
                {
                    "name": "sandbox-cert",
                    "context": {"cluster": "sandbox", "user": "cert-admin", "namespace": namespace},
                },
            ],
            "current-context": "sandbox",
        }
        import yaml

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self.kubeconfig = str(path)

    # -- applying objects ----------------------------------------------------------------------------

    def apply(self, manifest: str | os.PathLike[str] | list[dict[str, Any]], ready_timeout: float = 30.0) -> None:
        """Create the objects of a manifest (text, path or parsed list) and wait for their pods."""
        objects = manifest if isinstance(manifest, list) else load_manifest(manifest)
        self.wait_ready(self.create_objects(objects), timeout=ready_timeout)

    def create_objects(self, objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Create objects and start their pods without waiting for them to be ready, as an API server's
        create does; the pods' (namespace, name)."""
        started: list[tuple[str, str]] = []
        for obj in objects:
            obj = copy.deepcopy(obj)
            kind = obj["kind"]
            ns = obj["metadata"].get("namespace", "")
            if kind == "Namespace":
                self._put_namespace(obj["metadata"]["name"], obj)
                continue
            if ns and self.store.get("namespaces", "", ns) is None:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            if kind == "Pod":
                started.append(self.create_pod(obj, start=False))
            elif kind in ("Deployment", "StatefulSet", "DaemonSet"):
                started += self._create_workload(obj)
            elif kind == "Job":
                started += self.create_job(obj, start=False)
            else:
                if kind == "Secret" and "stringData" in obj:
                    data = dict(obj.get("data") or {})
                    data.update(
                        {k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()}
                    )
                    obj["data"] = data
                if kind == "Secret":
                    obj["type"] = obj.get("type") or "Opaque"  # the API server's default, for every Secret
                if kind == "Service":
                    obj.setdefault("spec", {}).setdefault("type", "ClusterIP")
                self.store.put(obj)
        self._refresh_dns()
        # All sandboxes first, so Service IPs exist when containers get their service-link env.
        prepared = list(self._pool.map(lambda key: self._prepare_pod(*key), started))
        self._refresh_dns()
        launched = [self._pool.submit(self._launch_pod, *key) for key, ok in zip(started, prepared) if ok]
        for future in launched:
            future.result()
        return started

    def delete_namespace(self, name: str) -> dict[str, Any]:
        """What the namespace controller does, at once: every pod stopped, every object of the namespace
        removed, then the namespace. Returns the namespace as the API answers a delete (Terminating)."""
        ns = self.store.get("namespaces", "", name)
        if ns is None:
            raise ApiError.not_found("namespaces", name)
        ns["status"] = {"phase": "Terminating"}
        ns["metadata"]["deletionTimestamp"] = now_rfc3339()
        with self._lock:
            runtimes = [self.runtimes.pop(key) for key in list(self.runtimes) if key[0] == name]
        for rt in runtimes:
            with contextlib.suppress(Exception):
                self._stop_runtime(rt, grace=0.5)
        with self.store.lock:
            keys = [key for key in self.store.objects if key[1] == name]
        for resource, namespace, obj_name in keys:
            self.store.delete(resource, namespace, obj_name)
        self.store.delete("namespaces", "", name)
        self.users.pop(f"system:serviceaccount:{name}:default", None)
        self._refresh_dns()
        return ns

    def wait_ready(self, pods: Sequence[tuple[str, str]], timeout: float = 30.0) -> None:
        """Wait until pods are Ready (pods that can never be — bad image, not-ready marker — are skipped)."""
        deadline = time.monotonic() + timeout
        pending = list(pods)
        while pending:
            if self._closed:
                raise RuntimeError("the cluster was closed")
            still = []
            for ns, name in pending:
                obj = self.store.get("pods", ns, name)
                rt = self.runtimes.get((ns, name))
                if obj is None or rt is None or rt.unready or rt.failed:
                    continue
                if any(c.bad_image for c in rt.containers.values()):
                    continue
                if obj["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                if not _is_ready(obj):
                    still.append((ns, name))
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"pods not ready after {timeout}s: {pending}")
            if pending:
                time.sleep(0.02)

    def _put_namespace(self, name: str, obj: dict[str, Any] | None = None) -> None:
        obj = copy.deepcopy(obj) if obj else {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        if self.store.get("namespaces", "", name) is None:
            self.store.put(obj)
            self.store.put(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}
            )
            sa_name = f"system:serviceaccount:{name}:default"
            self.users[sa_name] = User(sa_name, secrets.token_urlsafe(32), [], groups=("system:serviceaccounts",))

    def _create_workload(self, obj: dict[str, Any]) -> list[tuple[str, str]]:
        kind = obj["kind"]
        meta = obj["metadata"]
        spec = obj.setdefault("spec", {})
        name = meta["name"]
        template = spec["template"]
        replicas = 1 if kind == "DaemonSet" else int(spec.get("replicas", 1))
        obj["metadata"]["generation"] = 1
        stored = self.store.put(obj)
        pods: list[tuple[str, str]] = []
        if kind == "Deployment":
            pods.extend(self._new_replicaset(stored, 1))
        elif kind == "StatefulSet":
            revision = f"{name}-{template_hash(template)}"
            for index in range(replicas):
                pod_name = f"{name}-{index}"
                extra = {
                    "controller-revision-hash": revision,
                    "statefulset.kubernetes.io/pod-name": pod_name,
                    "apps.kubernetes.io/pod-index": str(index),
                }
                pods.append(
                    self._pod_from_template(
                        stored, template, pod_name, extra, hostname=pod_name, subdomain=spec.get("serviceName")
                    )
                )
        else:  # DaemonSet: one node, one pod
            extra = {"controller-revision-hash": template_hash(template), "pod-template-generation": "1"}
            pods.append(self._pod_from_template(stored, template, f"{name}-{random_suffix()}", extra))
        return pods

    def _new_replicaset(self, deployment: dict[str, Any], revision: int) -> list[tuple[str, str]]:
        """The Deployment controller's ReplicaSet for the deployment's current template, and its (unstarted)
        pods: named ``<deployment>-<pod-template-hash>``, labelled with the hash, one revision up."""
        spec = deployment["spec"]
        name, ns = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
        replicas = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec["template"])
        rs_template = copy.deepcopy(spec["template"])
        rs_template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        rs_selector = copy.deepcopy(spec["selector"])
        rs_selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        rs = self.store.put(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{pod_hash}",
                    "namespace": ns,
                    "labels": dict(rs_template["metadata"]["labels"]),
                    "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                    "ownerReferences": [owner_reference(deployment)],
                    "generation": 1,
                },
                "spec": {"replicas": replicas, "selector": rs_selector, "template": rs_template},
                "status": {"replicas": 0},
            }
        )
        return [
            self._pod_from_template(rs, rs_template, f"{rs['metadata']['name']}-{random_suffix()}")
            for _ in range(replicas)
        ]

    def patch_deployment(self, ns: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch of a Deployment. A changed pod template starts a rollout in the background, as the
        Deployment controller does (``kubectl rollout restart`` patches a template annotation)."""
        current = self.store.get("deployments", ns, name)
        if current is None:
            raise ApiError.not_found("deployments", name, "apps")
        before = template_hash(current["spec"]["template"])

        def change(obj: dict[str, Any]) -> None:
            _merge_patch(obj, {k: v for k, v in patch.items() if k in ("metadata", "spec")})
            obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1

        updated = self.store.update("deployments", ns, name, change) or current
        if template_hash(updated["spec"]["template"]) != before:
            self._pool.submit(self._roll_out, ns, name)
        return updated

    def _roll_out(self, ns: str, name: str, ready_timeout: float = 60.0) -> None:
        """RollingUpdate with the defaults (maxSurge 25% rounded up, maxUnavailable 25% rounded down): for the
        small deployments of tests, the new pods start and become Ready first, then the old ones are deleted."""
        deployment = self.store.get("deployments", ns, name)
        if deployment is None:
            return
        uid = deployment["metadata"]["uid"]
        old = [
            rs
            for rs in self.store.list("replicasets", ns)
            if any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])
        ]
        revision = 1 + max(
            (int(rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", 1)) for rs in old),
            default=0,
        )
        new_pods = self._new_replicaset(deployment, revision)
        for key in new_pods:
            self._start_pod(*key)
        try:
            self.wait_ready(new_pods, timeout=ready_timeout)
        except (TimeoutError, RuntimeError):
            return  # a rollout that does not progress leaves the old pods serving, as Kubernetes does
        for rs in old:
            rs_name = rs["metadata"]["name"]
            self.store.update("replicasets", ns, rs_name, lambda o: o["spec"].__setitem__("replicas", 0))
            rs_uid = rs["metadata"]["uid"]
            for pod in self.store.list("pods", ns):
                owners = pod["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == rs_uid for r in owners) and not pod["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.delete_pod(ns, pod["metadata"]["name"])
        self._sync_owners()

    def _pod_from_template(
        self,
        owner: dict[str, Any],
        template: dict[str, Any],
        name: str,
        extra_labels: Mapping[str, str] | None = None,
        hostname: str | None = None,
        subdomain: str | None = None,
    ) -> tuple[str, str]:
        tmeta = template.get("metadata") or {}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": name.rsplit("-", 1)[0] + "-",
                "namespace": owner["metadata"]["namespace"],
                "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": copy.deepcopy(template["spec"]),
        }
        if hostname:
            pod["spec"]["hostname"] = hostname
        if subdomain:
            pod["spec"]["subdomain"] = subdomain
        return self.create_pod(pod, start=False)

    def create_pod(self, obj: dict[str, Any], start: bool = True) -> tuple[str, str]:
        """Store a new pod (Pending) and start it (in the background unless ``start`` is False)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = meta.setdefault("namespace", "default")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError.invalid("Pod", "", "metadata.name: Required value: name or generateName is required")
            meta["name"] = f"{meta['generateName']}{random_suffix()}"
        name = meta["name"]
        if self.store.get("pods", ns, name) is not None:
            raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists', {"name": name, "kind": "pods"})
        spec = obj.setdefault("spec", {})
        containers = spec.get("containers") or []
        if not containers:
            raise ApiError.invalid("Pod", name, "spec.containers: Required value")
        meta.setdefault("labels", {})
        meta.setdefault("annotations", {})
        _pod_defaults(spec)
        admission.admit_pod(self.store, obj)  # Pod Security and quotas, as the API server refuses pods
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        obj["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
            "qosClass": "BestEffort",
        }
        with self._lock:
            rt = PodRuntime(ns, name, meta["uid"], host=bool(spec.get("hostNetwork") or spec.get("hostPID")))
            self.runtimes[(ns, name)] = rt
        self.store.put(obj)
        if start:
            self._pool.submit(self._start_pod, ns, name)
        return ns, name

    def create_job(self, obj: dict[str, Any], start: bool = True) -> list[tuple[str, str]]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = meta.setdefault("namespace", "default")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError.invalid("Job", "", "metadata.name: Required value: name or generateName is required")
            meta["name"] = f"{meta['generateName']}{random_suffix()}"
        name = meta["name"]
        if self.store.get("jobs", ns, name) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                {"name": name, "group": "batch", "kind": "jobs"},
            )
        spec = obj.setdefault("spec", {})
        template = spec.get("template") or {}
        restart = (template.get("spec") or {}).get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            raise ApiError.invalid(
                "Job",
                name,
                "spec.template.spec.restartPolicy: Required value: "
                f'valid values: "OnFailure", "Never" (got {restart!r})',
            )
        uid = new_uid()
        meta["uid"] = uid
        job_labels = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        template.setdefault("metadata", {}).setdefault("labels", {}).update(job_labels)
        obj["status"] = {"active": 1, "startTime": now_rfc3339(), "ready": 0}
        stored = self.store.put(obj)
        try:
            pod = self._pod_from_template(stored, template, f"{name}-{random_suffix()}")
        except ApiError as exc:
            if exc.code != 403:
                raise
            # As the Job controller: no pod, a FailedCreate event on the Job, the Job itself stays.
            admission.failed_create(self.store, stored, exc)
            self.store.update("jobs", ns, name, lambda o: o["status"].update(active=0))
            return []
        if start:
            self._pool.submit(self._start_pod, *pod)
        return [pod]

    # -- pods: start, stop, status -------------------------------------------------------------------

    def _start_pod(self, ns: str, name: str) -> None:
        if self._prepare_pod(ns, name):
            self._refresh_dns()
            self._launch_pod(ns, name)

    def _prepare_pod(self, ns: str, name: str) -> bool:
        """Phase 1: the pod sandbox and its IP (Service IPs and env of later pods depend on it)."""
        with self._lock:
            rt = self.runtimes.get((ns, name))
        obj = self.store.get("pods", ns, name)
        if rt is None or obj is None or rt.deleting or self._closed:
            return False
        try:
            self._make_sandbox(rt, obj)
        except Exception as exc:  # surfaces in the pod status, like a kubelet would
            rt.failed = f"sandbox could not start the pod: {exc}"
            self._sync_pod_status(rt)
            return False
        return True

    def _launch_pod(self, ns: str, name: str) -> None:
        """Phase 2: the containers, with the env kubelet gives them (incl. the namespace's Service links)."""
        with self._lock:
            rt = self.runtimes.get((ns, name))
        obj = self.store.get("pods", ns, name)
        if rt is None or obj is None or rt.deleting or rt.failed:
            return
        try:
            self._start_containers(rt, obj)
        except Exception as exc:
            rt.failed = f"sandbox could not start the containers: {exc}"
        self._sync_pod_status(rt)
        self._refresh_dns()

    def _make_sandbox(self, rt: PodRuntime, obj: dict[str, Any]) -> None:
        assert self.network is not None
        spec = obj["spec"]
        meta = obj["metadata"]
        annotations = meta.get("annotations") or {}
        rt.unready = annotations.get(READY_ANNOTATION, "").lower() == "false"
        no_python = annotations.get(NO_PYTHON_ANNOTATION, "").strip()
        no_python_names = None if no_python.lower() in ("true", "") else {n.strip() for n in no_python.split(",")}
        hostname = (spec.get("hostname") or meta["name"])[:63]
        ip = self.network.gateway if rt.host else ""
        files: dict[str, netpod.FileContent] = {}
        try:
            files.update(self._volume_files(rt.namespace, spec))
        except ApiError as exc:
            rt.config_error = exc.message
        if spec.get("automountServiceAccountToken") is not False:  # as the kubelet: no token volume when off
            sa = spec.get("serviceAccountName") or "default"
            sa_user = self.users.get(f"system:serviceaccount:{rt.namespace}:{sa}")
            files[f"{SA_DIR}/token"] = sa_user.token if sa_user else ""
            files[f"{SA_DIR}/namespace"] = rt.namespace
            files[f"{SA_DIR}/ca.crt"] = Path(self.ca_file).read_text()
        files["/etc/resolv.conf"] = (
            f"search {rt.namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            f"nameserver {self.network.gateway}\noptions ndots:5\n"
        )
        hosts = {h: a["ip"] for a in spec.get("hostAliases") or [] for h in a.get("hostnames") or []}
        layout = runtimes.layout_of(annotations)
        for cspec in spec["containers"]:
            c = Container(cspec["name"], copy.deepcopy(cspec), pod_security=dict(spec.get("securityContext") or {}),
                          layout=layout)
            c.image_root = images.wants_own_root(c.image, False, meta.get("labels") or {})
            c.no_python = c.name in no_python_names if no_python_names is not None else bool(no_python)
            rt.containers[c.name] = c
        if rt.host:
            rt.ip = ip
            rt.sandbox = HostPod(meta["name"], ip, {"PATH": netpod.DEFAULT_PATH})
        else:
            # The pod IP is known only once netpod allocates it; env that needs it is filled in after.
            pod_spec = PodSpec(
                name=_netpod_name(meta["name"]),
                env={},
                hosts=hosts,
                hostname=hostname,
                files=files,
                servers=False,
            )
            sandbox = self.network.add_pod(pod_spec)
            rt.sandbox = sandbox
            rt.ip = sandbox.ip
            if spec.get("subdomain"):
                # The FQDN line kubelet writes for pods with hostname+subdomain.
                fqdn = f"{hostname}.{spec['subdomain']}.{rt.namespace}.svc.{CLUSTER_DOMAIN}"
                hosts_path = f"/proc/{sandbox.pid}/root/etc/hosts"
                with contextlib.suppress(OSError), open(hosts_path, "a") as fh:
                    fh.write(f"{sandbox.ip}\t{fqdn}\t{hostname}\n")
        gateway = self.network.gateway
        self.store.update("pods", rt.namespace, rt.name, lambda o: _set_ips(o, rt.ip, gateway))

    def _start_containers(self, rt: PodRuntime, obj: dict[str, Any]) -> None:
        service_env = self._service_env(rt.namespace, obj["spec"].get("enableServiceLinks", True))
        config_error = rt.config_error
        for c in rt.containers.values():
            try:
                c.env = self._container_env(rt, obj, c.spec, service_env)
            except ApiError as exc:
                c.reason, c.message = "CreateContainerConfigError", exc.message
                continue
            if config_error:
                c.reason, c.message = "ContainerCreating", config_error
                continue
            if c is next(iter(rt.containers.values())) and rt.sandbox is not None:
                rt.sandbox.env = dict(c.env)  # what Pod.run uses by default: the first container's
            self._start_container(rt, c)
            port = _probe_port(c.spec)
            if port:
                rt.probes[c.name] = (port, 0.0)
            elif c.state == "running":
                c.ready = True

    def _start_container(self, rt: PodRuntime, c: Container) -> None:
        assert rt.sandbox is not None and self.cgroups is not None
        if c.bad_image:
            c.state, c.reason = "waiting", "ErrImagePull"
            c.message = (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{c.image}": '
                f"failed to resolve reference: {c.image}: not found"
            )
            return
        command = list(c.spec.get("command") or [])
        args = list(c.spec.get("args") or [])
        c.argv = [*command, *args] if command else (args or list(DEFAULT_COMMAND))
        c.argv = [_expand(a, c.env) for a in c.argv]
        c.cwd = c.spec.get("workingDir") or None
        if c.cgroups is None:
            c.cgroups = runtimes.place(self.cgroups.root, self.cgroups_v1, c.layout, rt.uid, c.id)
        log_path = self.log_path(rt.namespace, rt.name, c.name)
        log = open(log_path, "ab")
        if c.console is not None:
            c.console.close()
        # A container with ``stdin: true`` keeps its stdin (and terminal) for pods/attach.
        c.console = attach.Console(c.spec, log_path) if c.spec.get("stdin") else None
        streams = (
            c.console.popen_streams(log)
            if c.console is not None
            else {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT}
        )
        try:
            if c.image_root is not None:
                argv = images.start_argv(c.image_root, rt.sandbox.pid, self.workdir / "roots" / c.id,
                                         [*_security_wrapper(c), *c.argv], c.cwd)
                c.proc = images.popen(rt.sandbox, [*(c.cgroups.start_prefix() if c.cgroups else []), *argv],
                                      self._exec_env(c), **streams)
            else:
                c.proc = rt.sandbox.run(
                    [*_security_wrapper(c), *c.argv],
                    env=self._exec_env(c),
                    cwd=c.cwd,
                    prefix=c.cgroups.start_prefix() if c.cgroups else [],
                    **streams,
                )
        finally:
            log.close()
        if c.console is not None:
            c.console.started(c.proc)
        _wait_entered(c.proc, rt, c)
        c.state, c.reason, c.message = "running", "", ""
        c.started_at = now_rfc3339()
        c.exit_code = None

    def _exec_env(self, c: Container) -> dict[str, str]:
        env = dict(c.env)
        if c.no_python:
            env["PATH"] = str(self._no_python_dir)
        return env

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.workdir / "logs" / f"{namespace}_{pod}_{container}.log"

    def _stop_runtime(self, rt: PodRuntime, grace: float = 1.0) -> None:
        containers = [*rt.containers.values(), *rt.ephemeral.values()]
        for c in containers:
            if c.proc is not None and c.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in containers:
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        if rt.sandbox is not None:
            rt.sandbox.close()
        for c in containers:
            runtimes.remove(c.cgroups, Cgroups.kill_tree)
            if c.proc is not None:
                with contextlib.suppress(Exception):
                    c.proc.kill()
                    c.proc.wait(timeout=5)
            if c.console is not None:
                c.console.close()

    def delete_pod(self, ns: str, name: str, grace: float | None = None) -> dict[str, Any]:
        """Mark the pod terminating now; stop it and remove the object in the background."""
        obj = self.store.get("pods", ns, name)
        if obj is None:
            raise ApiError.not_found("pods", name)
        period = int(obj["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace)

        def mark(o: dict[str, Any]) -> None:
            o["metadata"]["deletionTimestamp"] = now_rfc3339()
            o["metadata"]["deletionGracePeriodSeconds"] = period

        marked = self.store.update("pods", ns, name, mark) or obj
        with self._lock:
            rt = self.runtimes.get((ns, name))
            if rt is not None:
                rt.deleting = True
        self._pool.submit(self._finish_delete, ns, name, min(float(period), 2.0))
        return marked

    def _finish_delete(self, ns: str, name: str, grace: float) -> None:
        with self._lock:
            rt = self.runtimes.pop((ns, name), None)
        if rt is not None:
            with contextlib.suppress(Exception):
                self._stop_runtime(rt, grace=grace)
        gone = self.store.delete("pods", ns, name)
        self._refresh_dns()
        if gone is not None and not self._closed:
            self._replace(gone)
        self._sync_owners()

    def _replace(self, gone: dict[str, Any]) -> None:
        """What the ReplicaSet/StatefulSet/DaemonSet controllers do when one of their pods is deleted: a new
        pod (a new name, except for a StatefulSet) — so tests can check that clients follow the new one."""
        ns = gone["metadata"]["namespace"]
        for ref in gone["metadata"].get("ownerReferences") or []:
            if not ref.get("controller") or ref.get("kind") not in ("ReplicaSet", "StatefulSet", "DaemonSet"):
                continue
            resource = {"ReplicaSet": "replicasets", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}
            owner = self.store.get(resource[ref["kind"]], ns, ref["name"])
            if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
                continue
            template = owner["spec"]["template"]
            labels = gone["metadata"].get("labels") or {}
            if ref["kind"] == "StatefulSet":
                name = gone["metadata"]["name"]
                extra = {k: v for k, v in labels.items() if k not in (template.get("metadata") or {}).get("labels", {})}
                spec = gone["spec"]
                key = self._pod_from_template(owner, template, name, extra, spec.get("hostname"), spec.get("subdomain"))
            elif ref["kind"] == "ReplicaSet":
                live = [
                    p
                    for p in self.store.list("pods", ns)
                    if any(r.get("uid") == ref.get("uid") for r in p["metadata"].get("ownerReferences") or [])
                    and not p["metadata"].get("deletionTimestamp")
                ]
                if len(live) >= int(owner["spec"].get("replicas", 1)):
                    continue  # scaled down (an old ReplicaSet after a rollout): nothing to replace
                key = self._pod_from_template(owner, template, f"{ref['name']}-{random_suffix()}")
            else:
                extra = {k: labels[k] for k in ("controller-revision-hash", "pod-template-generation") if k in labels}
                key = self._pod_from_template(owner, template, f"{ref['name']}-{random_suffix()}", extra)
            self._pool.submit(self._start_pod, *key)

    def delete_job(self, ns: str, name: str, propagation: str | None) -> dict[str, Any]:
        """Delete a Job; its pods go too only with Background/Foreground propagation (batch/v1 orphans them
        by default, which is why clients must ask for propagation explicitly)."""
        job = self.store.get("jobs", ns, name)
        if job is None:
            raise ApiError.not_found("jobs", name, "batch")
        uid = job["metadata"]["uid"]
        for pod in self.store.list("pods", ns):
            owners = pod["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid for o in owners):
                continue
            if propagation in ("Background", "Foreground"):
                self.delete_pod(ns, pod["metadata"]["name"])
            else:
                self.store.update(
                    "pods",
                    ns,
                    pod["metadata"]["name"],
                    lambda o: o["metadata"].update(
                        ownerReferences=[r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                    ),
                )
        return self.store.delete("jobs", ns, name) or job

    def _sync_pod_status(self, rt: PodRuntime) -> None:
        def change(obj: dict[str, Any]) -> None:
            obj["status"] = _pod_status(rt, obj)

        if self.store.get("pods", rt.namespace, rt.name) is not None and not rt.deleting:
            self.store.update("pods", rt.namespace, rt.name, change)
            self._sync_owners()

    def _sync_owners(self) -> None:
        """Workload status (replicas, ready, active/succeeded) from their pods, as controllers report it."""
        pods = self.store.list("pods")
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            for ref in pod["metadata"].get("ownerReferences") or []:
                by_owner.setdefault(ref["uid"], []).append(pod)
        for resource in ("replicasets", "statefulsets", "daemonsets", "jobs", "deployments"):
            for obj in self.store.list(resource):
                uid = obj["metadata"]["uid"]
                if resource == "deployments":
                    owned = [
                        p
                        for rs in self.store.list("replicasets", obj["metadata"]["namespace"])
                        if any(r["uid"] == uid for r in rs["metadata"].get("ownerReferences") or [])
                        for p in by_owner.get(rs["metadata"]["uid"], [])
                    ]
                else:
                    owned = by_owner.get(uid, [])
                live = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
                ready = sum(1 for p in live if _is_ready(p))
                status: dict[str, Any]
                if resource == "jobs":
                    succeeded = sum(1 for p in owned if p["status"].get("phase") == "Succeeded")
                    failed = sum(1 for p in owned if p["status"].get("phase") == "Failed")
                    active = sum(1 for p in live if p["status"].get("phase") in ("Pending", "Running"))
                    status = dict(obj.get("status") or {})
                    status.update(active=active, ready=ready)
                    if succeeded:
                        status["succeeded"] = succeeded
                        status.setdefault("completionTime", now_rfc3339())
                        status["conditions"] = [{"type": "Complete", "status": "True"}]
                    if failed:
                        status["failed"] = failed
                    if not active:
                        status.pop("active")
                elif resource == "daemonsets":
                    status = {
                        "currentNumberScheduled": len(live),
                        "desiredNumberScheduled": 1,
                        "numberReady": ready,
                        "numberAvailable": ready,
                        "numberMisscheduled": 0,
                        "updatedNumberScheduled": len(live),
                        "observedGeneration": 1,
                    }
                else:
                    status = {
                        "replicas": len(live),
                        "readyReplicas": ready,
                        "availableReplicas": ready,
                        "observedGeneration": 1,
                    }
                    if resource in ("deployments", "statefulsets"):
                        status["updatedReplicas"] = len(live)
                    if resource == "deployments":
                        # What ``kubectl rollout status`` reads: the generation the controller has seen, and how
                        # many pods run the current template (the rest are the old ReplicaSets' until deleted).
                        status["observedGeneration"] = int(obj["metadata"].get("generation", 1))
                        current = template_hash(obj["spec"]["template"])
                        labels = [p["metadata"].get("labels") or {} for p in live]
                        status["updatedReplicas"] = sum(1 for lab in labels if lab.get("pod-template-hash") == current)
                        want = int(obj["spec"].get("replicas", 1))
                        status["conditions"] = [
                            {
                                "type": "Available",
                                "status": "True" if ready >= want else "False",
                                "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
                            },
                        ]
                    if resource == "statefulsets":
                        status["currentReplicas"] = len(live)
                    for key in ("readyReplicas", "availableReplicas"):
                        if not status[key]:
                            del status[key]
                self.store.update(
                    resource,
                    obj["metadata"]["namespace"],
                    obj["metadata"]["name"],
                    lambda o, s=status: o.__setitem__("status", s),
                )

    def _monitor_loop(self) -> None:
        """The kubelet's part: notice exits, restart per restartPolicy, run readiness probes, start ephemerals."""
        while not self._stop.wait(0.05):
            with self._lock:
                runtimes = list(self.runtimes.values())
            for rt in runtimes:
                if rt.deleting or rt.sandbox is None:
                    continue
                try:
                    if self._tick(rt):
                        self._sync_pod_status(rt)
                        self._refresh_dns()
                except Exception:  # a pod closing under us; the next tick settles it
                    continue

    def _tick(self, rt: PodRuntime) -> bool:
        changed = False
        obj = self.store.get("pods", rt.namespace, rt.name)
        if obj is None:
            return False
        policy = obj["spec"].get("restartPolicy", "Always")
        now = time.monotonic()
        for c in [*rt.containers.values(), *rt.ephemeral.values()]:
            if c.ephemeral and c.state == "waiting" and now >= c.start_after:
                field_path = kubelet_events.container_field(c.name, True)
                if c.bad_image:
                    if c.reason == "ContainerCreating":
                        kubelet_events.failed(self.store, obj, field_path, c.image, "not found")
                    if c.reason != "ImagePullBackOff":
                        c.reason = "ErrImagePull" if c.reason != "ErrImagePull" else "ImagePullBackOff"
                        c.message = (
                            f'rpc error: code = NotFound desc = failed to pull and unpack image "{c.image}": not found'
                            if c.reason == "ErrImagePull"
                            else f'Back-off pulling image "{c.image}"'
                        )
                        c.start_after = now + 0.3
                        changed = True
                else:
                    kubelet_events.pulled(self.store, obj, field_path, c.image, self.ephemeral_start_delay)
                    self._start_container(rt, c)
                    changed = True
            elif c.state == "waiting" and c.reason == "CrashLoopBackOff" and now >= c.start_after:
                self._start_container(rt, c)
                if c.name in rt.probes:
                    rt.probes[c.name] = (rt.probes[c.name][0], 0.0)
                else:
                    c.ready = c.state == "running"
                changed = True
            if c.state == "running" and c.proc is not None and c.proc.poll() is not None:
                code = c.proc.returncode
                c.exit_code = 128 - code if code < 0 else code
                c.finished_at = now_rfc3339()
                c.ready = False
                restart = not c.ephemeral and (policy == "Always" or (policy == "OnFailure" and c.exit_code != 0))
                if restart:
                    # Restarted after a doubling back-off, as kubelet does (shorter: tests must not wait).
                    c.state = "terminated"
                    c.last_state = {"terminated": c.status()["state"]["terminated"]}
                    c.restart_count += 1
                    delay = min(0.1 * 2 ** (c.restart_count - 1), 5.0)
                    c.state, c.reason = "waiting", "CrashLoopBackOff"
                    c.message = f"back-off {delay:g}s restarting failed container={c.name} pod={rt.name}"
                    c.start_after = now + delay
                else:
                    c.state = "terminated"
                changed = True
        for name, (port, next_try) in list(rt.probes.items()):
            c = rt.containers.get(name)
            if c is None or c.ready or c.state != "running" or now < next_try:
                continue
            try:
                with socket.create_connection((rt.ip, port), timeout=0.2):
                    c.ready = True
                    changed = True
            except OSError:
                rt.probes[name] = (port, now + 0.1)
        return changed

    def _close_quietly(self, rt: PodRuntime) -> None:
        with contextlib.suppress(Exception):
            self._stop_runtime(rt, grace=0)

    # -- env and files -------------------------------------------------------------------------------

    def _service_env(self, ns: str, links: bool) -> dict[str, str]:
        assert self.network is not None and self.apiserver is not None
        env = {
            "KUBERNETES_SERVICE_HOST": self.network.gateway,
            "KUBERNETES_SERVICE_PORT": str(self.apiserver.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.apiserver.port),
            "KUBERNETES_PORT": f"tcp://{self.network.gateway}:{self.apiserver.port}",
            f"KUBERNETES_PORT_{self.apiserver.port}_TCP": f"tcp://{self.network.gateway}:{self.apiserver.port}",
            f"KUBERNETES_PORT_{self.apiserver.port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{self.apiserver.port}_TCP_PORT": str(self.apiserver.port),
            f"KUBERNETES_PORT_{self.apiserver.port}_TCP_ADDR": self.network.gateway,
        }
        if not links:
            return env
        for svc in self.store.list("services", ns):
            ip = (svc.get("spec") or {}).get("clusterIP")
            ports = (svc.get("spec") or {}).get("ports") or []
            if not ip or ip == "None" or not ports:
                continue
            prefix = svc["metadata"]["name"].upper().replace("-", "_")
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{prefix}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{ip}:{ports[0]['port']}"
            for port in ports:
                proto = port.get("protocol", "TCP")
                if port.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
                base = f"{prefix}_PORT_{port['port']}_{proto}"
                env[base] = f"{proto.lower()}://{ip}:{port['port']}"
                env[f"{base}_PROTO"] = proto.lower()
                env[f"{base}_PORT"] = str(port["port"])
                env[f"{base}_ADDR"] = ip
        return env

    def _lookup(self, kind: str, ns: str, name: str, key: str | None, optional: bool) -> dict[str, str] | str | None:
        resource = "configmaps" if kind == "configmap" else "secrets"
        obj = self.store.get(resource, ns, name)
        if obj is None:
            if optional:
                return None
            raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
        data: dict[str, str]
        if resource == "secrets":
            data = {k: v.decode(errors="replace") for k, v in decode_secret_data(obj).items()}
        else:
            data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
        if key is None:
            return data
        if key not in data:
            if optional:
                return None
            raise ApiError(404, "NotFound", f"couldn't find key {key} in {kind.capitalize()} {ns}/{name}")
        return data[key]

    def _container_env(
        self, rt: PodRuntime, pod: Mapping[str, Any], cspec: Mapping[str, Any], service_env: Mapping[str, str]
    ) -> dict[str, str]:
        """The container environment as kubelet builds it: PATH/HOSTNAME/HOME, service links, envFrom, env."""
        env: dict[str, str] = {"PATH": netpod.DEFAULT_PATH, "HOSTNAME": (pod["spec"].get("hostname") or rt.name)[:63]}
        env.update(service_env)
        for source in cspec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref_key in (("configmap", "configMapRef"), ("secret", "secretRef")):
                ref = source.get(ref_key)
                if ref:
                    data = self._lookup(kind, rt.namespace, ref["name"], None, bool(ref.get("optional")))
                    if isinstance(data, dict):
                        env.update({f"{prefix}{k}": v for k, v in data.items()})
        for item in cspec.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
                continue
            source = item.get("valueFrom") or {}
            value: Any = ""
            if "configMapKeyRef" in source or "secretKeyRef" in source:
                kind = "configmap" if "configMapKeyRef" in source else "secret"
                ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
                value = self._lookup(kind, rt.namespace, ref["name"], ref["key"], bool(ref.get("optional")))
                if value is None:
                    continue
            elif "fieldRef" in source:
                value = _field_ref(pod, source["fieldRef"]["fieldPath"], rt)
            elif "resourceFieldRef" in source:
                value = "0"
            env[name] = str(value)
        env.setdefault("HOME", "/root")
        return env

    def _volume_files(self, ns: str, spec: Mapping[str, Any]) -> dict[str, netpod.FileContent]:
        """ConfigMap and Secret volumes as files at their mountPaths (keys, or ``items`` key→path)."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        files: dict[str, netpod.FileContent] = {}
        for cspec in spec.get("containers") or []:
            for mount in cspec.get("volumeMounts") or []:
                vol = volumes.get(mount.get("name"))
                if vol is None:
                    continue
                data: dict[str, bytes] | None = None
                source: Mapping[str, Any] = {}
                if "configMap" in vol:
                    source = vol["configMap"]
                    obj = self.store.get("configmaps", ns, source.get("name", ""))
                    if obj is None:
                        if source.get("optional"):
                            continue
                        raise ApiError(404, "NotFound", f'configmap "{source.get("name")}" not found')
                    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
                    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
                elif "secret" in vol:
                    source = vol["secret"]
                    obj = self.store.get("secrets", ns, source.get("secretName", ""))
                    if obj is None:
                        if source.get("optional"):
                            continue
                        raise ApiError(404, "NotFound", f'secret "{source.get("secretName")}" not found')
                    data = decode_secret_data(obj)
                if data is None:
                    continue
                items = source.get("items")
                paths = {i["path"]: data[i["key"]] for i in items if i["key"] in data} if items else data
                mount_path = mount["mountPath"].rstrip("/")
                sub = mount.get("subPath")
                if sub:
                    if sub in paths:
                        files[mount_path] = paths[sub]
                    continue
                for rel, content in paths.items():
                    files[f"{mount_path}/{rel}"] = content
        return files

    # -- DNS and endpoints ---------------------------------------------------------------------------

    def _refresh_dns(self) -> None:
        """Recompute Service ClusterIPs, Endpoints and DNS records from the ready pods."""
        if self.dns is None or self.network is None or self._closed:
            return
        with self._lock:
            records: dict[str, list[str]] = {f"kubernetes.default.svc.{CLUSTER_DOMAIN}": [self.network.gateway]}
            pods = [p for p in self.store.list("pods") if p["status"].get("podIP")]
            pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
            for pod in pods:
                ns = pod["metadata"]["namespace"]
                if not pod["spec"].get("hostNetwork") and not pod["spec"].get("hostPID"):
                    ip = pod["status"]["podIP"]
                    records[f"{ip.replace('.', '-')}.{ns}.pod.{CLUSTER_DOMAIN}"] = [ip]
            for svc in self.store.list("services"):
                ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
                spec = svc.get("spec") or {}
                headless = spec.get("clusterIP") == "None"
                selector = spec.get("selector")
                backing = [
                    p
                    for p in pods
                    if selector
                    and p["metadata"]["namespace"] == ns
                    and selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {})
                ]
                ready = [p for p in backing if _is_ready(p) and not p["metadata"].get("deletionTimestamp")]
                ips = [p["status"]["podIP"] for p in ready]
                fqdn = f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"
                if headless:
                    records[fqdn] = ips
                    for p in ready:
                        if p["spec"].get("subdomain") == name:
                            host = p["spec"].get("hostname") or p["metadata"]["name"]
                            records[f"{host}.{fqdn}"] = [p["status"]["podIP"]]
                else:
                    # Stable while its pod is ready; else the first ready pod; else any pod with an IP.
                    live = [p["status"]["podIP"] for p in backing if not p["metadata"].get("deletionTimestamp")]
                    current = spec.get("clusterIP", "")
                    if current in ips or (not ips and current in live):
                        cluster_ip = current
                    else:
                        cluster_ip = (ips or live or [""])[0]
                    if cluster_ip and cluster_ip != spec.get("clusterIP"):
                        self.store.update("services", ns, name, lambda o, ip=cluster_ip: _set_cluster_ip(o, ip))
                    if cluster_ip:
                        records[fqdn] = [cluster_ip]
                endpoints = {
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": dict(svc["metadata"].get("labels") or {})},
                    "subsets": [
                        {
                            "addresses": [
                                {
                                    "ip": p["status"]["podIP"],
                                    "nodeName": NODE_NAME,
                                    "targetRef": {
                                        "kind": "Pod",
                                        "name": p["metadata"]["name"],
                                        "namespace": ns,
                                        "uid": p["metadata"]["uid"],
                                    },
                                }
                                for p in ready
                            ],
                            "ports": [
                                {
                                    "name": pt.get("name", ""),
                                    "port": int(pt.get("targetPort", pt["port"]))
                                    if str(pt.get("targetPort", pt["port"])).isdigit()
                                    else pt["port"],
                                    "protocol": pt.get("protocol", "TCP"),
                                }
                                for pt in spec.get("ports") or []
                            ],
                        }
                    ]
                    if ready
                    else [],
                }
                existing = self.store.get("endpoints", ns, name)
                if existing is None or existing.get("subsets") != endpoints["subsets"]:
                    self.store.put(endpoints)
        self.dns.update(records)

    # -- exec and ephemeral containers ---------------------------------------------------------------

    def resolve_container(self, ns: str, pod_name: str, container: str) -> tuple[dict[str, Any], str]:
        """The API server's checks before an exec: pod exists, container named or unambiguous and valid."""
        pod = self.store.get("pods", ns, pod_name)
        if pod is None:
            raise ApiError.not_found("pods", pod_name)
        containers = [c["name"] for c in pod["spec"].get("containers") or []]
        init = [c["name"] for c in pod["spec"].get("initContainers") or []]
        ephemeral = [c["name"] for c in pod["spec"].get("ephemeralContainers") or []]
        if not container:
            if len(containers) == 1:
                container = containers[0]
            else:
                message = (
                    f"a container name must be specified for pod {pod_name}, choose one of: [{' '.join(containers)}]"
                )
                if init:
                    message += f" or one of the init containers: [{' '.join(init)}]"
                if ephemeral:
                    message += f" or one of the ephemeral containers: [{' '.join(ephemeral)}]"
                raise ApiError.bad_request(message)
        if container not in containers + init + ephemeral:
            raise ApiError.bad_request(f"container {container} is not valid for pod {pod_name}")
        if not pod["spec"].get("nodeName"):
            raise ApiError.bad_request(f"pod {pod_name} does not have a host assigned")
        return pod, container

    def plan_exec(self, ns: str, pod_name: str, container: str, argv: Sequence[str], check: bool = True) -> ExecPlan:
        """How to start ``argv`` in the container; raises :class:`ExecProblem` as the runtime would."""
        with self._lock:
            rt = self.runtimes.get((ns, pod_name))
        c = rt.container(container) if rt else None
        if rt is None or rt.sandbox is None or c is None or c.state != "running" or rt.deleting:
            raise ExecProblem(f'container not found ("{container}")')
        if not argv:
            raise ExecProblem("command must not be empty")
        env = self._exec_env(c)
        own_pid = runtimes.main_pid(c.proc.pid, c.cgroups) if c.image_root is not None and c.proc else 0
        if check and self.missing_executable == "runtime-error" and not self._find_executable(
            rt, env, argv[0], c.cwd, own_pid
        ):
            raise ExecProblem(
                f"error executing command in container: failed to exec in container: failed to start exec "
                f'"{secrets.token_hex(32)}": OCI runtime exec failed: exec failed: unable to start container '
                f'process: exec: "{argv[0]}": '
                + (
                    "executable file not found in $PATH: unknown"
                    if "/" not in argv[0]
                    else "stat " + argv[0] + ": no such file or directory: unknown"
                )
            )
        argv = [*_security_wrapper(c), *argv]
        enter = images.exec_argv(own_pid, argv, c.cwd) if own_pid else rt.sandbox.nsenter_argv(argv, c.cwd)
        host_argv = [*(c.cgroups.join_prefix() if c.cgroups else []), *enter]
        return ExecPlan(host_argv, env, container, rt)

    def _find_executable(
        self, rt: PodRuntime, env: Mapping[str, str], name: str, cwd: str | None, own_pid: int = 0
    ) -> bool:
        pid = own_pid or (rt.sandbox.pid if rt.sandbox is not None else 0)
        root = f"/proc/{pid}/root" if pid else ""
        if "/" in name:
            candidates = [name if name.startswith("/") else os.path.join(cwd or "/", name)]
        else:
            candidates = [os.path.join(d or ".", name) for d in env.get("PATH", "").split(":")]
        for path in candidates:
            full = root + path if path.startswith("/") else path
            if os.path.isfile(full) and os.access(full, os.X_OK):
                return True
        return False

    def add_ephemeral_containers(self, ns: str, pod_name: str, new_spec: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply a new ``spec.ephemeralContainers`` list (the result of the client's patch)."""
        pod = self.store.get("pods", ns, pod_name)
        if pod is None:
            raise ApiError.not_found("pods", pod_name)
        old = pod["spec"].get("ephemeralContainers") or []
        new = new_spec.get("ephemeralContainers") or []
        old_by_name = {c["name"]: c for c in old}
        new_names = [c.get("name") for c in new]
        for name, cur in old_by_name.items():
            if name not in new_names:
                raise ApiError.invalid(
                    "Pod",
                    pod_name,
                    "spec.ephemeralContainers: Forbidden: existing ephemeral containers may not be removed",
                )
            changed = next(c for c in new if c.get("name") == name)
            if changed != cur:
                raise ApiError.invalid(
                    "Pod",
                    pod_name,
                    f"spec.ephemeralContainers[{name}]: Forbidden: "
                    f'existing ephemeral containers "{name}" may not be changed',
                )
        regular = {c["name"] for c in pod["spec"]["containers"]} | {
            c["name"] for c in pod["spec"].get("initContainers") or []
        }
        added = [c for c in new if c.get("name") not in old_by_name]
        seen: set[str] = set()
        for index, c in enumerate(added, start=len(old)):
            where = f"spec.ephemeralContainers[{index}]"
            name = c.get("name") or ""
            if not name:
                raise ApiError.invalid("Pod", pod_name, f"{where}.name: Required value")
            if name in regular or name in seen:
                raise ApiError.invalid("Pod", pod_name, f'{where}.name: Duplicate value: "{name}"')
            seen.add(name)
            if not c.get("image"):
                raise ApiError.invalid("Pod", pod_name, f"{where}.image: Required value")
            for forbidden in ("ports", "resources", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
                if c.get(forbidden):
                    raise ApiError.invalid(
                        "Pod", pod_name, f"{where}.{forbidden}: Forbidden: cannot be set for an Ephemeral Container"
                    )
            target = c.get("targetContainerName")
            if target and target not in {x["name"] for x in pod["spec"]["containers"]}:
                raise ApiError.invalid("Pod", pod_name, f'{where}.targetContainerName: Not found: "{target}"')
            if any(m.get("subPath") for m in c.get("volumeMounts") or []):
                raise ApiError.invalid(
                    "Pod",
                    pod_name,
                    f"{where}.volumeMounts.subPath: Forbidden: cannot be set for an Ephemeral Container",
                )
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
        admission.admit_pod(self.store, {**pod, "spec": {**pod["spec"], "ephemeralContainers": [*old, *added]}},
                            ephemeral=True)
        with self._lock:
            rt = self.runtimes.get((ns, pod_name))
        if rt is None or rt.sandbox is None:
            raise ApiError(409, "Conflict", f"pod {pod_name} is not running yet")
        pod_obj = pod
        for c in added:
            container = Container(c["name"], copy.deepcopy(c), ephemeral=True,
                                  pod_security=dict(pod["spec"].get("securityContext") or {}),
                                  layout=runtimes.layout_of(pod["metadata"].get("annotations") or {}),
                                  image_root=images.image_of(str(c.get("image") or "")))
            container.start_after = time.monotonic() + self.ephemeral_start_delay
            kubelet_events.pulling(self.store, pod, kubelet_events.container_field(container.name, True),
                                   container.image)
            container.env = self._container_env(
                rt, pod_obj, c, self._service_env(ns, pod["spec"].get("enableServiceLinks", True))
            )
            rt.ephemeral[container.name] = container

        def change(o: dict[str, Any]) -> None:
            o["spec"]["ephemeralContainers"] = [*old, *added]
            o["status"] = _pod_status(rt, o)

        return self.store.update("pods", ns, pod_name, change) or pod


# ------------------------------------------------------------------------------------------------ helpers


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 merge patch in place (null deletes). Strategic merge patch agrees with it on maps, which is
    all a template-annotation patch touches."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _netpod_name(name: str) -> str:
    short = re.sub(r"[^a-z0-9-]", "-", name.lower())[:40].strip("-")
    return short or "pod"


_EXPAND_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is a literal ``$``; unknown references stay as written."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _EXPAND_RE.sub(repl, value) if "$" in value else value


def _field_ref(pod: Mapping[str, Any], path: str, rt: PodRuntime) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": rt.ip,
        "status.hostIP": (pod.get("status") or {}).get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    return ""


# Capabilities root has on the host that a container runtime's default set lacks and that mirror-py's agents
# depend on: an exec'd agent in an ordinary container must find them missing, as on a real cluster.
_NOT_BY_DEFAULT = ("NET_ADMIN", "SYS_PTRACE")


def _security_wrapper(c: Container) -> list[str]:
    """What a container runtime grants a container's processes: the capabilities above only to privileged
    containers or ones that add them, and the user and group of the container's (else the pod's)
    securityContext, with no supplementary groups. A non-root user keeps no capabilities, as with a runtime
    that sets no ambient capabilities."""
    security = c.spec.get("securityContext") or {}
    added = {str(cap).upper().removeprefix("CAP_") for cap in (security.get("capabilities") or {}).get("add") or ()}
    argv = []
    if not security.get("privileged") and "ALL" not in added:
        drop = [cap.lower() for cap in _NOT_BY_DEFAULT if cap not in added]
        if drop:
            argv += ["--bounding-set", ",".join("-" + cap for cap in drop)]
    uid = security.get("runAsUser", c.pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", c.pod_security.get("runAsGroup"))
    if uid is not None or gid is not None:
        argv += ["--clear-groups"]
        if gid is not None:
            argv += ["--regid", str(int(gid))]
        if uid is not None:
            argv += ["--reuid", str(int(uid))]
    return [SETPRIV, *argv, "--"] if argv else []


def _probe_port(cspec: Mapping[str, Any]) -> int:
    probe = cspec.get("readinessProbe") or {}
    for kind in ("tcpSocket", "httpGet"):
        port = (probe.get(kind) or {}).get("port")
        if isinstance(port, int):
            return port
        if isinstance(port, str):
            named = {p.get("name"): p.get("containerPort") for p in cspec.get("ports") or []}
            if port in named:
                return int(named[port])
            if port.isdigit():
                return int(port)
    return 0


def _pod_defaults(spec: dict[str, Any]) -> None:
    """The defaults the API server fills in (clients read several of them)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("securityContext", {})
    spec["nodeName"] = spec.get("nodeName") or NODE_NAME
    volume = f"kube-api-access-{random_suffix()}"
    spec.setdefault("volumes", []).append(
        {
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        }
    )
    for c in spec.get("containers") or []:
        c.setdefault("imagePullPolicy", "Always" if str(c.get("image", "")).endswith(":latest") else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        c.setdefault("volumeMounts", []).append({"name": volume, "mountPath": SA_DIR, "readOnly": True})


def _wait_entered(proc: subprocess.Popen, rt: PodRuntime, c: Container, timeout: float = 5.0) -> None:
    """Report "running" only once the process is inside its pod (past the cgroup and nsenter wrappers),
    so whoever sees the status and looks at the process finds it where a runtime would have put it."""
    want_net = os.readlink(f"/proc/{rt.sandbox.pid}/ns/net") if rt.sandbox is not None and rt.sandbox.pid else ""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        pid = runtimes.main_pid(proc.pid, c.cgroups)  # past a runtime's monitor, once it has forked
        try:
            if pid == proc.pid and c.cgroups is not None and c.cgroups.monitor:
                pass
            elif want_net:
                if os.readlink(f"/proc/{pid}/ns/net") == want_net:
                    return
            elif c.cgroups is None or str(pid) in c.cgroups.procs[0].read_text().split():
                return
        except OSError:
            return
        time.sleep(0.002)


def _set_ips(obj: dict[str, Any], ip: str, host_ip: str) -> None:
    status = obj.setdefault("status", {})
    status["podIP"] = ip
    status["podIPs"] = [{"ip": ip}]
    status["hostIP"] = host_ip
    status["hostIPs"] = [{"ip": host_ip}]
    status.setdefault("startTime", now_rfc3339())


def _set_cluster_ip(obj: dict[str, Any], ip: str) -> None:
    obj["spec"]["clusterIP"] = ip
    obj["spec"]["clusterIPs"] = [ip]


def _is_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _pod_status(rt: PodRuntime, obj: Mapping[str, Any]) -> dict[str, Any]:
    status = dict(obj.get("status") or {})
    now = now_rfc3339()
    statuses = [c.status() for c in rt.containers.values()]
    if rt.failed:
        phase = "Failed"
        status["message"] = rt.failed
        status["reason"] = "SandboxError"
    elif rt.containers and all(c.state == "terminated" for c in rt.containers.values()):
        phase = "Succeeded" if all(c.exit_code == 0 for c in rt.containers.values()) else "Failed"
    elif any(c.state == "running" or c.state == "terminated" for c in rt.containers.values()):
        phase = "Running"
    else:
        phase = "Pending"
    containers_ready = bool(statuses) and all(s["ready"] for s in statuses)
    ready = phase == "Running" and containers_ready and not rt.unready
    old_conditions = {c["type"]: c for c in status.get("conditions") or []}

    def cond(kind: str, value: bool, reason: str = "") -> dict[str, Any]:
        text = "True" if value else "False"
        prev = old_conditions.get(kind)
        out = {
            "type": kind,
            "status": text,
            "lastProbeTime": None,
            "lastTransitionTime": prev["lastTransitionTime"] if prev and prev.get("status") == text else now,
        }
        if reason and not value:
            out["reason"] = reason
        return out

    started = phase != "Pending"
    status["phase"] = phase
    status["conditions"] = [
        cond("PodReadyToStartContainers", bool(rt.sandbox)),
        cond("Initialized", True),
        cond("Ready", ready, "ContainersNotReady" if not containers_ready else "ReadinessGatesNotReady"),
        cond("ContainersReady", containers_ready, "ContainersNotReady"),
        cond("PodScheduled", True),
    ]
    status["containerStatuses"] = statuses
    if rt.ephemeral:
        status["ephemeralContainerStatuses"] = [c.status() for c in rt.ephemeral.values()]
    if started:
        status.setdefault("startTime", now)
    return status


# ------------------------------------------------------------------------------------------------ leftovers


def _owner_alive(name: str) -> bool:
    return netpod._owner_alive(name)


def cleanup_leftovers() -> list[str]:
    """Remove what dead sandbox clusters left (processes, cgroups, dnsmasq, files), then netpod leftovers.

    A cluster is dead when its owner lock is free (its process exited or was SIGKILLed); live clusters of
    concurrent runs are never touched.
    """
    removed: list[str] = []
    with netpod._global_lock():
        names = {p.stem for p in STATE_DIR.glob(f"{CLUSTER_PREFIX}*.lock")}
        if WORK_ROOT.is_dir():
            names.update(p.name for p in WORK_ROOT.iterdir() if p.name.startswith(CLUSTER_PREFIX))
        dead = sorted(n for n in names if not _owner_alive(n))
        for name in dead:
            workdir = WORK_ROOT / name
            state: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((workdir / "state.json").read_text())
            _kill_dnsmasq_of(workdir)
            if state.get("cgroup"):
                Cgroups.kill_tree(Path(state["cgroup"]))
            for v1_dir in runtimes.leftover_v1_dirs(CGROUP_PREFIX + name[len(CLUSTER_PREFIX):]):
                Cgroups.kill_tree(v1_dir)
            if state.get("cgroup_v1_mount"):
                subprocess.run(["umount", "-l", state["cgroup_v1_mount"]], capture_output=True)
            if state.get("kubeconfig"):
                with contextlib.suppress(OSError):
                    Path(state["kubeconfig"]).unlink()
            shutil.rmtree(workdir, ignore_errors=True)
            netpod._release_owner_lock(name, None)
            removed.append(name)
        mount = _cgroup2_mount()
        if mount is not None and mount.is_dir():
            for path in mount.glob(f"{CGROUP_PREFIX}*.slice"):
                cluster = CLUSTER_PREFIX + path.name[len(CGROUP_PREFIX) : -len(".slice")]
                if not _owner_alive(cluster):
                    Cgroups.kill_tree(path)
                    removed.append(path.name)
    removed += netpod.cleanup_leftovers()
    return removed


def _kill_dnsmasq_of(workdir: Path) -> None:
    """dnsmasq runs in the host namespaces, so netns cleanup misses it: find it by its hosts-file argument."""
    marker = str(workdir / "dns" / "cluster-hosts").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"dnsmasq" in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)


@contextlib.contextmanager
def running(manifest: str | os.PathLike[str] | None = None, **kwargs: Any) -> Iterator[Cluster]:
    """``with running(manifest) as cluster:`` — start and always close."""
    cluster = Cluster.start(manifest, **kwargs)
    try:
        yield cluster
    finally:
        cluster.close()
