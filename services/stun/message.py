"""STUN messages (RFC 8489) with the RFC 5780 behaviour-discovery attributes.

Sans-I/O: bytes in, :class:`Message` out, and back. One registry, ``ATTRIBUTES``,
names every attribute we understand as ``(type, name, pack, unpack)``; both
directions are driven by it. :func:`parse` raises :class:`MalformedMessage` (a
``ValueError``) with a message naming the offending value for every malformed
packet, so callers that face the network need catch only ``ValueError``.

MESSAGE-INTEGRITY (short-term credentials, HMAC-SHA1, RFC 8489 section 14.5) is
here so the RFC 5769 vectors can be checked end to end; our STUN server does not
authenticate Binding requests (RFC 8489 section 9: credentials are optional).
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import InvalidMessage, MalformedMessage, StunError

__all__ = [
    "ATTRIBUTES",
    "Address",
    "ChangeRequest",
    "InvalidMessage",
    "MalformedMessage",
    "Message",
    "MessageClass",
    "Method",
    "StunError",
    "parse",
]

# RFC 8489 section 5: the fixed header and its magic cookie.
MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
# RFC 8489 section 14.7: CRC-32 of the message up to FINGERPRINT, XORed with "STUN".
FINGERPRINT_XOR = 0x5354554E
FINGERPRINT_LENGTH = 8  # attribute header + 32-bit value
# RFC 8489 section 14.5: HMAC-SHA1, 20 bytes, plus the attribute header.
INTEGRITY_LENGTH = 24
# RFC 8489 section 14.1: address families of (XOR-)MAPPED-ADDRESS.
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
# RFC 8489 section 14: types below 0x8000 are comprehension-required.
COMPREHENSION_OPTIONAL = 0x8000


class MessageClass(enum.IntEnum):
    """RFC 8489 section 5: the two class bits C1 C0."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class Method(enum.IntEnum):
    """RFC 8489 section 18.2: STUN methods (TURN's are not ours to serve)."""

    BINDING = 0x001


class ChangeRequest(enum.IntFlag):
    """RFC 5780 section 7.2: the flags of CHANGE-REQUEST."""

    NONE = 0
    CHANGE_PORT = 0x2
    CHANGE_IP = 0x4


Address = tuple[str, int]


def encode_type(method: int, message_class: int) -> int:
    """RFC 8489 section 5: interleave M11..M0 with C1 C0 as M11-M7 C1 M6-M4 C0 M3-M0."""
    if not 0 <= method <= 0xFFF:
        raise InvalidMessage(f"STUN method 0x{method:x} does not fit in 12 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def decode_type(message_type: int) -> tuple[int, MessageClass]:
    """The inverse of :func:`encode_type`: (method, class)."""
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    message_class = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10)
    return method, MessageClass(message_class)


def _padding(length: int) -> int:
    # RFC 8489 section 14: values are padded to a multiple of 4 bytes.
    return -length % 4


def _with_length(head: bytes, body_length: int) -> bytes:
    return head[:2] + struct.pack("!H", body_length) + head[4:]


def fingerprint(data: bytes) -> int:
    """RFC 8489 section 14.7: FINGERPRINT over ``data`` (the message before it).

    The header length counts the FINGERPRINT attribute itself.
    """
    covered = _with_length(data, len(data) - HEADER_LENGTH + FINGERPRINT_LENGTH)
    return binascii.crc32(covered) ^ FINGERPRINT_XOR


def message_integrity(data: bytes, key: bytes) -> bytes:
    """RFC 8489 section 14.5: HMAC-SHA1 over ``data`` (the message before it).

    The header length counts MESSAGE-INTEGRITY itself but not what follows it.
    With short-term credentials the key is the (OpaqueString-prepared) password.
    """
    covered = _with_length(data, len(data) - HEADER_LENGTH + INTEGRITY_LENGTH)
    return hmac.new(key, covered, "sha1").digest()


