"""Signaling messages: the wire format, validated, with no I/O.

Bytes or text in, a typed :class:`Message` or :class:`ProtocolError` out; and
messages to dicts/text for sending. The asyncio adapters (the rendezvous server,
the camera agent, the CLI viewer) only move these across WebSockets. The
schema is a table (``SCHEMAS``): one row per message type per direction, each
field with its checker. The trust issue adds signature fields as new rows.
See docs/protocol.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.errors import ServiceError

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_BYTES = 32 * 1024
MAX_ICE_SERVERS = 8
#: Trickled ``candidate`` messages per session, the end-of-candidates one included:
#: ``seq`` runs from 0 to MAX_CANDIDATES - 1 and each value is accepted once.
MAX_CANDIDATES = 32
#: Characters in one candidate line (RFC 8839 section 5.1 sets no limit; browsers'
#: lines, extensions included, stay under 200).
MAX_CANDIDATE_CHARS = 512
#: Nesting levels :func:`loads` accepts. The deepest legal message nests four.
MAX_JSON_DEPTH = 32

_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Crockford base32 (no I, L, O, U), 26 data characters + 1 check symbol.
_DEVICE_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}[0-9A-HJKMNP-TV-Z*~$=U]")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CHECK_SYMBOLS = _CROCKFORD + "*~$=U"


class ErrorCode(StrEnum):
    """``error.code`` values (docs/protocol.md, Errors)."""

    BAD_MESSAGE = "bad-message"
    TOO_LARGE = "too-large"
    BAD_SIGNATURE = "bad-signature"
    NOT_REGISTERED = "not-registered"
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"
    UNKNOWN_SESSION = "unknown-session"
    RATE_LIMITED = "rate-limited"
    REPLACED = "replaced"
    TIMEOUT = "timeout"


class ProtocolError(ServiceError, ValueError):
    """A peer sent something the protocol does not allow."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Role(StrEnum):
    """Who sent the message; the same type may be legal from one and not the other."""

    CAMERA = "camera"
    VIEWER = "viewer"
    SERVER = "server"


# -- device IDs ----------------------------------------------------------------


