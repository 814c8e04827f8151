"""Telling a slow image pull from a start that is stuck, from the kubelet's events.

A first session on a node pulls the agent image, and on a slow registry that takes longer than
``agent.startup_timeout``. Failing then would make the user raise a timeout that also delays every real
failure. The pod's status only says ``ContainerCreating`` either way; the kubelet's events say more: ``Pulling``
when it starts pulling a container's image, then ``Pulled`` (or ``Failed``/``BackOff``). While the last of
them is ``Pulling``, the pull is still going and the wait may go on, up to a bound.
"""

from __future__ import annotations

import re

#: How long a pull may extend the wait, in units of agent.startup_timeout (at 60 s: 10 minutes in all).
PULL_EXTENSIONS = 10
#: Reasons the kubelet gives a container's image events; only the last one counts.
_PULL_REASONS = {"Pulling", "Pulled", "Failed", "BackOff", "ErrImageNeverPull", "InspectFailed", "Created",
                 "Started"}
_IMAGE = re.compile(r'image "([^"]+)"')


def container_field(name: str, ephemeral: bool) -> str:
    """The ``involvedObject.fieldPath`` the kubelet gives a container's events."""
    return f"spec.{'ephemeralContainers' if ephemeral else 'containers'}{{{name}}}"


def _when(event: dict) -> tuple[str, int]:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""
    try:
        version = int((event.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        version = 0
    return str(stamp), version


def pulling(events: list[dict], field_path: str) -> str | None:
    """The image still being pulled for the container at ``field_path``, or None when its last image event is
    not a pull in progress (no event yet, pulled, failed)."""
    own = [e for e in events if (e.get("involvedObject") or {}).get("fieldPath") == field_path
           and e.get("reason") in _PULL_REASONS]
    if not own:
        return None
    last = max(own, key=_when)
    if last.get("reason") != "Pulling":
        return None
    found = _IMAGE.search(last.get("message") or "")
    return found.group(1) if found else "its image"
