"""Admission: what a real API server refuses before a pod exists, in its own words.

Two admission plugins every cluster runs decide whether mirror-py's agent pods and ephemeral containers may
exist, so the sandbox runs them too:

* **Pod Security** (``PodSecurity``): a namespace labelled ``pod-security.kubernetes.io/enforce: baseline`` or
  ``restricted`` (version from ``…/enforce-version``, default ``latest``) refuses pods, and ephemeral containers
  added to pods, that break the level's checks. The refusal is a 403 ``pods "NAME" is forbidden: violates
  PodSecurity "baseline:latest": CHECK (DETAIL), CHECK (DETAIL)`` with the checks in the server's order (the
  baseline checks, then the restricted ones, each sorted by its identifier; a restricted check that replaces a
  baseline one is reported instead of it).
* **ResourceQuota**: a quota whose ``hard`` names ``limits.cpu``, ``limits.memory``, ``requests.cpu`` or
  ``requests.memory`` (or ``cpu``/``memory``, which mean the requests) makes every new pod of the namespace
  declare them: ``pods "NAME" is forbidden: failed quota: QUOTA: must specify limits.cpu for: C; …``.

A controller (the Job controller here) that has its pod refused records a ``Warning`` Event ``FailedCreate``
on its object with the message ``Error creating: <the refusal>``, and creates no pod: :func:`failed_create`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tests.sandbox.manifest import ApiError, new_uid, now_rfc3339, random_suffix

ENFORCE = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION = "pod-security.kubernetes.io/enforce-version"
LEVELS = ("privileged", "baseline", "restricted")
# Capabilities the baseline level lets a container add (NET_RAW is not among them).
BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
QUOTA_RESOURCES = {"limits.cpu": ("limits", "cpu"), "limits.memory": ("limits", "memory"),
                   "requests.cpu": ("requests", "cpu"), "requests.memory": ("requests", "memory"),
                   "cpu": ("requests", "cpu"), "memory": ("requests", "memory")}


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or []),
            *(spec.get("ephemeralContainers") or [])]


def _quote(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _who(names: list[str], pod_too: bool = False) -> str:
    word = "container" if len(names) == 1 else "containers"
    return f"{'pod or ' if pod_too else ''}{word} {_quote(names)}"


def _security(c: Mapping[str, Any]) -> Mapping[str, Any]:
    return c.get("securityContext") or {}


def _added(c: Mapping[str, Any]) -> list[str]:
    return [str(x) for x in (_security(c).get("capabilities") or {}).get("add") or []]


# Each check: (identifier, level, the title in the message, function(spec) -> detail or "").
def _capabilities_baseline(spec: Mapping[str, Any]) -> str:
    bad = [c for c in _containers(spec) if any(cap not in BASELINE_CAPABILITIES for cap in _added(c))]
    if not bad:
        return ""
    caps = sorted({cap for c in bad for cap in _added(c) if cap not in BASELINE_CAPABILITIES})
    return f"{_who([c['name'] for c in bad])} must not include {_quote(caps)} in securityContext.capabilities.add"


def _host_namespaces(spec: Mapping[str, Any]) -> str:
    on = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return ", ".join(on)


def _host_path(spec: Mapping[str, Any]) -> str:
    names = [v["name"] for v in spec.get("volumes") or [] if v.get("hostPath")]
    return f"{'volume' if len(names) == 1 else 'volumes'} {_quote(names)}" if names else ""


def _privileged(spec: Mapping[str, Any]) -> str:
    bad = [c["name"] for c in _containers(spec) if _security(c).get("privileged")]
    return f"{_who(bad)} must not set securityContext.privileged=true" if bad else ""


def _allow_privilege_escalation(spec: Mapping[str, Any]) -> str:
    bad = [c["name"] for c in _containers(spec) if _security(c).get("allowPrivilegeEscalation") is not False]
    return f"{_who(bad)} must set securityContext.allowPrivilegeEscalation=false" if bad else ""


def _capabilities_restricted(spec: Mapping[str, Any]) -> str:
    no_drop = [c["name"] for c in _containers(spec)
               if "ALL" not in ((_security(c).get("capabilities") or {}).get("drop") or [])]
    adding = [c for c in _containers(spec) if any(cap != "NET_BIND_SERVICE" for cap in _added(c))]
    parts = []
    if no_drop:
        parts.append(f'{_who(no_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        caps = sorted({cap for c in adding for cap in _added(c) if cap != "NET_BIND_SERVICE"})
        parts.append(f"{_who([c['name'] for c in adding])} must not include {_quote(caps)} in "
                     "securityContext.capabilities.add")
    return "; ".join(parts)


def _run_as_non_root(spec: Mapping[str, Any]) -> str:
    pod = (spec.get("securityContext") or {}).get("runAsNonRoot")
    bad = [c["name"] for c in _containers(spec)
           if _security(c).get("runAsNonRoot", pod) is not True]
    return f"{_who(bad, pod_too=True)} must set securityContext.runAsNonRoot=true" if bad else ""


def _seccomp_restricted(spec: Mapping[str, Any]) -> str:
    pod = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    bad = [c["name"] for c in _containers(spec)
           if ((_security(c).get("seccompProfile") or {}).get("type") or pod) not in ("RuntimeDefault", "Localhost")]
    return (f'{_who(bad, pod_too=True)} must set securityContext.seccompProfile.type to "RuntimeDefault" or '
            '"Localhost"' if bad else "")


CHECKS = (
    ("capabilities_baseline", "baseline", "non-default capabilities", _capabilities_baseline),
    ("hostNamespaces", "baseline", "host namespaces", _host_namespaces),
    ("hostPathVolumes", "baseline", "hostPath volumes", _host_path),
    ("privileged", "baseline", "privileged", _privileged),
    ("allowPrivilegeEscalation", "restricted", "allowPrivilegeEscalation != false", _allow_privilege_escalation),
    ("capabilities_restricted", "restricted", "unrestricted capabilities", _capabilities_restricted),
    ("runAsNonRoot", "restricted", "runAsNonRoot != true", _run_as_non_root),
    ("seccompProfile_restricted", "restricted", "seccompProfile", _seccomp_restricted),
)
REPLACED_AT_RESTRICTED = {"capabilities_baseline"}  # by capabilities_restricted


def pod_security(namespace: Mapping[str, Any] | None, pod: Mapping[str, Any]) -> str:
    """The ``violates PodSecurity …`` text for a pod (spec with any ephemeral containers), or "" if admitted."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(ENFORCE, "privileged")
    if level not in LEVELS or level == "privileged":
        return ""
    version = labels.get(ENFORCE_VERSION, "latest")
    spec = pod.get("spec") or {}
    found = []
    for ident, at, title, check in CHECKS:
        if at == "restricted" and level != "restricted":
            continue
        if level == "restricted" and ident in REPLACED_AT_RESTRICTED:
            continue
        detail = check(spec)
        if detail:
            found.append(f"{title} ({detail})")
    return f'violates PodSecurity "{level}:{version}": ' + ", ".join(found) if found else ""


