"""The part of Kubernetes' protobuf encoding FakeCluster reads: the objects kubectl sends that way.

kubectl sends what it creates as ``application/vnd.kubernetes.protobuf`` when the server's
discovery offers it: a ``runtime.Unknown`` envelope around the object's own message. This decoder
reads only the fields the stand-in needs (names, an RBAC role's rules and a binding's subjects and
``roleRef``, a Pod's ServiceAccount, a TokenRequest's spec), with no generated code.
"""

from __future__ import annotations

from typing import Any

PROTOBUF = "application/vnd.kubernetes.protobuf"
_PROTOBUF_MAGIC = b"k8s\x00"


def _proto_fields(data: bytes) -> dict[int, list[Any]]:
    """The fields of one protobuf message: number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 2:
            length = varint()
            value, i = data[i : i + length], i + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _proto_str(fields: dict[int, list[Any]], number: int) -> str | None:
    values = fields.get(number)
    return values[-1].decode() if values else None


def from_protobuf(raw: bytes, kind: str) -> dict[str, Any]:
    """What this stand-in reads of a ServiceAccount, Pod or TokenRequest that kubectl sent as protobuf
    (kube-apiserver's ``runtime.Unknown`` envelope around the object's own message)."""
    if not raw.startswith(_PROTOBUF_MAGIC):
        raise ValueError("not a Kubernetes protobuf envelope")
    envelope = _proto_fields(raw[len(_PROTOBUF_MAGIC) :])
    obj = _proto_fields(envelope.get(2, [b""])[-1])
    meta = _proto_fields(obj.get(1, [b""])[-1])
    result: dict[str, Any] = {"metadata": {"name": _proto_str(meta, 1)}}
    if kind in ("clusterroles", "roles"):
        result["rules"] = [_proto_policy_rule(_proto_fields(rule)) for rule in obj.get(2, [])]
        return result
    if kind in ("clusterrolebindings", "rolebindings"):
        result["subjects"] = [_proto_subject(_proto_fields(subject)) for subject in obj.get(2, [])]
        ref = _proto_fields(obj.get(3, [b""])[-1])
        result["roleRef"] = {
            "apiGroup": _proto_str(ref, 1) or "",
            "kind": _proto_str(ref, 2) or "",
            "name": _proto_str(ref, 3) or "",
        }
        return result
    spec = _proto_fields(obj.get(2, [b""])[-1])
    if kind == "pods":
        result["spec"] = {"serviceAccountName": _proto_str(spec, 8)}
    elif kind == "token":
        token_spec: dict[str, Any] = {"audiences": [a.decode() for a in spec.get(1, [])]}
        if 4 in spec:
            token_spec["expirationSeconds"] = spec[4][-1]
        if 3 in spec:
            ref = _proto_fields(spec[3][-1])
            token_spec["boundObjectRef"] = {
                "kind": _proto_str(ref, 1),
                "apiVersion": _proto_str(ref, 2),
                "name": _proto_str(ref, 3),
                "uid": _proto_str(ref, 4),
            }
        result["spec"] = token_spec
    return result


def _proto_policy_rule(rule: dict[int, list[Any]]) -> dict[str, Any]:
    """An RBAC ``PolicyRule`` as JSON, from its protobuf fields."""
    keys = {1: "verbs", 2: "apiGroups", 3: "resources", 4: "resourceNames", 5: "nonResourceURLs"}
    return {key: [v.decode() for v in rule[number]] for number, key in keys.items() if number in rule}


def _proto_subject(subject: dict[int, list[Any]]) -> dict[str, Any]:
    """An RBAC ``Subject`` as JSON, from its protobuf fields."""
    keys = {1: "kind", 2: "apiGroup", 3: "name", 4: "namespace"}
    return {key: _proto_str(subject, number) for number, key in keys.items() if number in subject}
