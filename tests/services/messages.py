"""A legal example of every field and every message type, for tests that break them.

``legal(role, mtype)`` passes ``validate``; the hostile-input tests replace one
field (or a string inside it) at a time and check what the parser, the router
and the real server make of it.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from services.signaling import SCHEMAS, Role, device_id_from_digest

DEVICE = device_id_from_digest(hashlib.sha256(b"camera").digest())

FIELDS: dict[str, Any] = {
    "device_id": DEVICE,
    "session_id": "s" * 22,
    "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
    "viewer_key": "K" * 122,
    "device_key": "D" * 122,
    "signature": "S" * 86,
    "proof": "P" * 43,
    "nonce": "N" * 24,
    "timestamp": 1_700_000_000_000,
    "name": "kitchen tablet",
    "seq": 0,
    "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host generation 0",
    "sdp_mid": "0",
    "sdp_mline_index": 0,
    "ice_servers": [{"urls": ["turn:192.0.2.1:3478"], "username": "u", "credential": "c"}],
    "server": "peercam",
    "reason": "viewer left",
    "code": "bad-message",
    "message": "what went wrong",
}

#: Every (sender, type) in the schema table.
TYPES = sorted(SCHEMAS, key=str)


def legal(role: Role, mtype: str) -> dict[str, Any]:
    """A legal message of ``mtype`` from ``role`` with every optional field present."""
    schema = SCHEMAS[(role, mtype)]
    obj: dict[str, Any] = {"type": mtype}
    for name in [*schema.required, *schema.optional]:
        obj[name] = copy.deepcopy(FIELDS[name])
    return obj


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (keys and indexes) to every string inside ``value``."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_paths(v, (*path, i))]
    return []


def replaced(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with the item at ``path`` set to ``value``."""
    out = copy.deepcopy(obj)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def path_text(path: tuple[Any, ...]) -> str:
    """``("ice_servers", 0, "username")`` -> ``"ice_servers[0].username"``."""
    text = str(path[0])
    for key in path[1:]:
        text += f"[{key}]" if isinstance(key, int) else f".{key}"
    return text
