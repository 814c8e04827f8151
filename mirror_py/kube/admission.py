"""Which cluster policy refused an agent pod or container, and what the user can do about it.

The API server's refusal names the policy in its own words (``violates PodSecurity "baseline:latest": …``,
``failed quota: compute: must specify limits.cpu …``, ``admission webhook "x" denied the request: …``). A Job's
pod that is refused never exists: the refusal is only in the Job's ``FailedCreate`` events, which mirror-py
reads (:func:`job_refusal`) instead of waiting its whole start-up timeout for a pod. Each refusal becomes one
line that names the policy, keeps the server's words, and says what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_POD_SECURITY = re.compile(r'violates PodSecurity "(?P<level>[a-z]+):(?P<version>[^"]+)": (?P<detail>.*)', re.S)
_QUOTA_MISSING = re.compile(r"failed quota: (?P<name>[^:]+): must specify (?P<detail>.*)", re.S)
_QUOTA_EXCEEDED = re.compile(r"exceeded quota: (?P<name>[^,]+), (?P<detail>.*)", re.S)
_WEBHOOK = re.compile(r'admission webhook "(?P<name>[^"]+)" denied the request: (?P<detail>.*)', re.S)
_POLICY = re.compile(r"ValidatingAdmissionPolicy '(?P<name>[^']+)'(?: with binding '[^']+')? denied request: "
                     r"(?P<detail>.*)", re.S)
#: What is being refused (the key), to what the advice is given.
WHAT = {"job": "the job agent pod (privileged, hostPID)",
        "targetless": "the targetless agent pod",
        "ephemeral": "the ephemeral agent container"}
RESOURCE_KEYS = {"limits.cpu": "agent.cpu_limit", "limits.memory": "agent.memory_limit",
                 "requests.cpu": "agent.cpu_request", "requests.memory": "agent.memory_request"}


@dataclass(frozen=True)
class Refusal:
    policy: str  # the policy, named as an admin would look it up
    detail: str  # the server's own words for what it refused (from the policy's name on)
    advice: str  # what the user can change


def _pod_security_advice(kind: str, level: str, namespace: str) -> str:
    if kind == "job":
        return (f"job agents need a namespace at Pod Security level privileged (label "
                f"pod-security.kubernetes.io/enforce=privileged on {namespace}); use --agent-mode ephemeral, or "
                "--agent-mode exec when the target has python3")
    if kind == "ephemeral":
        if level == "restricted":
            return ("at restricted no ephemeral agent is admitted (it runs as the image's root user); use "
                    "--agent-mode exec when the target has python3, or a namespace at baseline or privileged")
        return ("baseline lets a container add none of NET_ADMIN, NET_RAW, SYS_PTRACE: --incoming off drops "
                "NET_ADMIN and NET_RAW, declaring the target's runAsUser and runAsGroup (or --no-env with "
                "--fs-mode local) drops SYS_PTRACE; or use --agent-mode exec when the target has python3")
    return ("set agent.namespace to a namespace at Pod Security level baseline or privileged (the agent image "
            "runs as root)")


def classify(message: str, kind: str, namespace: str) -> Refusal | None:
    """The policy behind an API server's refusal message, or None if it names none mirror-py knows."""
    m = _POD_SECURITY.search(message)
    if m:
        level = m.group("level")
        return Refusal(f'Pod Security level "{level}" of namespace {namespace} (label '
                       f"pod-security.kubernetes.io/enforce={level})", m.group(0),
                       _pod_security_advice(kind, level, namespace))
    m = _QUOTA_MISSING.search(message)
    if m:
        keys = sorted({RESOURCE_KEYS[k] for k in RESOURCE_KEYS if k in m.group("detail")})
        return Refusal(f"ResourceQuota {m.group('name')} of namespace {namespace}", m.group(0),
                       f"mirror-py declares them from {', '.join(keys) or 'the agent.*_request/_limit keys'}: "
                       "give each a value (an empty one leaves it out)")
    m = _QUOTA_EXCEEDED.search(message)
    if m:
        return Refusal(f"ResourceQuota {m.group('name')} of namespace {namespace}", m.group(0),
                       "the quota has no room for the agent: lower agent.cpu_request, agent.memory_request, "
                       "agent.cpu_limit or agent.memory_limit, or free some of the quota")
    m = _WEBHOOK.search(message) or _POLICY.search(message)
    if m:
        what = "admission webhook" if m.re is _WEBHOOK else "ValidatingAdmissionPolicy"
        return Refusal(f"{what} {m.group('name')}", m.group("detail"),
                       "ask the cluster's admins to admit mirror-py's agents (k8s/admission-policy.yaml "
                       "describes their shape)")
    return None


def refused(message: str, kind: str, namespace: str) -> str | None:
    """One line for a refusal of ``kind`` (a key of :data:`WHAT`), or None if no known policy refused it."""
    found = classify(message, kind, namespace)
    if found is None:
        return None
    return f"{WHAT[kind]} was refused by the {found.policy}: {found.detail.strip()}; {found.advice}"


def job_refusal(events: list[dict[str, Any]], namespace: str) -> str | None:
    """The newest ``FailedCreate`` of a Job's events, explained; None while there is none."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    message = str(newest.get("message") or "")
    return refused(message, "job", namespace) or (
        f"{WHAT['job']} could not be created: {message.removeprefix('Error creating: ')}")
