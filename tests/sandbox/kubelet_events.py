"""The Events a kubelet records about a container's image: ``Pulling``, then ``Pulled`` (or ``Failed``), with
the real reasons, messages and ``involvedObject.fieldPath``, so clients can tell a pull in progress from a stuck
start the way they do on a cluster (``kubectl describe pod`` shows them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.sandbox.manifest import new_uid, now_rfc3339, random_suffix


def container_field(name: str, ephemeral: bool) -> str:
    return f"spec.{'ephemeralContainers' if ephemeral else 'containers'}{{{name}}}"


def record(store: Any, pod: Mapping[str, Any], field_path: str, reason: str, message: str,
           kind: str = "Normal") -> dict[str, Any]:
    meta = pod["metadata"]
    now = now_rfc3339()
    return store.put({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{random_suffix()}{random_suffix()}", "namespace": meta["namespace"],
                     "uid": new_uid()},
        "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta.get("uid", ""), "apiVersion": "v1", "fieldPath": field_path},
        "reason": reason, "type": kind, "message": message,
        "source": {"component": "kubelet", "host": "sandbox"}, "reportingComponent": "kubelet",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })


def pulling(store: Any, pod: Mapping[str, Any], field_path: str, image: str) -> None:
    record(store, pod, field_path, "Pulling", f'Pulling image "{image}"')


def pulled(store: Any, pod: Mapping[str, Any], field_path: str, image: str, seconds: float) -> None:
    record(store, pod, field_path, "Pulled", f'Successfully pulled image "{image}" in {seconds:.3g}s')


def failed(store: Any, pod: Mapping[str, Any], field_path: str, image: str, why: str) -> None:
    record(store, pod, field_path, "Failed", f'Failed to pull image "{image}": {why}', kind="Warning")
