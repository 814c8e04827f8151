"""Turning ``deploy/api`` into one running, ready pod and one of its containers."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from urllib.parse import quote

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
    # The pod as the lookup read it (the API's JSON): a placement that needs its spec takes it from here instead
    # of reading it again, one round trip less. Its status is as old as the lookup.
    pod_object: dict | None = field(default=None, repr=False)

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
        key, op, values = expr.get("key", ""), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


# Objects below are the API's JSON (camelCase keys), as KubeContext.get_json returns them.
def _is_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _not_ready_reason(pod: dict) -> str:
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{phase}, container {cs.get('name')}: {waiting['reason']}"
    return phase if phase != "Running" else "Running but not Ready"


def _names(kube: KubeContext, path: str) -> list[str]:
    """Names for a "did you mean" hint; none when the user may not list them."""
    from kubernetes.client.exceptions import ApiException

    try:
        return [o["metadata"]["name"] for o in kube.list_items(path)]
    except ApiException:
        return []


def _check_namespace(kube: KubeContext, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        kube.get_json(f"/api/v1/namespaces/{quote(namespace, safe='')}")
    except ApiException as exc:
        if exc.status == 404:
            names = _names(kube, "/api/v1/namespaces")
            raise MirrorError(f"namespace {namespace!r} not found{_suggest(namespace, names)}") from None
        if exc.status != 403:  # a user may not be allowed to read namespaces, only to work in one
            raise explain(exc, f"reading namespace {namespace!r}") from None


# kind -> the collection's path under a namespace
COLLECTIONS = {
    "pod": "/api/v1/namespaces/{ns}/pods",
    "service": "/api/v1/namespaces/{ns}/services",
    "deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "statefulset": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "replicaset": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "daemonset": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "event": "/api/v1/namespaces/{ns}/events",
}


def collection(kind: str, namespace: str) -> str:
    return COLLECTIONS[kind].format(ns=quote(namespace, safe=""))


def object_path(kind: str, namespace: str, name: str) -> str:
    return f"{collection(kind, namespace)}/{quote(name, safe='')}"


def _read(kube: KubeContext, kind: str, name: str, namespace: str) -> dict:
    """The named object; a missing one (or namespace) is a MirrorError with near names."""
    from kubernetes.client.exceptions import ApiException

    try:
        return kube.get_json(object_path(kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            names = _names(kube, collection(kind, namespace))
            _check_namespace(kube, namespace)
            raise MirrorError(f"{kind} {name!r} not found in namespace {namespace!r}{_suggest(name, names)}") from None
        raise explain(exc, f"reading {kind} {namespace}/{name}") from None


def _owner_selector(kube: KubeContext, ref: TargetRef, namespace: str) -> str:
    spec = _read(kube, ref.kind, ref.name, namespace).get("spec") or {}
    if ref.kind == "service":
        selector = _selector(spec.get("selector"))
    else:
        sel = spec.get("selector") or {}
        selector = _selector(sel.get("matchLabels"), sel.get("matchExpressions"))
    if not selector:
        raise MirrorError(f"{ref.kind} {namespace}/{ref.name} has no pod selector, so it has no pods to target")
    return selector


def resolve(kube: KubeContext, ref: TargetRef, namespace: str | None = None) -> ResolvedTarget:
    """Finds a Running and Ready pod for ``ref`` and picks its container; every failure says why."""
    ns = namespace or kube.namespace
    if ref.kind == "pod":
        try:
            pod = _read(kube, "pod", ref.name, ns)
        except MirrorError:
            raise
        except Exception as exc:
            raise explain(exc, f"reading pod {ns}/{ref.name}") from None
        if not _is_ready(pod):
            raise MirrorError(f"pod {ns}/{ref.name} is not ready ({_not_ready_reason(pod)}); "
                              "mirror-py targets only Running and Ready pods")
    else:
        try:
            selector = _owner_selector(kube, ref, ns)
            pods = kube.list_items(collection("pod", ns), labelSelector=selector)
        except MirrorError:
            raise
        except Exception as exc:
            raise explain(exc, f"listing the pods of {ref.kind} {ns}/{ref.name}") from None
        ready = sorted((p for p in pods if _is_ready(p)), key=lambda p: p["metadata"]["name"])
        if not ready:
            states = ", ".join(f"{p['metadata']['name']}: {_not_ready_reason(p)}" for p in pods[:5])
            raise MirrorError(f"{ref.kind} {ns}/{ref.name} has no Running and Ready pod"
                              + (f" ({states})" if states else " (it has no pods)"))
        pod = ready[0]
    container, why = choose_container(pod, ref.container)
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    probes = [p for c in spec.get("containers") or [] if c.get("name") == container for p in probes_of(c)]
    return ResolvedTarget(ns, pod["metadata"]["name"], container, status.get("podIP"), spec.get("nodeName"), why,
                          probes, pod)


def choose_container(pod: dict, wanted: str | None) -> tuple[str, str]:
    names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if wanted:
        if wanted not in names:
            raise MirrorError(f"pod {pod['metadata']['name']} has no container {wanted!r}; it has {', '.join(names)}")
        return wanted, "named"
    annotated = (pod["metadata"].get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated in names:
        return annotated, f"the {DEFAULT_CONTAINER_ANNOTATION} annotation"
    for name in names:
        if name not in KNOWN_SIDECARS:
            return name, "the first container that is not a known sidecar"
    return names[0], "the first container"


def probes_of(container: dict) -> list[dict]:
    """The readiness, liveness and startup probes of a container (the pod spec's JSON), with their ports."""
    named = {p["name"]: p.get("containerPort") for p in container.get("ports") or [] if p.get("name")}
    out = []
    for kind in ("readiness", "liveness", "startup"):
        probe = container.get(f"{kind}Probe")
        if not probe:
            continue
        for handler in ("httpGet", "tcpSocket", "grpc"):
            action = probe.get(handler)
            if not action:
                continue
            port = action.get("port")
            if isinstance(port, str):
                port = named.get(port) or (int(port) if port.isdigit() else None)
            if isinstance(port, int):
                out.append({"kind": kind, "container": container.get("name"), "handler": handler, "port": port})
    return out
