"""Turning ``deploy/api`` into one running, ready pod and one of its containers."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import MirrorError
from .api import KubeContext, explain

KINDS = {
    "pod": "pod", "po": "pod", "pods": "pod",
    "deployment": "deployment", "deploy": "deployment", "deployments": "deployment",
    "statefulset": "statefulset", "sts": "statefulset", "statefulsets": "statefulset",
    "replicaset": "replicaset", "rs": "replicaset", "replicasets": "replicaset",
    "daemonset": "daemonset", "ds": "daemonset", "daemonsets": "daemonset",
    "job": "job", "jobs": "job",
    "service": "service", "svc": "service", "services": "service",
}

# Containers that are almost never what the user means when they name a workload.
KNOWN_SIDECARS = frozenset({
    "istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init", "vault-agent", "vault-agent-init",
    "envoy", "envoy-sidecar", "cloud-sql-proxy", "cloudsql-proxy", "datadog-agent", "fluent-bit", "fluentd",
    "consul-connect-envoy-sidecar", "aws-otel-collector", "otel-collector", "dapr-sidecar", "daprd",
    "kuma-sidecar", "oauth2-proxy",
})
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True)
class TargetRef:
    kind: str
    name: str
    container: str | None

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + (f"/container/{self.container}" if self.container else "")


@dataclass
class ResolvedTarget:
    namespace: str
    pod: str
    container: str
    pod_ip: str | None
    node: str | None
    container_choice: str  # why this container: "named", "annotation", "first non-sidecar"
    probes: list = field(default_factory=list)  # the container's probes and their ports (see probes_of)

    def describe(self) -> str:
        return f"pod {self.namespace}/{self.pod} (container {self.container})"


def parse(path: str) -> TargetRef:
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 4) or not all(parts):
        raise MirrorError(
            f"target {path!r} is not KIND/NAME[/container/CONTAINER] (for example deploy/api or pod/api-0)"
        )
    kind = KINDS.get(parts[0].lower())
    if kind is None:
        raise MirrorError(
            f"unknown target kind {parts[0]!r} in {path!r}: use pod, deploy, sts, rs, ds, job or svc"
        )
    container = None
    if len(parts) == 4:
        if parts[2] != "container":
            raise MirrorError(f"target {path!r}: expected /container/NAME after the name")
        container = parts[3]
    return TargetRef(kind, parts[1], container)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if candidates:
        shown = ", ".join(sorted(candidates)[:8])
        return f"; existing: {shown}" + (" ..." if len(candidates) > 8 else "")
    return ""


def _selector(match_labels: dict | None, expressions: list | None = None) -> str:
    parts = [f"{k}={v}" for k, v in sorted((match_labels or {}).items())]
    for expr in expressions or []:
        key, op, values = expr.key, expr.operator, expr.values or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or (pod.status.phase or "") != "Running":
        return False
    for cond in pod.status.conditions or []:
        if cond.type == "Ready":
            return cond.status == "True"
    return False


def _not_ready_reason(pod: Any) -> str:
    phase = pod.status.phase or "Unknown"
    for cs in pod.status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason:
            return f"{phase}, container {cs.name}: {waiting.reason}"
    return phase if phase != "Running" else "Running but not Ready"


def _check_namespace(kube: KubeContext, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core().read_namespace(namespace)
    except ApiException as exc:
        if exc.status == 404:
            try:
                names = [n.metadata.name for n in kube.core().list_namespace().items]
            except ApiException:
                names = []
            raise MirrorError(f"namespace {namespace!r} not found{_suggest(namespace, names)}") from None
        if exc.status != 403:  # a user may not be allowed to read namespaces, only to work in one
            raise explain(exc, f"reading namespace {namespace!r}") from None


def _owner_selector(kube: KubeContext, ref: TargetRef, namespace: str) -> str:
    from kubernetes.client.exceptions import ApiException

    apps, batch, core = kube.apps(), kube.batch(), kube.core()
    readers = {
        "deployment": (apps.read_namespaced_deployment, apps.list_namespaced_deployment),
        "statefulset": (apps.read_namespaced_stateful_set, apps.list_namespaced_stateful_set),
        "replicaset": (apps.read_namespaced_replica_set, apps.list_namespaced_replica_set),
        "daemonset": (apps.read_namespaced_daemon_set, apps.list_namespaced_daemon_set),
        "job": (batch.read_namespaced_job, batch.list_namespaced_job),
        "service": (core.read_namespaced_service, core.list_namespaced_service),
    }
    read, listing = readers[ref.kind]
    try:
        obj = read(ref.name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            try:
                names = [o.metadata.name for o in listing(namespace).items]
            except ApiException:
                names = []
            _check_namespace(kube, namespace)
            raise MirrorError(f"{ref.kind} {ref.name!r} not found in namespace {namespace!r}"
                              f"{_suggest(ref.name, names)}") from None
        raise explain(exc, f"reading {ref.kind} {namespace}/{ref.name}") from None
    if ref.kind == "service":
        selector = _selector(obj.spec.selector)
    else:
        sel = obj.spec.selector
        selector = _selector(sel.match_labels, sel.match_expressions) if sel else ""
    if not selector:
        raise MirrorError(f"{ref.kind} {namespace}/{ref.name} has no pod selector, so it has no pods to target")
    return selector


def resolve(kube: KubeContext, ref: TargetRef, namespace: str | None = None) -> ResolvedTarget:
    """Finds a Running and Ready pod for ``ref`` and picks its container; every failure says why."""
    from kubernetes.client.exceptions import ApiException

    ns = namespace or kube.namespace
    core = kube.core()
    if ref.kind == "pod":
        try:
            pod = core.read_namespaced_pod(ref.name, ns)
        except ApiException as exc:
            if exc.status == 404:
                try:
                    names = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
                except ApiException:
                    names = []
                _check_namespace(kube, ns)
                hint = _suggest(ref.name, names)
                raise MirrorError(f"pod {ref.name!r} not found in namespace {ns!r}{hint}") from None
            raise explain(exc, f"reading pod {ns}/{ref.name}") from None
        except Exception as exc:
            raise explain(exc, f"reading pod {ns}/{ref.name}") from None
        if not _is_ready(pod):
            raise MirrorError(f"pod {ns}/{ref.name} is not ready ({_not_ready_reason(pod)}); "
                              "mirror-py targets only Running and Ready pods")
    else:
        try:
            selector = _owner_selector(kube, ref, ns)
            pods = core.list_namespaced_pod(ns, label_selector=selector).items
        except MirrorError:
            raise
        except Exception as exc:
            raise explain(exc, f"listing the pods of {ref.kind} {ns}/{ref.name}") from None
        ready = sorted((p for p in pods if _is_ready(p)), key=lambda p: p.metadata.name)
        if not ready:
            states = ", ".join(f"{p.metadata.name}: {_not_ready_reason(p)}" for p in pods[:5])
            raise MirrorError(f"{ref.kind} {ns}/{ref.name} has no Running and Ready pod"
                              + (f" ({states})" if states else " (it has no pods)"))
        pod = ready[0]
    container, why = choose_container(pod, ref.container)
    probes = [p for c in pod.spec.containers if c.name == container for p in probes_of(c)]
    return ResolvedTarget(ns, pod.metadata.name, container, pod.status.pod_ip, pod.spec.node_name, why, probes)


def choose_container(pod: Any, wanted: str | None) -> tuple[str, str]:
    names = [c.name for c in pod.spec.containers]
    if wanted:
        if wanted not in names:
            raise MirrorError(f"pod {pod.metadata.name} has no container {wanted!r}; it has {', '.join(names)}")
        return wanted, "named"
    annotated = (pod.metadata.annotations or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated in names:
        return annotated, f"the {DEFAULT_CONTAINER_ANNOTATION} annotation"
    for name in names:
        if name not in KNOWN_SIDECARS:
            return name, "the first container that is not a known sidecar"
    return names[0], "the first container"


def probes_of(container: Any) -> list[dict]:
    """The readiness, liveness and startup probes of a Kubernetes container object, with their ports."""
    named = {p.name: p.container_port for p in (container.ports or []) if p.name}
    out = []
    for kind, probe in (("readiness", container.readiness_probe), ("liveness", container.liveness_probe),
                        ("startup", container.startup_probe)):
        if probe is None:
            continue
        for handler, action in (("httpGet", probe.http_get), ("tcpSocket", probe.tcp_socket),
                                ("grpc", getattr(probe, "grpc", None))):
            if action is None:
                continue
            port = getattr(action, "port", None)
            if isinstance(port, str):
                port = named.get(port) or (int(port) if port.isdigit() else None)
            if isinstance(port, int):
                out.append({"kind": kind, "container": container.name, "handler": handler, "port": port})
    return out
