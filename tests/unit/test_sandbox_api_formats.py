"""The sandbox API server's formats on their own: protobuf request bodies, Table cells, watch options and list
pages (tests/e2e/test_real_clients.py has kubectl and the official client judge them whole)."""

from __future__ import annotations

import pytest

from tests.sandbox import listing, protobuf, tables, watch
from tests.sandbox.manifest import ApiError


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return protobuf.MAGIC + _field(1, type_meta) + _field(2, raw) + _field(4, protobuf.MEDIA_TYPE.encode())


def test_protobuf_access_review_reads_as_its_json() -> None:
    # Go writes empty fields too: an unknown but empty field (99) and empty strings read as absent.
    attributes = (_field(1, b"staging") + _field(2, b"create") + _field(3, b"") + _field(5, b"pods")
                  + _field(6, b"exec") + _field(99, _field(1, b"") + _field(2, 0)))
    meta = _field(1, b"") + _field(8, b"") + _field(11, _field(1, b"team") + _field(2, b"a"))
    raw = _field(1, meta) + _field(2, _field(1, attributes)) + _field(3, _field(1, 0))
    obj = protobuf.decode_object(_envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", raw))
    assert obj == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {"labels": {"team": "a"}},
        "spec": {"resourceAttributes": {"namespace": "staging", "verb": "create", "resource": "pods",
                                        "subresource": "exec"}},
    }


def test_protobuf_secret_data_reads_as_base64() -> None:
    raw = _field(1, _field(1, b"s1")) + _field(2, _field(1, b"key") + _field(2, b"\x00\xff")) + _field(3, b"")
    assert protobuf.decode_object(_envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"key": "AP8="}}


def test_protobuf_other_kinds_unread_fields_and_bad_bytes_are_refused() -> None:
    with pytest.raises(ApiError) as unknown:
        protobuf.decode_object(_envelope("v1", "Pod", b""))
    assert unknown.value.code == 415 and "Pod" in unknown.value.message
    with pytest.raises(ApiError) as unread:
        protobuf.decode_object(_envelope("v1", "ServiceAccount", _field(2, _field(1, b"a-secret"))))
    assert unread.value.code == 415 and "field 2 of ServiceAccount" in unread.value.message
    for body in (b'{"kind": "Pod"}', protobuf.MAGIC + b"\x0a\x05ab", protobuf.MAGIC + b"\x0f"):
        with pytest.raises(ApiError) as bad:
            protobuf.decode_object(body)
        assert bad.value.code == 400 and "unknown format" in bad.value.message


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (302, "5m2s"), (600, "10m"),
    (179 * 60, "179m"), (3 * 3600, "3h"), (7 * 3600 + 60, "7h1m"), (47 * 3600, "47h"), (2 * 86400, "2d"),
    (2 * 86400 + 3600, "2d1h"), (30 * 86400, "30d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_human_durations_as_kubectl_prints_them(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_accept_header_negotiation() -> None:
    kubectl = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
               "application/json")
    assert tables.requested_view(kubectl, {}) == tables.View(True, "v1", "Metadata")
    assert tables.requested_view("application/json;as=Table;v=v1beta1;g=meta.k8s.io", {"includeObject": ["Object"]}) \
        == tables.View(True, "v1beta1", "Object")
    assert not tables.requested_view("application/vnd.kubernetes.protobuf,application/json", {}).table
    assert not tables.requested_view(None, {}).table
    with pytest.raises(ApiError) as refused:
        tables.requested_view("application/vnd.kubernetes.protobuf", {})
    assert refused.value.code == 406


def test_pod_row_reports_the_first_waiting_reason_and_ready_containers() -> None:
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": [
                {"name": "a", "ready": True, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": False, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
        },
    }
    name, ready, status, restarts, _age, ip, node, *_ = tables.table("pods", [pod], tables.View(True), 1)["rows"][0][
        "cells"]
    assert (name, ready, status, restarts, ip, node) == ("p", "1/2", "CrashLoopBackOff", "3", "10.0.0.1", "n")


def test_watch_options_validated_like_the_real_server() -> None:
    opts = watch.WatchOptions.from_query({"sendInitialEvents": ["true"], "resourceVersionMatch": ["NotOlderThan"],
                                          "allowWatchBookmarks": ["true"], "resourceVersion": ["42"]})
    assert opts.initial_events and opts.bookmarks
    assert watch.WatchOptions.from_query({}).initial_events
    assert not watch.WatchOptions.from_query({"resourceVersion": ["42"]}).initial_events
    for query in ({"sendInitialEvents": ["true"]}, {"resourceVersionMatch": ["NotOlderThan"]},
                  {"sendInitialEvents": ["true"], "resourceVersionMatch": ["NotOlderThan"]}):
        with pytest.raises(ApiError) as invalid:
            watch.WatchOptions.from_query(query)
        assert invalid.value.code == 422
    with pytest.raises(ApiError) as bad:
        watch.WatchOptions.from_query({"resourceVersion": ["abc"]})
    assert bad.value.code == 400


def test_list_pages_cover_everything_once() -> None:
    items = [{"metadata": {"namespace": ns, "name": n}} for ns in ("a", "b") for n in ("x", "y", "z")]
    seen, query = [], {"limit": ["4"]}
    while True:
        page, meta = listing.page(items, query, 77)
        seen += page
        assert meta["resourceVersion"] == "77"
        if "continue" not in meta:
            break
        assert meta["remainingItemCount"] == len(items) - len(seen)
        query = {"limit": ["4"], "continue": [meta["continue"]]}
    assert seen == items
    with pytest.raises(ApiError):
        listing.page(items, {"continue": ["not-a-token"]}, 1)