def normalize_device_id(text: str) -> str:
    """Return the canonical ``XXXX-...-XXC`` form of a device ID, or raise ValueError."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("device_id: not a string of at most 64 characters")
    raw = text.replace("-", "").upper()
    if not _DEVICE_RE.fullmatch(raw):
        raise ValueError(f"device_id {text[:40]!r}: not 27 Crockford base32 characters")
    body, check = raw[:26], raw[26]
    value = 0
    for ch in body:
        value = value * 32 + _CROCKFORD.index(ch)
    if _CHECK_SYMBOLS[value % 37] != check:
        raise ValueError(f"device_id {text[:40]!r}: check character does not match")
    return "-".join(raw[i : i + 4] for i in range(0, 27, 4))


def device_id_from_digest(digest: bytes) -> str:
    """Encode the first 130 bits of ``digest`` as a device ID with a check symbol."""
    if len(digest) < 17:
        raise ValueError("digest: need at least 17 bytes (130 bits)")
    value = int.from_bytes(digest[:17], "big") >> (136 - 130)
    chars = []
    v = value
    for _ in range(26):
        chars.append(_CROCKFORD[v & 31])
        v >>= 5
    body = "".join(reversed(chars))
    return normalize_device_id(body + _CHECK_SYMBOLS[value % 37])


# -- field checkers --------------------------------------------------------------

Checker = Callable[[Any], Any]


def normalize_session_id(value: Any) -> str:
    """``value`` if it is a well-formed session ID, else ValueError."""
    if not isinstance(value, str) or not _SESSION_RE.fullmatch(value):
        raise ValueError("session_id: need 16-64 characters of [A-Za-z0-9_-]")
    return value


_session_id = normalize_session_id


def _device_id(value: Any) -> str:
    return normalize_device_id(value)


def _sdp(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("sdp: not a string")
    if len(value.encode()) > MAX_SDP_BYTES:
        raise ValueError(f"sdp: {len(value.encode())} bytes, limit {MAX_SDP_BYTES}")
    if not value.startswith("v=0"):
        raise ValueError("sdp: does not start with 'v=0'")
    if "\x00" in value:  # RFC 8866 section 9: no NUL anywhere in a session description
        raise ValueError("sdp: contains NUL")
    return value


#: C0 and C1 control characters and DEL: never in a one-line text field (a NUL
#: ends a C string in whatever logs or displays it; a newline splits a log line).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: A UTF-16 surrogate code point: JSON "\ud800" decodes to one, but it is not a
#: Unicode scalar value, and encoding it to UTF-8 (a signed statement, a log
#: file, aiortc's SDP) raises.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _short_text(limit: int) -> Checker:
    def check(value: Any) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"not a string of at most {limit} characters")
        if "\n" in value or "\r" in value:
            raise ValueError("newlines are not allowed")
        if _CONTROL_RE.search(value):
            raise ValueError("control characters (NUL included) are not allowed")
        return value

    return check


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")


def _b64url(name: str, lo: int, hi: int) -> Checker:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not lo <= len(value) <= hi:
            raise ValueError(f"{name}: need {lo}-{hi} base64url characters")
        if not _B64URL_RE.fullmatch(value):
            raise ValueError(f"{name}: not base64url without padding")
        return value

    return check


_public_key = _b64url("key", 80, 200)  # P-256 SPKI DER is 91 bytes: 122 characters
_signature = _b64url("signature", 86, 86)  # P1363 r||s, 64 bytes
_proof = _b64url("proof", 43, 43)  # HMAC-SHA256, 32 bytes
_nonce = _b64url("nonce", 16, 64)


# RFC 8839 section 5.1 (the grammar of RFC 8445 section 5.1 in SDP), with the
# "candidate:" prefix browsers put in RTCIceCandidate.candidate: foundation,
# component, transport, priority, address (IP or an mDNS ".local" name), port,
# "typ" and type, then extension name/value pairs (raddr, rport, generation, ufrag...).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_CANDIDATE_RE = re.compile(
    r"candidate:[A-Za-z0-9+/]{1,32} [0-9]{1,3} " + _TOKEN + r"{1,32} [0-9]{1,10}"
    r" [0-9A-Za-z.:_-]{1,255} [0-9]{1,5} typ " + _TOKEN + r"{1,32}"
    r"(?: [\x21-\x7e]{1,255} [\x21-\x7e]{1,255})*"
)
_MID_RE = re.compile(_TOKEN + r"{1,32}")  # RFC 5888 section 4: a token


def _candidate(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_CANDIDATE_CHARS:
        raise ValueError(f"not a string of at most {MAX_CANDIDATE_CHARS} characters")
    if value and not _CANDIDATE_RE.fullmatch(value):
        raise ValueError("not an ICE candidate line ('candidate:... typ ...') or ''")
    return value


def _sdp_mid(value: Any) -> str:
    if not isinstance(value, str) or not _MID_RE.fullmatch(value):
        raise ValueError("need 1-32 token characters (RFC 5888)")
    return value


def _small_int(name: str, hi: int) -> Checker:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < hi:
            raise ValueError(f"{name}: need an integer from 0 to {hi - 1}")
        return value

    return check


def _timestamp(value: Any) -> int:
    # bool is an int in Python; a JSON true is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise ValueError("timestamp: need integer milliseconds since 1970")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise ValueError("name: need 1-64 characters")
    if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise ValueError("name: control characters are not allowed")
    return value


def _error_code(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("code: not a string")
    if _CONTROL_RE.search(value):
        raise ValueError("code: control characters are not allowed")
    return value[:40]


def _ice_servers(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_ICE_SERVERS:
        raise ValueError(f"ice_servers: need a list of at most {MAX_ICE_SERVERS}")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) - {"urls", "username", "credential"}:
            raise ValueError("ice_servers: entries need urls[, username, credential]")
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(
            isinstance(u, str) and re.fullmatch(r"(stun|stuns|turn|turns):[!-~]{1,200}", u)
            for u in urls
        ):
            raise ValueError("ice_servers: urls must be stun:/turn: URLs")
        server: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if key in entry:
                server[key] = _short_text(256)(entry[key])
        out.append(server)
    return out


@dataclass(frozen=True, slots=True)
class Schema:
    required: Mapping[str, Checker]
    optional: Mapping[str, Checker] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    """Rules across fields, run on the checked fields; raises ValueError."""


_HELLO = Schema({"server": _short_text(255), "nonce": _nonce, "ice_servers": _ice_servers})
_ANSWER = Schema(
    {"session_id": _session_id, "sdp": _sdp, "device_key": _public_key, "signature": _signature}
)
_PAIRED = Schema({"session_id": _session_id, "device_key": _public_key, "signature": _signature})
_BYE = Schema({"session_id": _session_id}, {"reason": _short_text(200)})
_ERROR = Schema(
    {"code": _error_code, "message": _short_text(500)}, {"session_id": _session_id}
)
# What the viewer signs for an offer / a pairing request (docs/protocol.md, Statements).
_SIGNED_OFFER = {
    "session_id": _session_id,
    "sdp": _sdp,
    "viewer_key": _public_key,
    "timestamp": _timestamp,
    "signature": _signature,
}
def _candidate_fields(fields: Mapping[str, Any]) -> None:
    # aiortc (like RTCPeerConnection.addIceCandidate) needs one of the two to
    # know which m-section's transport a candidate belongs to.
    if fields["candidate"] and "sdp_mid" not in fields and "sdp_mline_index" not in fields:
        raise ValueError("a candidate needs sdp_mid or sdp_mline_index")


# A viewer's ICE candidate trickled after its offer; "" is end-of-candidates.
_SIGNED_CANDIDATE = Schema(
    {
        "session_id": _session_id,
        "seq": _small_int("seq", MAX_CANDIDATES),
        "candidate": _candidate,
        "signature": _signature,
    },
    {"sdp_mid": _sdp_mid, "sdp_mline_index": _small_int("sdp_mline_index", 64)},
    _candidate_fields,
)
_SIGNED_PAIR = {
    "session_id": _session_id,
    "viewer_key": _public_key,
    "name": _name,
    "timestamp": _timestamp,
    "signature": _signature,
    "proof": _proof,
}

#: (sender, type) -> schema. Anything not in this table is refused.
SCHEMAS: dict[tuple[Role, str], Schema] = {
    (Role.SERVER, "hello"): _HELLO,
    (Role.SERVER, "registered"): Schema({"device_id": _device_id, "ice_servers": _ice_servers}),
    (Role.SERVER, "prepared"): Schema({"session_id": _session_id, "ice_servers": _ice_servers}),
    (Role.SERVER, "offer"): Schema({**_SIGNED_OFFER, "ice_servers": _ice_servers}),
    (Role.SERVER, "answer"): _ANSWER,
    (Role.SERVER, "candidate"): _SIGNED_CANDIDATE,
    (Role.SERVER, "pair"): Schema(_SIGNED_PAIR),
    (Role.SERVER, "paired"): _PAIRED,
    (Role.SERVER, "bye"): _BYE,
    (Role.SERVER, "error"): _ERROR,
    (Role.SERVER, "online"): Schema({"device_id": _device_id}),
    (Role.CAMERA, "register"): Schema(
        {"device_id": _device_id, "device_key": _public_key, "signature": _signature}
    ),
    (Role.CAMERA, "answer"): _ANSWER,
    (Role.CAMERA, "paired"): _PAIRED,
    (Role.CAMERA, "bye"): _BYE,
    (Role.VIEWER, "prepare"): Schema({"device_id": _device_id, "session_id": _session_id}),
    (Role.VIEWER, "offer"): Schema({"device_id": _device_id, **_SIGNED_OFFER}),
    (Role.VIEWER, "candidate"): Schema(
        {"device_id": _device_id, **_SIGNED_CANDIDATE.required},
        _SIGNED_CANDIDATE.optional,
        _candidate_fields,
    ),
    (Role.VIEWER, "pair"): Schema({"device_id": _device_id, **_SIGNED_PAIR}),
    (Role.VIEWER, "bye"): _BYE,
    (Role.VIEWER, "watch"): Schema({"device_id": _device_id}),
}


@dataclass(frozen=True, slots=True)
class Message:
    """A validated message: its type and its checked fields."""

    type: str
    fields: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


class JSONTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`: refused before it is parsed."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def loads(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for text from a peer, refusing (:class:`JSONTooDeep`, a ValueError)
    anything nested deeper than ``max_depth`` before the recursive parser sees it.

    The parser recurses once per level: 64 KiB of ``[`` reaches the interpreter's
    recursion limit, and anything the interpreter calls meanwhile (a garbage
    collector callback, a signal handler) fails with RecursionError at that depth
    even though the parser's own error is caught. The check is C-speed string work:
    with no more openers than ``max_depth`` nothing is scanned; otherwise strings are
    cut out, every bracket kind folded to ``[]``, and one level of empty pairs
    removed per round."""
    if isinstance(data, (bytes, bytearray)):
        # As json.loads does: UTF-8, -16 or -32, told apart by the first bytes.
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    if data.count("[") + data.count("{") > max_depth:
        skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", data))
        skeleton = skeleton.replace("{", "[").replace("}", "]")
        if "[" * (max_depth + 1) in skeleton:  # the usual attack, found in one pass
            raise JSONTooDeep(f"JSON nested more than {max_depth} deep")
        for _ in range(max_depth):
            if not skeleton:
                break
            skeleton = skeleton.replace("[]", "")
        if skeleton:
            raise JSONTooDeep(f"JSON nested more than {max_depth} deep")
    return json.loads(data)


