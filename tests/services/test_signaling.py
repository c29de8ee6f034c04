"""The signaling codec: legal messages pass, hostile ones fail with precise errors."""

import hashlib
import json

import pytest

from services.signaling import (
    MAX_MESSAGE_BYTES,
    ErrorCode,
    ProtocolError,
    Role,
    device_id_from_digest,
    encode,
    normalize_device_id,
    parse,
)

DEVICE = device_id_from_digest(hashlib.sha256(b"camera").digest())
SESSION = "s" * 22
SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"


def test_device_id_is_grouped_and_normalizes() -> None:
    assert len(DEVICE.replace("-", "")) == 27
    assert DEVICE.count("-") == 6
    assert normalize_device_id(DEVICE.lower().replace("-", "")) == DEVICE


def test_device_id_check_character_catches_a_typo() -> None:
    raw = DEVICE.replace("-", "")
    typo = ("1" if raw[3] != "1" else "2").join([raw[:3], raw[4:]])
    with pytest.raises(ValueError, match="check character"):
        normalize_device_id(typo)


@pytest.mark.parametrize("bad", ["", "0000", "I" * 27, "x" * 100, "O" * 27])
def test_device_id_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="device_id"):
        normalize_device_id(bad)


SIGNED = {"viewer_key": "K" * 122, "timestamp": 1_700_000_000_000, "signature": "S" * 86}


def test_round_trip_offer() -> None:
    text = encode(Role.VIEWER, "offer", device_id=DEVICE, session_id=SESSION, sdp=SDP, **SIGNED)
    message = parse(text, Role.VIEWER)
    assert message.type == "offer"
    assert message["device_id"] == DEVICE and message["sdp"] == SDP


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"kind": "offer"}', "no string 'type'"),
        ('{"type": "register", "device_id": "x"}', "not allowed from a viewer"),
        ('{"type": "offer"}', "missing field 'device_id'"),
        (json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION, "sdp": SDP}),
         "missing field 'viewer_key'"),
        (json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION, "sdp": SDP,
                     **SIGNED, "timestamp": True}), "timestamp"),
        (json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION, "sdp": SDP,
                     **SIGNED, "signature": "S" * 85 + "="}), "signature"),
        (json.dumps({"type": "pair", "device_id": DEVICE, "session_id": SESSION,
                     "viewer_key": "K" * 122, "name": "a\nb", "timestamp": 1,
                     "signature": "S" * 86, "proof": "P" * 43}), "control characters"),
        (json.dumps({"type": "bye", "session_id": SESSION, "evil": 1}), "unknown field"),
        (json.dumps({"type": "bye", "session_id": "short"}), "session_id"),
        (json.dumps({"type": "bye", "session_id": "../../etc/passwd!!!!"}), "session_id"),
        (
            json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION, "sdp": 5,
                        **SIGNED}),
            "sdp: not a string",
        ),
        (
            json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION,
                        "sdp": "hello", **SIGNED}),
            "does not start with 'v=0'",
        ),
        (
            json.dumps({"type": "offer", "device_id": DEVICE, "session_id": SESSION,
                        "sdp": "v=0" + "a" * 40_000, **SIGNED}),
            "limit 32768",
        ),
    ],
)
def test_hostile_viewer_messages_are_refused(payload: str | bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(payload, Role.VIEWER)
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert fragment in info.value.message


def test_oversized_frame_is_too_large() -> None:
    with pytest.raises(ProtocolError) as info:
        parse("x" * (MAX_MESSAGE_BYTES + 1), Role.CAMERA)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_ice_servers_are_checked() -> None:
    good = encode(Role.SERVER, "hello", server="s", nonce="n" * 16,
                  ice_servers=[{"urls": "stun:198.51.100.1:3478"}])
    assert parse(good, Role.SERVER)["ice_servers"] == [{"urls": ["stun:198.51.100.1:3478"]}]
    with pytest.raises(ProtocolError, match="stun:/turn:"):
        encode(Role.SERVER, "hello", server="s", nonce="n" * 16,
               ice_servers=[{"urls": "http://evil"}])


# -- trickled candidates ---------------------------------------------------------

CHROMIUM_LINE = ("candidate:4092273942 1 udp 2113937151 192.0.2.2 36458 typ host generation 0 "
                 "ufrag 2tFj network-cost 999")
RELAY_LINE = ("candidate:3 1 udp 41885439 2001:db8::5 50000 typ relay raddr 2001:db8::9 "
              "rport 40000 generation 0 ufrag 2tFj network-id 1")
MDNS_LINE = ("candidate:1 1 udp 2113937151 0b0e5d3c-2a9f-4a5e-9a57-6f1f3c1e2d4b.local 54321 "
             "typ host generation 0")


def candidate_obj(**fields: object) -> dict[str, object]:
    obj: dict[str, object] = {"type": "candidate", "device_id": DEVICE, "session_id": SESSION,
                              "seq": 0, "candidate": CHROMIUM_LINE, "sdp_mid": "0",
                              "sdp_mline_index": 0, "signature": "S" * 86}
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not None}


@pytest.mark.parametrize("line", [CHROMIUM_LINE, RELAY_LINE, MDNS_LINE, ""])
def test_candidates_browsers_send_are_accepted(line: str) -> None:
    message = parse(json.dumps(candidate_obj(candidate=line)), Role.VIEWER)
    assert message["candidate"] == line and message["sdp_mline_index"] == 0
    # The server forwards it without the device ID; the camera parses it as from the server.
    forwarded = encode(Role.SERVER, "candidate", **{
        k: v for k, v in message.fields.items() if k != "device_id"})
    assert parse(forwarded, Role.SERVER).fields["candidate"] == line


def test_end_of_candidates_needs_no_mid() -> None:
    message = parse(json.dumps(candidate_obj(candidate="", sdp_mid=None, sdp_mline_index=None,
                                             seq=31)), Role.VIEWER)
    assert message["candidate"] == "" and message.get("sdp_mid") is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"sdp_mid": None, "sdp_mline_index": None}, "needs sdp_mid or sdp_mline_index"),
        ({"candidate": "a=" + CHROMIUM_LINE}, "not an ICE candidate line"),
        ({"candidate": "candidate:1 1 udp 1 192.0.2.1 5 host"}, "not an ICE candidate line"),
        ({"candidate": CHROMIUM_LINE + "\r\na=evil"}, "not an ICE candidate line"),
        ({"candidate": CHROMIUM_LINE + " odd"}, "not an ICE candidate line"),
        ({"candidate": CHROMIUM_LINE + " x y" * 200}, "at most 512"),
        ({"candidate": 5}, "candidate"),
        ({"seq": 32}, "seq: need an integer from 0 to 31"),
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": "1"}, "seq"),
        ({"sdp_mid": ""}, "sdp_mid"),
        ({"sdp_mid": "a b"}, "sdp_mid"),
        ({"sdp_mline_index": 64}, "sdp_mline_index"),
        ({"signature": "S" * 85}, "signature"),
        ({"device_id": None}, "missing field 'device_id'"),
        ({"ufrag": "x"}, "unknown field"),
    ],
)
def test_hostile_candidates_are_refused(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(json.dumps(candidate_obj(**changes)), Role.VIEWER)
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert fragment in info.value.message
