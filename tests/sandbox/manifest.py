"""Kubernetes manifests and the small pieces of API machinery the sandbox cluster shares.

The sandbox reads ordinary Kubernetes YAML so the same manifest can be applied to a real cluster, and its API
server must filter and name objects the way the real one does (label/field selectors, generated names,
resource versions), because mirror-py's target resolution depends on exactly those behaviours.  Everything
here is pure data manipulation: no processes, no sockets, so it is cheap to test and reuse.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

# Kubernetes' rand.SafeEncodeString alphabet: no vowels (no accidental words), no confusable characters.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Resource:
    """One REST resource the sandbox serves: where it lives and what its objects are called."""

    plural: str
    group: str
    version: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ("get", "list", "watch")
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("namespaces", "", "v1", "Namespace", False, ("create", "delete", "get", "list", "watch"), ("ns",)),
        Resource("nodes", "", "v1", "Node", False, short_names=("no",)),
        Resource("pods", "", "v1", "Pod", True, ("create", "delete", "get", "list", "watch", "patch"), ("po",)),
        Resource("services", "", "v1", "Service", True, ("create", "get", "list", "watch"), ("svc",)),
        Resource("endpoints", "", "v1", "Endpoints", True, short_names=("ep",)),
        Resource("configmaps", "", "v1", "ConfigMap", True, ("create", "get", "list", "watch"), ("cm",)),
        Resource("secrets", "", "v1", "Secret", True, ("create", "get", "list", "watch")),
        Resource("serviceaccounts", "", "v1", "ServiceAccount", True, ("create", "get", "list", "watch"), ("sa",)),
        Resource(
            "deployments", "apps", "v1", "Deployment", True, ("create", "get", "list", "watch", "patch"), ("deploy",)
        ),
        Resource("replicasets", "apps", "v1", "ReplicaSet", True, short_names=("rs",)),
        Resource("statefulsets", "apps", "v1", "StatefulSet", True, ("create", "get", "list", "watch"), ("sts",)),
        Resource("daemonsets", "apps", "v1", "DaemonSet", True, ("create", "get", "list", "watch"), ("ds",)),
        Resource("jobs", "batch", "v1", "Job", True, ("create", "delete", "get", "list", "watch")),
        Resource("events", "", "v1", "Event", True, short_names=("ev",)),
        Resource("resourcequotas", "", "v1", "ResourceQuota", True, short_names=("quota",)),
        Resource(
            "selfsubjectaccessreviews", "authorization.k8s.io", "v1", "SelfSubjectAccessReview", False, ("create",)
        ),
    )
}
KIND_TO_RESOURCE = {r.kind: r for r in RESOURCES.values()}
SUBRESOURCES: dict[str, tuple[str, ...]] = {
    "pods": ("exec", "attach", "ephemeralcontainers", "log", "status"),
    "deployments": ("status",),
    "jobs": ("status",),
}
API_GROUPS = ("apps", "batch", "authorization.k8s.io")

# The kinds a manifest may hold, in the order they are applied: what pods reference must exist first.
MANIFEST_ORDER = (
    "Namespace",
    "ResourceQuota",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Service",
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
)


class ManifestError(ValueError):
    """A manifest that a real API server would reject (or that the sandbox cannot emulate)."""


class ApiError(Exception):
    """An error the API server turns into a ``metav1.Status`` response, worded like the real one."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }
        if not self.details and self.code in (401, 405):
            del body["details"]
        return body

    @classmethod
    def not_found(cls, resource: str, name: str, group: str = "") -> ApiError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(404, "NotFound", f'{qualified} "{name}" not found', {"name": name, "kind": resource})

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def invalid(cls, kind: str, name: str, message: str) -> ApiError:
        return cls(422, "Invalid", f'{kind} "{name}" is invalid: {message}', {"name": name, "kind": kind})


# ---------------------------------------------------------------------------------------------- loading


def load_manifest(source: str | Path) -> list[dict[str, Any]]:
    """Parse a multi-document YAML manifest (a path or the text itself) into validated objects.

    ``List`` documents are flattened, empty documents skipped, a missing namespace becomes ``default``, and
    the result is ordered so that what pods reference (namespaces, config, services) comes first.
    """
    text = Path(source).read_text() if _looks_like_path(source) else str(source)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest is not valid YAML: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(f"each manifest document must be a mapping, got {type(doc).__name__}")
        if doc.get("kind") == "List" or str(doc.get("kind", "")).endswith("List"):
            objects.extend(copy.deepcopy(item) for item in doc.get("items") or [])
        else:
            objects.append(doc)
    for obj in objects:
        _validate(obj)
    objects.sort(key=lambda o: MANIFEST_ORDER.index(o["kind"]))
    return objects