def parse(data: str | bytes, sender: Role) -> Message:
    """Validate one WebSocket frame from ``sender``; raise ProtocolError if it is not legal."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"message of {len(data)} bytes, limit {MAX_MESSAGE_BYTES}"
        )
    try:
        obj = loads(data)
    except JSONTooDeep:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not JSON: {exc}") from None
    return validate(obj, sender)


def validate(obj: Any, sender: Role) -> Message:
    """Check a decoded JSON value against ``SCHEMAS``."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message is not a JSON object")
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message has no string 'type'")
    if _SURROGATE_RE.search(mtype):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "type: not valid Unicode text")
    schema = SCHEMAS.get((sender, mtype))
    if schema is None:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"type {mtype[:40]!r} is not allowed from a {sender}"
        )
    unknown = set(obj) - {"type"} - set(schema.required) - set(schema.optional)
    if unknown:
        names = ", ".join(sorted(repr(k[:40]) for k in unknown)[:5])
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{mtype}: unknown field(s) {names}")
    fields: dict[str, Any] = {}
    for name, check in schema.required.items():
        if name not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{mtype}: missing field {name!r}")
        fields[name] = _check(mtype, name, check, obj[name])
    for name, check in schema.optional.items():
        if name in obj:
            fields[name] = _check(mtype, name, check, obj[name])
    if schema.check is not None:
        try:
            schema.check(fields)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{mtype}: {exc}") from None
    return Message(mtype, fields)