def quota(quotas: Iterable[Mapping[str, Any]], pod: Mapping[str, Any]) -> str:
    """The ``failed quota …`` text when a quota requires what the pod's containers do not declare."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for q in sorted(quotas, key=lambda o: o["metadata"]["name"]):
        missing: dict[str, list[str]] = {}
        for key in sorted((q.get("spec") or {}).get("hard") or {}):
            if key not in QUOTA_RESOURCES:
                continue
            kind, resource = QUOTA_RESOURCES[key]
            shown = f"{kind}.{resource}"
            for c in containers:
                if resource not in ((c.get("resources") or {}).get(kind) or {}):
                    missing.setdefault(shown, [])
                    if c["name"] not in missing[shown]:
                        missing[shown].append(c["name"])
        if missing:
            what = "; ".join(f"{key} for: {','.join(names)}" for key, names in sorted(missing.items()))
            return f"failed quota: {q['metadata']['name']}: must specify {what}"
    return ""


def admit_pod(store: Any, pod: Mapping[str, Any], ephemeral: bool = False) -> None:
    """Raises the API server's 403 if Pod Security or a quota refuses ``pod`` (a new pod, or with ``ephemeral``
    a pod whose ephemeral containers change: quotas do not count those)."""
    meta = pod["metadata"]
    ns = meta.get("namespace", "default")
    reasons = [pod_security(store.get("namespaces", "", ns), pod)]
    if not ephemeral:
        reasons.append(quota(store.list("resourcequotas", ns), pod))
    for reason in reasons:
        if reason:
            name = meta.get("name") or ""
            raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {reason}',
                           {"name": name, "kind": "pods"})


def failed_create(store: Any, owner: Mapping[str, Any], refusal: ApiError) -> dict[str, Any]:
    """The Event a controller records when the pod it creates is refused (``kubectl describe job`` shows it)."""
    meta = owner["metadata"]
    now = now_rfc3339()
    return store.put({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{random_suffix()}{random_suffix()}", "namespace": meta["namespace"],
                     "uid": new_uid()},
        "involvedObject": {"kind": owner["kind"], "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta.get("uid", ""), "apiVersion": owner.get("apiVersion", ""),
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": "FailedCreate", "type": "Warning", "message": f"Error creating: {refusal.message}",
        "source": {"component": "job-controller"}, "reportingComponent": "job-controller",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })
