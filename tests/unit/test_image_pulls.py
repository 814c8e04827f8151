"""A pull in progress, read from the kubelet's events the way mirror-py reads them while an agent starts."""

from __future__ import annotations

from mirror_py.kube import pulls

FIELD = pulls.container_field("mirror-py-abc", ephemeral=True)


def _event(reason: str, message: str, stamp: str, field: str = FIELD, version: int = 1) -> dict:
    return {"metadata": {"resourceVersion": str(version)}, "reason": reason, "message": message,
            "lastTimestamp": stamp, "involvedObject": {"kind": "Pod", "fieldPath": field}}


def test_the_last_image_event_decides():
    pulling = _event("Pulling", 'Pulling image "python:3.12-slim"', "2026-12-03T10:00:00Z", version=1)
    pulled = _event("Pulled", 'Successfully pulled image "python:3.12-slim" in 61s', "2026-12-03T10:01:01Z",
                    version=2)
    assert pulls.pulling([pulling], FIELD) == "python:3.12-slim"
    assert pulls.pulling([pulled, pulling], FIELD) is None
    failed = _event("Failed", 'Failed to pull image "x": not found', "2026-12-03T10:01:01Z", version=3)
    assert pulls.pulling([pulling, failed], FIELD) is None


def test_same_second_events_are_ordered_by_resource_version():
    pulling = _event("Pulling", 'Pulling image "a"', "2026-12-03T10:00:00Z", version=7)
    pulled = _event("Pulled", 'Successfully pulled image "a"', "2026-12-03T10:00:00Z", version=8)
    assert pulls.pulling([pulled, pulling], FIELD) is None


def test_other_containers_and_other_reasons_do_not_count():
    other = _event("Pulling", 'Pulling image "redis:7"', "2026-12-03T10:00:00Z",
                   field=pulls.container_field("redis", ephemeral=False))
    scheduled = _event("Scheduled", "Successfully assigned", "2026-12-03T10:00:00Z")
    assert pulls.pulling([other, scheduled], FIELD) is None
    assert pulls.pulling([], FIELD) is None


def test_field_paths_are_the_kubelets():
    assert pulls.container_field("agent", ephemeral=False) == "spec.containers{agent}"
    assert FIELD == "spec.ephemeralContainers{mirror-py-abc}"