def _not_unicode(value: Any) -> str | None:
    """Where in ``value`` (a decoded JSON value) a string or key holds a lone
    surrogate, as a path (``""``, ``"[0].username"``), or None if none does.
    Iterative: a value nested 60,000 deep (built by a caller, not by
    ``json.loads``) must not exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE_RE.search(key):
                    return f"{path} (a key)"
                label = key if isinstance(key, str) and len(key) <= 20 else "?"
                stack.append((f"{path}.{_CONTROL_RE.sub('?', label)}", child))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _check(mtype: str, name: str, check: Checker, value: Any) -> Any:
    where = _not_unicode(value)
    if where is not None:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"{mtype}: {name}{where}: not valid Unicode text (a lone surrogate)",
        )
    try:
        return check(value)
    except ValueError as exc:
        text = str(exc)
        prefix = "" if text.startswith(name) else f"{name}: "
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{mtype}: {prefix}{text}") from None


def encode(sender: Role, mtype: str, **fields: Any) -> str:
    """Build one message as JSON text, checked against the same table we parse with."""
    obj = {"type": mtype, **{k: v for k, v in fields.items() if v is not None}}
    validate(obj, sender)
    return json.dumps(obj, separators=(",", ":"))


def error(code: ErrorCode, message: str, session_id: str | None = None) -> str:
    """An ``error`` message from the server."""
    return encode(Role.SERVER, "error", code=str(code), message=message, session_id=session_id)