# --- attribute value codecs: pack(value, transaction_id), unpack(data, transaction_id, name)


def _xor_pad(transaction_id: bytes) -> bytes:
    # RFC 8489 section 14.2: port XOR the cookie's top 16 bits, address XOR
    # cookie (IPv4) or cookie || transaction ID (IPv6).
    return struct.pack("!I", MAGIC_COOKIE) + transaction_id


def _pack_address(value: Address, transaction_id: bytes, xor: bool) -> bytes:
    host, port = value
    ip = ipaddress.ip_address(host)
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    if not 0 <= port <= 0xFFFF:
        raise InvalidMessage(f"port {port} is out of range 0..65535")
    raw_port, raw_ip = port, ip.packed
    if xor:
        pad = _xor_pad(transaction_id)
        raw_port ^= MAGIC_COOKIE >> 16
        raw_ip = bytes(a ^ b for a, b in zip(raw_ip, pad, strict=False))
    return struct.pack("!BBH", 0, family, raw_port) + raw_ip


def _unpack_address(data: bytes, transaction_id: bytes, name: str, xor: bool) -> Address:
    if len(data) < 4:
        raise MalformedMessage(f"{name}: value is {len(data)} bytes, needs at least 4")
    family = data[1]
    if family == FAMILY_IPV4:
        size = 4
    elif family == FAMILY_IPV6:
        size = 16
    else:
        raise MalformedMessage(f"{name}: unknown address family 0x{family:02x}")
    if len(data) != 4 + size:
        raise MalformedMessage(
            f"{name}: IPv{4 if size == 4 else 6} value is {len(data)} bytes, expected {4 + size}"
        )
    port = struct.unpack("!H", data[2:4])[0]
    raw_ip = data[4:]
    if xor:
        pad = _xor_pad(transaction_id)
        port ^= MAGIC_COOKIE >> 16
        raw_ip = bytes(a ^ b for a, b in zip(raw_ip, pad, strict=False))
    return str(ipaddress.ip_address(raw_ip)), port


def pack_address(value: Address, transaction_id: bytes) -> bytes:
    return _pack_address(value, transaction_id, xor=False)


def unpack_address(data: bytes, transaction_id: bytes, name: str) -> Address:
    return _unpack_address(data, transaction_id, name, xor=False)


def pack_xor_address(value: Address, transaction_id: bytes) -> bytes:
    return _pack_address(value, transaction_id, xor=True)


def unpack_xor_address(data: bytes, transaction_id: bytes, name: str) -> Address:
    return _unpack_address(data, transaction_id, name, xor=True)


def _fixed(data: bytes, size: int, name: str) -> bytes:
    if len(data) != size:
        raise MalformedMessage(f"{name}: value is {len(data)} bytes, expected {size}")
    return data


def pack_uint32(value: int, transaction_id: bytes) -> bytes:
    return struct.pack("!I", value)


def unpack_uint32(data: bytes, transaction_id: bytes, name: str) -> int:
    value: int = struct.unpack("!I", _fixed(data, 4, name))[0]
    return value


def pack_uint64(value: int, transaction_id: bytes) -> bytes:
    return struct.pack("!Q", value)


def unpack_uint64(data: bytes, transaction_id: bytes, name: str) -> int:
    value: int = struct.unpack("!Q", _fixed(data, 8, name))[0]
    return value


def pack_change_request(value: ChangeRequest, transaction_id: bytes) -> bytes:
    return struct.pack("!I", int(value))


def unpack_change_request(data: bytes, transaction_id: bytes, name: str) -> ChangeRequest:
    # RFC 5780 section 7.2: only the A (change IP) and B (change port) bits mean
    # anything; the rest are ignored on receipt.
    raw = unpack_uint32(data, transaction_id, name)
    return ChangeRequest(raw & (ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT))


def pack_text(value: str, transaction_id: bytes) -> bytes:
    return value.encode("utf-8")


