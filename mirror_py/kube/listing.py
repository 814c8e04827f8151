"""``mirror-py ls``: what can be targeted in a namespace, written the way --target takes it."""

from __future__ import annotations

from .api import KubeContext, explain
from .targets import _is_ready, collection


def list_targets(kube: KubeContext, namespace: str) -> list[tuple[str, str, str]]:
    """Rows of (target, containers, state)."""
    rows: list[tuple[str, str, str]] = []
    try:
        pods = kube.list_items(collection("pod", namespace))
        workloads = [(kind, kube.list_items(collection(kind, namespace)))
                     for kind in ("deployment", "statefulset", "daemonset", "job")]
    except Exception as exc:
        raise explain(exc, f"listing namespace {namespace!r}") from None
    for kind, items in workloads:
        for obj in sorted(items, key=lambda o: o["metadata"]["name"]):
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            containers = ", ".join(c["name"] for c in spec["template"]["spec"]["containers"])
            if kind in ("deployment", "statefulset"):
                state = f"{status.get('readyReplicas') or 0}/{spec.get('replicas') or 0} ready"
            elif kind == "daemonset":
                state = f"{status.get('numberReady') or 0}/{status.get('desiredNumberScheduled') or 0} ready"
            else:
                state = f"{status.get('active') or 0} active"
            rows.append((f"{kind}/{obj['metadata']['name']}", containers, state))
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        containers = ", ".join(c["name"] for c in pod["spec"]["containers"])
        state = "Running, Ready" if _is_ready(pod) else ((pod.get("status") or {}).get("phase") or "Unknown")
        rows.append((f"pod/{pod['metadata']['name']}", containers, state))
    return rows