def _looks_like_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    return "\n" not in source and ":" not in source and Path(source).is_file()


def _validate(obj: dict[str, Any]) -> None:
    kind = obj.get("kind")
    if kind not in MANIFEST_ORDER:
        raise ManifestError(f"unsupported kind {kind!r} (supported: {', '.join(MANIFEST_ORDER)})")
    resource = KIND_TO_RESOURCE[kind]
    if obj.get("apiVersion") != resource.api_version:
        raise ManifestError(f"{kind} needs apiVersion {resource.api_version!r}, got {obj.get('apiVersion')!r}")
    meta = obj.setdefault("metadata", {})
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise ManifestError(f"{kind} without metadata.name")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
        raise ManifestError(f"{kind} name {name!r} is not a valid DNS subdomain")
    if resource.namespaced:
        meta.setdefault("namespace", "default")
    else:
        meta.pop("namespace", None)
    for key in ("labels", "annotations"):
        for k, v in (meta.get(key) or {}).items():
            if not isinstance(v, str):
                raise ManifestError(f"{kind}/{name}: {key} value of {k!r} must be a string, got {v!r}")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = (obj.get("spec") or {}).get("template")
        if not isinstance(template, dict):
            raise ManifestError(f"{kind}/{name}: spec.template is required")
        if kind != "Job":
            selector = (obj.get("spec") or {}).get("selector")
            if not selector:
                raise ManifestError(f"{kind}/{name}: spec.selector is required in apps/v1")
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not selector_matches(selector, labels):
                raise ManifestError(
                    f"{kind}/{name}: spec.template.metadata.labels do not match spec.selector (as the API requires)"
                )
        validate_pod_spec(kind, name, template.get("spec"))
    if kind == "Pod":
        validate_pod_spec(kind, name, obj.get("spec"))


def validate_pod_spec(kind: str, name: str, spec: Any) -> None:
    """The checks of the real API server that a hand-written manifest most often trips over."""
    if not isinstance(spec, dict):
        raise ManifestError(f"{kind}/{name}: a pod spec is required")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ManifestError(f"{kind}/{name}: spec.containers must be a non-empty list")
    seen: set[str] = set()
    for container in containers + list(spec.get("initContainers") or []):
        cname = container.get("name") if isinstance(container, dict) else None
        if not cname or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cname):
            raise ManifestError(f"{kind}/{name}: container name {cname!r} is not a valid DNS label")
        if cname in seen:
            raise ManifestError(f"{kind}/{name}: duplicate container name {cname!r}")
        seen.add(cname)
        for key in ("command", "args"):
            value = container.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ManifestError(f"{kind}/{name}: containers[{cname}].{key} must be a list of strings")
        for env in container.get("env") or []:
            if not isinstance(env, dict) or not env.get("name"):
                raise ManifestError(f"{kind}/{name}: containers[{cname}].env entries need a name")
            if "value" in env and not isinstance(env["value"], str):
                raise ManifestError(
                    f"{kind}/{name}: env {env['name']!r} value must be a string (quote it), got {env['value']!r}"
                )


# ---------------------------------------------------------------------------------------------- names


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def random_suffix(length: int = 5) -> str:
    """The suffix of a generated name (``generateName``, ReplicaSet pods), from Kubernetes' alphabet."""
    return "".join(secrets.choice(SAFE_ALPHABET) for _ in range(length))


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable ``pod-template-hash``-like value: same template, same ReplicaSet name, as in Kubernetes."""
    digest = hashlib.sha256(repr(_canonical(template)).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_canonical(v) for v in value)
    return value


def decode_secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's data (base64) merged with stringData, as the API server stores it."""
    out = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ---------------------------------------------------------------------------------------------- selectors


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) against labels; empty matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_CMP_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)$")
_KEY_RE = re.compile(r"^(!?)\s*([A-Za-z0-9_./-]+)$")


