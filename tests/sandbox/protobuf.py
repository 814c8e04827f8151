"""Request bodies in Kubernetes' protobuf encoding, for the kinds real clients send that way.

kubectl's typed clients send ``Content-Type: application/vnd.kubernetes.protobuf``: ``kubectl auth can-i``
POSTs its SelfSubjectAccessReview like that, ``kubectl create namespace|configmap|secret|serviceaccount`` their
objects. client-go falls back to JSON after a 415 only for CBOR bodies, never for protobuf, so a refusal is not
an answer a real client recovers from: the server must read protobuf.

The encoding is the ``k8s\\x00`` magic, then a ``runtime.Unknown`` envelope (type meta, raw bytes), the raw
bytes being the object's generated message. This module reads the wire format and turns the messages named
in SCHEMAS into the same dicts their JSON would give. A field it does not know is skipped when empty (Go writes
those too) and refused with a 415 otherwise, as is a kind without a schema (workloads: their pod templates are
large; kubectl sends them as JSON through ``apply`` and ``create -f``).
"""

from __future__ import annotations

import base64
from typing import Any

from tests.sandbox.manifest import ApiError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# message -> field number -> (JSON name, type). A type is "string", "bool", "int", "map" (string to string),
# "bytesmap" (string to bytes, base64 in JSON), "ignored" (read past: what a create ignores, like status), a
# message name, or "[]" + one of those for a repeated field. Go's encoder writes every non-pointer field, empty
# ones included; a field missing here is accepted only when it is empty, otherwise the body is refused rather
# than read without it.
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "bytes"), 3: ("contentEncoding", "string"),
                4: ("contentType", "string")},
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                   4: ("selfLink", "ignored"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
                   7: ("generation", "int"), 8: ("creationTimestamp", "ignored"), 11: ("labels", "map"),
                   12: ("annotations", "map"), 14: ("finalizers", "[]string"), 17: ("managedFields", "ignored")},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"), 2: ("spec", "SelfSubjectAccessReviewSpec"),
                                3: ("status", "ignored")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                           4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                           7: ("name", "string")},
    "NonResourceAttributes": {1: ("path", "string"), 2: ("verb", "string")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "ignored")},
    "NamespaceSpec": {1: ("finalizers", "[]string")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "bytesmap"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "bytesmap"), 3: ("type", "string"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 4: ("automountServiceAccountToken", "bool")},
}
KINDS = {
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "SelfSubjectAccessReview",
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "ServiceAccount"): "ServiceAccount",
}


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """The (field number, wire type, value) triples of a message, in order: varints as ints, length-delimited
    fields as bytes; fixed-width fields as their little-endian ints."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated length-delimited field")
            out.append((number, wire, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(data):
                raise WireError("truncated fixed-width field")
            out.append((number, wire, int.from_bytes(data[pos : pos + width], "little")))
            pos += width
        else:
            raise WireError(f"unsupported wire type {wire}")
    return out


def is_empty(wire: int, value: int | bytes) -> bool:
    """Whether a field holds its zero value: 0, no bytes, or a message whose fields are all empty."""
    if isinstance(value, int):
        return value == 0
    if not value:
        return True
    try:
        return all(is_empty(w, v) for _n, w, v in fields(value))
    except WireError:
        return False


class UnreadField(ValueError):
    """A non-empty field the schema does not know: reading on without it would change the object."""


def decode(message: str, data: bytes) -> dict[str, Any]:
    """A message as the dict its JSON encoding gives: empty scalars left out, as Go's ``omitempty`` does."""
    schema = SCHEMAS[message]
    out: dict[str, Any] = {}
    for number, wire, value in fields(data):
        if number not in schema:
            if not is_empty(wire, value):
                raise UnreadField(f"field {number} of {message} is not read by the sandbox")
            continue
        name, kind = schema[number]
        repeated = kind.startswith("[]")
        kind = kind[2:] if repeated else kind
        if kind == "ignored":
            continue
        if kind in ("map", "bytesmap"):
            if not isinstance(value, bytes):
                raise WireError(f"{message}.{name}: a map entry must be length-delimited")
            entry = {n: v for n, _w, v in fields(value)}
            key, item = entry.get(1, b""), entry.get(2, b"")
            if not isinstance(key, bytes) or not isinstance(item, bytes):
                raise WireError(f"{message}.{name}: a map entry must hold strings")
            text = base64.b64encode(item).decode() if kind == "bytesmap" else item.decode()
            out.setdefault(name, {})[key.decode()] = text
            continue
        if kind in ("bool", "int"):
            if wire != 0 or not isinstance(value, int):
                raise WireError(f"{message}.{name}: expected a varint")
            item_value: Any = bool(value) if kind == "bool" else value
        else:
            if wire != 2 or not isinstance(value, bytes):
                raise WireError(f"{message}.{name}: expected a length-delimited field")
            if kind == "string":
                item_value = value.decode()
            elif kind == "bytes":
                item_value = value
            else:
                item_value = decode(kind, value)
        if repeated:
            out.setdefault(name, []).append(item_value)
        elif item_value or kind not in ("string", "bool", "int"):
            out[name] = item_value
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A request body in the protobuf encoding as the object its JSON would be: apiVersion, kind and fields.
    A body that is not the encoding is a 400; a kind this server cannot read, a 415."""
    if not body.startswith(MAGIC):
        raise ApiError.bad_request("the body of the request was in an unknown format - missing the k8s protobuf "
                                   "magic prefix")
    try:
        envelope = decode("Unknown", body[len(MAGIC) :])
        type_meta = envelope.get("typeMeta") or {}
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        message = KINDS.get((api_version, kind))
        if message is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f'the body of the request was in an unknown format - accepted media types include: '
                f'application/json, application/yaml (the sandbox reads {MEDIA_TYPE} only for '
                f'{", ".join(k for _, k in KINDS)}; got {kind or "an object without kind"})',
            )
        obj = decode(message, envelope.get("raw") or b"")
    except UnreadField as exc:
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - {exc}; "
                       "send it as application/json") from None
    except (WireError, UnicodeDecodeError) as exc:
        raise ApiError.bad_request(f"the body of the request was in an unknown format - {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
