"""``mirror-py ls``: what can be targeted in a namespace, written the way --target takes it."""

from __future__ import annotations

from .api import KubeContext, explain
from .targets import _is_ready


def list_targets(kube: KubeContext, namespace: str) -> list[tuple[str, str, str]]:
    """Rows of (target, containers, state)."""
    rows: list[tuple[str, str, str]] = []
    try:
        pods = kube.core().list_namespaced_pod(namespace).items
        apps = kube.apps()
        workloads = [
            ("deployment", apps.list_namespaced_deployment(namespace).items),
            ("statefulset", apps.list_namespaced_stateful_set(namespace).items),
            ("daemonset", apps.list_namespaced_daemon_set(namespace).items),
            ("job", kube.batch().list_namespaced_job(namespace).items),
        ]
    except Exception as exc:
        raise explain(exc, f"listing namespace {namespace!r}") from None
    for kind, items in workloads:
        for obj in sorted(items, key=lambda o: o.metadata.name):
            containers = ", ".join(c.name for c in obj.spec.template.spec.containers)
            if kind in ("deployment", "statefulset"):
                state = f"{obj.status.ready_replicas or 0}/{obj.spec.replicas or 0} ready"
            elif kind == "daemonset":
                state = f"{obj.status.number_ready or 0}/{obj.status.desired_number_scheduled or 0} ready"
            else:
                state = f"{obj.status.active or 0} active"
            rows.append((f"{kind}/{obj.metadata.name}", containers, state))
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        containers = ", ".join(c.name for c in pod.spec.containers)
        state = "Running, Ready" if _is_ready(pod) else (pod.status.phase or "Unknown")
        rows.append((f"pod/{pod.metadata.name}", containers, state))
    return rows