def parse_label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """The ``labelSelector`` query syntax (``a=b,c!=d,e in (x,y),f notin (z),g,!h``) as a predicate."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_top_level(text or ""):
        if m := _SET_RE.match(term):
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := _CMP_RE.match(term):
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m := _KEY_RE.match(term):
            neg, key = m.groups()
            if neg:
                checks.append(lambda labels, k=key: k not in labels)
            else:
                checks.append(lambda labels, k=key: k in labels)
        else:
            raise ApiError.bad_request(f"unable to parse requirement: {term!r}")
    return lambda labels: all(check(labels) for check in checks)


FIELD_GETTERS: dict[str, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "pods": {
        "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
        "spec.restartPolicy": lambda o: o.get("spec", {}).get("restartPolicy", ""),
        "spec.schedulerName": lambda o: o.get("spec", {}).get("schedulerName", ""),
        "spec.serviceAccountName": lambda o: o.get("spec", {}).get("serviceAccountName", ""),
        "spec.hostNetwork": lambda o: str(bool(o.get("spec", {}).get("hostNetwork"))).lower(),
        "status.phase": lambda o: o.get("status", {}).get("phase", ""),
        "status.podIP": lambda o: o.get("status", {}).get("podIP", ""),
        "status.nominatedNodeName": lambda o: "",
    },
    "secrets": {"type": lambda o: o.get("type", "")},
    "jobs": {"status.successful": lambda o: str(o.get("status", {}).get("succeeded", 0))},
    "events": {
        **{f"involvedObject.{key}": lambda o, k=key: str((o.get("involvedObject") or {}).get(k, ""))
           for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": lambda o: o.get("reason", ""),
        "type": lambda o: o.get("type", ""),
        "source": lambda o: (o.get("source") or {}).get("component", ""),
    },
}


def parse_field_selector(resource: str, text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """The ``fieldSelector`` query (``metadata.name=x,status.phase!=Failed``) with the real per-kind fields."""
    getters: dict[str, Callable[[Mapping[str, Any]], str]] = {
        "metadata.name": lambda o: o["metadata"]["name"],
        "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
        **FIELD_GETTERS.get(resource, {}),
    }
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_top_level(text or ""):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise ApiError.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field_name, op, value = m.groups()
        getter = getters.get(field_name)
        if getter is None:
            raise ApiError.bad_request(f"field label not supported: {field_name}")
        if op == "!=":
            checks.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            checks.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(check(obj) for check in checks)


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def filter_objects(
    resource: str, objects: Iterable[Mapping[str, Any]], label_selector: str | None, field_selector: str | None
) -> list[Mapping[str, Any]]:
    by_label = parse_label_selector(label_selector)
    by_field = parse_field_selector(resource, field_selector)
    return [o for o in objects if by_label(labels_of(o)) and by_field(o)]


# ---------------------------------------------------------------------------------------------- patches


def strategic_merge(target: Any, patch: Any, merge_keys: Mapping[str, str] | None = None, path: str = "") -> Any:
    """A strategic merge patch as far as pods need it: maps merge, ``null`` deletes, and lists whose merge
    key is known (``containers``, ``ephemeralContainers``, ``env``, ``volumes``...) merge by that key."""
    keys = merge_keys or STRATEGIC_MERGE_KEYS
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out.get(key), value, keys, f"{path}.{key}")
        return out
    if isinstance(patch, list) and isinstance(target, list):
        field_name = path.rsplit(".", 1)[-1]
        merge_key = keys.get(field_name)
        if merge_key:
            out = [copy.deepcopy(item) for item in target]
            for item in patch:
                wanted = item.get(merge_key)
                index = next(
                    (i for i, cur in enumerate(out) if isinstance(cur, dict) and cur.get(merge_key) == wanted), None
                )
                if index is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[index] = strategic_merge(out[index], item, keys, path)
            return out
    return copy.deepcopy(patch)


def json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch: lists replace wholesale (why clients must resend existing ephemeral containers)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json_merge(out.get(key), value)
    return out


def json_patch(target: Any, operations: list[Mapping[str, Any]]) -> Any:
    """RFC 6902 (add/replace/remove/test) — the form the python client sends when the body is a list."""
    doc = copy.deepcopy(target)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]]
        if not parts:
            raise ApiError.bad_request(f"invalid JSON patch path {op.get('path')!r}")
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last, kind = parts[-1], op.get("op")
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op["value"]))
                elif kind == "add":
                    parent.insert(int(last), copy.deepcopy(op["value"]))
                else:
                    parent[int(last)] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        elif kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"the test operation failed for {op.get('path')}")
        else:
            raise ApiError.bad_request(f"unsupported JSON patch operation {kind!r}")
    return doc


STRATEGIC_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "ownerReferences": "uid",
}
