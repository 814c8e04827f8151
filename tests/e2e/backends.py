"""Cluster backends for the Kubernetes scenarios: the sandbox always; a real cluster when
MIRROR_PY_E2E_KUBECONFIG names one; k3s in a container when a Docker daemon is reachable.

A real or k3s backend applies the same manifest into a namespace of its own and deletes it afterwards, so a
shared cluster's ``staging`` is never touched.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml


class Backend:
    name = ""
    kubeconfig = ""
    namespace = "staging"

    def pod_names(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def pod_ip(self, name: str) -> str:
        raise NotImplementedError


class SandboxBackend(Backend):
    name = "sandbox"

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig

    def pod_names(self, prefix: str) -> list[str]:
        return self.cluster.pod_names(self.namespace, prefix)

    def pod_ip(self, name: str) -> str:
        return self.cluster.pod(name, self.namespace).ip


class KubeBackend(Backend):
    """Any reachable cluster: the manifest goes into a fresh namespace, removed at the end."""

    def __init__(self, name: str, kubeconfig: str, manifest: str) -> None:
        from kubernetes import client, config, utils

        self.name = name
        self.kubeconfig = kubeconfig
        self.namespace = "mirror-py-e2e-" + secrets.token_hex(3)
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        docs = [d for d in yaml.safe_load_all(manifest) if d and d.get("kind") != "Namespace"]
        for doc in docs:
            doc.setdefault("metadata", {})["namespace"] = self.namespace
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        utils.create_from_yaml(self.api, yaml_objects=docs, namespace=self.namespace)
        self._wait_ready(len([d for d in docs if d["kind"] == "Deployment"]))
        # The app reaches services by short name, so the kubeconfig's context namespace must be ours.
        with open(kubeconfig) as f:
            data = yaml.safe_load(f)
        current = data.get("current-context")
        for ctx in data.get("contexts", []):
            if ctx["name"] == current:
                ctx["context"]["namespace"] = self.namespace
        fd, self.kubeconfig = tempfile.mkstemp(prefix="mirror-py-e2e-", suffix=".kubeconfig")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f)

    def _wait_ready(self, deployments: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(self.namespace).items
            ready = [p for p in pods if any(c.type == "Ready" and c.status == "True"
                                            for c in (p.status.conditions or []))]
            if len(ready) >= deployments:
                return
            time.sleep(2)
        raise RuntimeError(f"the e2e manifest did not become ready in {self.name} within {timeout:g} s")

    def pod_names(self, prefix: str) -> list[str]:
        return sorted(p.metadata.name for p in self.core.list_namespaced_pod(self.namespace).items
                      if p.metadata.name.startswith(prefix))

    def pod_ip(self, name: str) -> str:
        return self.core.read_namespaced_pod(name, self.namespace).status.pod_ip

    def close(self) -> None:
        self.core.delete_namespace(self.namespace)
        os.unlink(self.kubeconfig)


@contextmanager
def real_cluster(manifest: str) -> Iterator[Backend | str]:
    """Yields a backend, or the reason there is none (the caller skips with it)."""
    path = os.environ.get("MIRROR_PY_E2E_KUBECONFIG")
    if not path:
        yield "no real cluster: set MIRROR_PY_E2E_KUBECONFIG to a kubeconfig to run these scenarios against one"
        return
    backend = KubeBackend("real", path, manifest)
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def k3s_cluster(manifest: str) -> Iterator[Backend | str]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        yield f"no Docker daemon reachable ({type(exc).__name__}), so no k3s cluster through testcontainers"
        return
    from testcontainers.community.k3s import K3SContainer

    with K3SContainer() as k3s:
        fd, path = tempfile.mkstemp(prefix="mirror-py-k3s-", suffix=".kubeconfig")
        with os.fdopen(fd, "w") as f:
            f.write(k3s.config_yaml())
        backend = KubeBackend("k3s", path, manifest)
        try:
            yield backend
        finally:
            backend.close()
            os.unlink(path)
