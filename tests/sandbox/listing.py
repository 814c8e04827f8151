"""Lists in pages: ``limit`` and ``continue`` as the real API server answers them.

kubectl asks for ``limit=500`` and follows ``metadata.continue``; the official Python client's list helpers and
any informer do the same. A server that ignores ``limit`` hands a paging client everything at once, which hides
bugs in the client's own paging, so the sandbox pages. A continue token carries the list's resourceVersion and
the key to resume after; pages after the first show the objects as they are then (the real server serves them
from the first page's snapshot), a difference docs/sandbox-cluster.md names.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from tests.sandbox.manifest import ApiError


def _key(obj: dict[str, Any]) -> list[str]:
    return [obj["metadata"].get("namespace", ""), obj["metadata"]["name"]]


def page(
    items: list[dict[str, Any]], query: dict[str, list[str]], rv: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the page's items, the list metadata: resourceVersion, and continue/remainingItemCount when more remain).
    ``items`` must be sorted by namespace and name, as the store lists them."""
    limit_text = query.get("limit", [""])[0]
    token = query.get("continue", [""])[0]
    list_rv = rv
    if token:
        try:
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            after, list_rv = list(state["start"]), int(state["rv"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiError.bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                       "(version meta.k8s.io/v1)") from None
        items = [o for o in items if _key(o) > after]
    meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
    if not limit_text:
        return items, meta
    try:
        limit = int(limit_text)
    except ValueError:
        raise ApiError.bad_request(f'invalid value "{limit_text}" for limit') from None
    if limit <= 0 or len(items) <= limit:
        return items, meta
    shown = items[:limit]
    meta["continue"] = base64.urlsafe_b64encode(
        json.dumps({"rv": list_rv, "start": _key(shown[-1])}).encode()
    ).decode()
    meta["remainingItemCount"] = len(items) - limit
    return shown, meta
