"""``mirror-py ls``: what can be targeted in a namespace, written the way --target takes it."""

from __future__ import annotations

from .api import KubeContext, explain
from .targets import _is_ready, collection

RESOURCES = {"pod": ("pods", ""), "deployment": ("deployments", "apps"), "statefulset": ("statefulsets", "apps"),
             "daemonset": ("daemonsets", "apps"), "job": ("jobs", "batch")}


def list_targets(kube: KubeContext, namespace: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Rows of (target, containers, state), and a line for each kind the user may not list.

    Roles often grant pods but not every workload kind (or the reverse): one forbidden list must not hide what
    the others show. Any other failure (the server unreachable, the namespace unknown) is the whole command's."""
    from kubernetes.client.exceptions import ApiException

    rows: list[tuple[str, str, str]] = []
    refused: list[str] = []
    listed: dict[str, list[dict]] = {}
    for kind in ("pod", "deployment", "statefulset", "daemonset", "job"):
        try:
            listed[kind] = kube.list_items(collection(kind, namespace))
        except ApiException as exc:
            if exc.status != 403:
                raise explain(exc, f"listing namespace {namespace!r}") from None
            resource, group = RESOURCES[kind]
            refused.append(f"cannot list {resource} in namespace {namespace}: forbidden; needs the RBAC verb list "
                           f"on {resource}{'.' + group if group else ''} (apiGroups: [\"{group}\"]) there")
        except Exception as exc:
            raise explain(exc, f"listing namespace {namespace!r}") from None
    pods = listed.pop("pod", [])
    workloads = list(listed.items())
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
    return rows, refused