def unpack_text(data: bytes, transaction_id: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"{name}: value is not UTF-8 ({exc.reason})") from None


def pack_raw(value: bytes, transaction_id: bytes) -> bytes:
    return value


def unpack_integrity(data: bytes, transaction_id: bytes, name: str) -> bytes:
    return _fixed(data, 20, name)


def pack_empty(value: None, transaction_id: bytes) -> bytes:
    return b""


def unpack_empty(data: bytes, transaction_id: bytes, name: str) -> None:
    _fixed(data, 0, name)


def pack_error_code(value: tuple[int, str], transaction_id: bytes) -> bytes:
    # RFC 8489 section 14.8: 21 reserved bits, class (hundreds) in 3 bits,
    # number (0..99) in 8 bits, then a UTF-8 reason phrase.
    code, reason = value
    if not 300 <= code <= 699:
        raise InvalidMessage(f"ERROR-CODE {code} is outside 300..699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def unpack_error_code(data: bytes, transaction_id: bytes, name: str) -> tuple[int, str]:
    if len(data) < 4:
        raise MalformedMessage(f"{name}: value is {len(data)} bytes, needs at least 4")
    error_class, number = data[2] & 0x07, data[3]
    if not 3 <= error_class <= 6 or number > 99:
        raise MalformedMessage(f"{name}: invalid code class {error_class} number {number}")
    return error_class * 100 + number, unpack_text(data[4:], transaction_id, name)


def pack_unknown_attributes(value: tuple[int, ...], transaction_id: bytes) -> bytes:
    # RFC 8489 section 14.9: a list of 16-bit attribute types.
    return b"".join(struct.pack("!H", t) for t in value)


def unpack_unknown_attributes(data: bytes, transaction_id: bytes, name: str) -> tuple[int, ...]:
    if len(data) % 2:
        raise MalformedMessage(f"{name}: value is {len(data)} bytes, not a multiple of 2")
    return tuple(struct.unpack(f"!{len(data) // 2}H", data))


class Attribute(NamedTuple):
    type: int
    name: str
    pack: Callable[[Any, bytes], bytes]
    unpack: Callable[[bytes, bytes, str], Any]


ATTRIBUTES: tuple[Attribute, ...] = (
    # RFC 8489 section 14 / 18.3
    Attribute(0x0001, "MAPPED-ADDRESS", pack_address, unpack_address),
    Attribute(0x0006, "USERNAME", pack_text, unpack_text),
    Attribute(0x0008, "MESSAGE-INTEGRITY", pack_raw, unpack_integrity),
    Attribute(0x0009, "ERROR-CODE", pack_error_code, unpack_error_code),
    Attribute(0x000A, "UNKNOWN-ATTRIBUTES", pack_unknown_attributes, unpack_unknown_attributes),
    Attribute(0x0020, "XOR-MAPPED-ADDRESS", pack_xor_address, unpack_xor_address),
    Attribute(0x8022, "SOFTWARE", pack_text, unpack_text),
    Attribute(0x8028, "FINGERPRINT", pack_uint32, unpack_uint32),
    # RFC 5780 section 7
    Attribute(0x0003, "CHANGE-REQUEST", pack_change_request, unpack_change_request),
    Attribute(0x802B, "RESPONSE-ORIGIN", pack_address, unpack_address),
    Attribute(0x802C, "OTHER-ADDRESS", pack_address, unpack_address),
    # RFC 8445 section 16.1 (ICE): in the RFC 5769 sample request
    Attribute(0x0024, "PRIORITY", pack_uint32, unpack_uint32),
    Attribute(0x0025, "USE-CANDIDATE", pack_empty, unpack_empty),
    Attribute(0x8029, "ICE-CONTROLLED", pack_uint64, unpack_uint64),
    Attribute(0x802A, "ICE-CONTROLLING", pack_uint64, unpack_uint64),
)
ATTRIBUTES_BY_TYPE: dict[int, Attribute] = {a.type: a for a in ATTRIBUTES}
ATTRIBUTES_BY_NAME: dict[str, Attribute] = {a.name: a for a in ATTRIBUTES}

_KNOWN_METHODS = frozenset(m.value for m in Method)
# Computed by encode() from its arguments, never taken from ``attributes``.
_TRAILERS = ("MESSAGE-INTEGRITY", "FINGERPRINT")


def _new_transaction_id() -> bytes:
    # RFC 8489 section 5: cryptographically random, so off-path attackers
    # cannot forge responses.
    return secrets.token_bytes(TRANSACTION_ID_LENGTH)


@dataclass(eq=False)
class Message:
    """One STUN message.

    ``attributes`` maps registry names to decoded values, in wire order. After
    :func:`parse` it also holds MESSAGE-INTEGRITY and FINGERPRINT as received;
    :meth:`encode` ignores those two and computes them from its arguments.
    """

    method: int
    """The 12-bit method; a :class:`Method` when we know it."""
    message_class: MessageClass
    transaction_id: bytes = field(default_factory=_new_transaction_id)
    attributes: dict[str, Any] = field(default_factory=dict)
    unknown_required: tuple[int, ...] = ()
    """Comprehension-required attribute types (< 0x8000) we did not understand."""
    integrity_input: bytes | None = field(default=None, repr=False)
    """After parse: the bytes MESSAGE-INTEGRITY covers (length already adjusted)."""

    def __post_init__(self) -> None:
        if len(self.transaction_id) != TRANSACTION_ID_LENGTH:
            raise InvalidMessage(f"transaction ID is {len(self.transaction_id)} bytes, must be 12")

    def encode(
        self,
        *,
        integrity_key: bytes | None = None,
        add_fingerprint: bool = True,
        padding: bytes = b"\x00",
    ) -> bytes:
        """The wire form: attributes, then MESSAGE-INTEGRITY, then FINGERPRINT.

        ``padding`` is the byte used to pad values; RFC 8489 section 14 lets it be
        anything and asks for zero (the RFC 5769 vectors use spaces).
        """
        body = bytearray()
        for name, value in self.attributes.items():
            if name in _TRAILERS:
                continue
            entry = ATTRIBUTES_BY_NAME.get(name)
            if entry is None:
                raise InvalidMessage(f"unknown STUN attribute name {name!r}")
            try:
                data = entry.pack(value, self.transaction_id)
            except InvalidMessage:
                raise
            except (ValueError, TypeError, struct.error) as exc:
                raise InvalidMessage(f"{name}: cannot encode {value!r}: {exc}") from exc
            if len(data) > 0xFFFF:
                raise InvalidMessage(f"{name}: value of {len(data)} bytes does not fit")
            body += struct.pack("!HH", entry.type, len(data)) + data
            body += padding * _padding(len(data))
        head = struct.pack(
            "!HHI12s",
            encode_type(self.method, self.message_class),
            len(body),
            MAGIC_COOKIE,
            self.transaction_id,
        )
        out = head + bytes(body)
        if integrity_key is not None:
            mac = message_integrity(out, integrity_key)
            out += struct.pack("!HH", 0x0008, len(mac)) + mac
        if add_fingerprint:
            out += struct.pack("!HHI", 0x8028, 4, fingerprint(out))
        return _with_length(out, len(out) - HEADER_LENGTH)

    def check_integrity(self, key: bytes) -> bool:
        """RFC 8489 section 14.5: does MESSAGE-INTEGRITY match ``key``? False if absent."""
        received = self.attributes.get("MESSAGE-INTEGRITY")
        if self.integrity_input is None or not isinstance(received, bytes):
            return False
        expected = hmac.new(key, self.integrity_input, "sha1").digest()
        return hmac.compare_digest(received, expected)


def parse(data: bytes) -> Message:
    """Decode one STUN message (RFC 8489 sections 5 and 14).

    Verifies FINGERPRINT when present; MESSAGE-INTEGRITY is checked separately
    with :meth:`Message.check_integrity` because it needs a key.
    """
    if len(data) < HEADER_LENGTH:
        raise MalformedMessage(f"STUN header needs {HEADER_LENGTH} bytes, got {len(data)}")
    message_type, length, cookie = struct.unpack("!HHI", data[:8])
    transaction_id = bytes(data[8:HEADER_LENGTH])
    # RFC 8489 section 5: the two most significant bits are zero (this is what
    # tells STUN from RTP/DTLS on a multiplexed port), and the cookie is fixed.
    if message_type & 0xC000:
        raise MalformedMessage(f"STUN message type 0x{message_type:04x} has its top two bits set")
    if cookie != MAGIC_COOKIE:
        raise MalformedMessage(
            f"bad STUN magic cookie 0x{cookie:08x}, expected 0x{MAGIC_COOKIE:08x}"
        )
    if length % 4:
        raise MalformedMessage(f"STUN message length {length} is not a multiple of 4")
    available = len(data) - HEADER_LENGTH
    if length > available:
        raise MalformedMessage(
            f"STUN message length {length} exceeds the {available} bytes after the header"
        )
    if length < available:
        raise MalformedMessage(
            f"{available - length} bytes follow the STUN message of length {length}"
        )

    method, message_class = decode_type(message_type)
    known_method: int = Method(method) if method in _KNOWN_METHODS else method
    attributes: dict[str, Any] = {}
    unknown: list[int] = []
    integrity_input: bytes | None = None
    end = HEADER_LENGTH + length
    pos = HEADER_LENGTH
    while pos < end:
        # pos and end are multiples of 4, so a whole 4-byte attribute header is there.
        attr_type, attr_length = struct.unpack("!HH", data[pos : pos + 4])
        value_end = pos + 4 + attr_length
        if value_end + _padding(attr_length) > end:
            raise MalformedMessage(
                f"attribute 0x{attr_type:04x} at offset {pos} with length {attr_length}"
                f" overruns the {length}-byte message"
            )
        value = bytes(data[pos + 4 : value_end])
        entry = ATTRIBUTES_BY_TYPE.get(attr_type)
        if "FINGERPRINT" in attributes:
            # RFC 8489 section 14.7: FINGERPRINT is the last attribute.
            raise MalformedMessage(f"attribute 0x{attr_type:04x} follows FINGERPRINT")
        if entry is not None and entry.name == "FINGERPRINT":
            received = entry.unpack(value, transaction_id, entry.name)
            expected = fingerprint(bytes(data[:pos]))
            if received != expected:
                raise MalformedMessage(
                    f"FINGERPRINT 0x{received:08x} does not match 0x{expected:08x}"
                )
            attributes[entry.name] = received
        elif integrity_input is not None:
            # RFC 8489 section 14.5: ignore everything after MESSAGE-INTEGRITY
            # but FINGERPRINT; it is not authenticated.
            pass
        elif entry is None:
            if attr_type < COMPREHENSION_OPTIONAL and attr_type not in unknown:
                unknown.append(attr_type)
        elif entry.name not in attributes:
            # RFC 8489 section 14: of duplicate attributes only the first counts.
            attributes[entry.name] = entry.unpack(value, transaction_id, entry.name)
            if entry.name == "MESSAGE-INTEGRITY":
                integrity_input = _with_length(
                    bytes(data[:pos]), pos - HEADER_LENGTH + INTEGRITY_LENGTH
                )
        pos = value_end + _padding(attr_length)

    return Message(
        method=known_method,
        message_class=message_class,
        transaction_id=transaction_id,
        attributes=attributes,
        unknown_required=tuple(unknown),
        integrity_input=integrity_input,
    )
