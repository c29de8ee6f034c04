"""The playout-delay header extension: its bytes, the header it goes into, the offer
it is read from, and real aiortc viewers that do and do not get it."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions
from aiortc.sdp import SessionDescription

from camera.broadcaster import Broadcaster
from camera.compat import PlayoutDelay, fastsend
from camera.compat.playout import MAX_MS, URI, offered_id
from camera.config import CameraConfig
from camera.errors import BadConfig
from camera.session import ViewerSession
from camera.sources.base import VideoSettings
from camera.sources.testpattern import TestPatternSource
from camera.webrtc import make_peer_connection, prefer_h264
from tests.conftest import scaled

SMALL = VideoSettings(width=320, height=240, fps=30, bitrate=400_000, low_layer=False)
CHROMIUM_OFFER = (Path(__file__).parent / "data" / "chromium-156-video-offer.sdp").read_text()
"""A recvonly video offer Chromium 156 made (createOffer, nothing changed)."""


def test_the_extension_carries_two_12_bit_counts_of_10_ms() -> None:
    assert PlayoutDelay(0, 0).value == b"\x00\x00\x00"
    assert PlayoutDelay(100, 1000).value == bytes([0x00, 0xA0, 0x64])  # 10 and 100 steps
    assert PlayoutDelay(MAX_MS, MAX_MS).value == b"\xff\xff\xff"
    for bad, words in (((0, 15), "max_ms 15"), ((-10, 0), "min_ms -10"),
                       ((0, MAX_MS + 10), f"max_ms {MAX_MS + 10}"), ((50, 20), "50..20")):
        with pytest.raises(BadConfig, match=words):
            PlayoutDelay(*bad)


def test_the_setting_turns_it_off_and_bounds_the_largest_delay() -> None:
    assert CameraConfig().playout_delay_limits == PlayoutDelay(0, 0)
    assert CameraConfig(playout_delay_max_ms=100).playout_delay_limits == PlayoutDelay(0, 100)
    assert CameraConfig(playout_delay=False).playout_delay_limits is None
    with pytest.raises(BadConfig, match="playout_delay_max_ms 25"):
        CameraConfig(playout_delay_max_ms=25)


def _extensions(datagram: bytes) -> dict[int, bytes]:
    """The header extensions of an RTP (or SRTP: its header is in the clear) packet."""
    if not datagram[0] & 0x10:
        return {}
    at = 12 + 4 * (datagram[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", datagram, at)
    return dict(unpack_header_extensions(profile, datagram[at + 4 : at + 4 + 4 * words]))


def test_the_extension_is_added_to_aiortcs_header_in_the_form_it_chose() -> None:
    packet = RtpPacket(payload_type=102, sequence_number=7, timestamp=9, ssrc=0x1234)
    packet.extensions.mid, packet.extensions.abs_send_time = "0", 0xABCDEF
    ids = HeaderExtensionsMap()
    ids.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=9, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(
            id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    plain = packet.serialize(ids)
    header = fastsend.with_extensions(plain, {5: b"\x00\x00\x00"})
    assert struct.unpack_from("!H", header, 12)[0] == 0xBEDE and len(header) % 4 == 0
    assert _extensions(header) == {9: b"0", 2: b"\xab\xcd\xef", 5: b"\x00\x00\x00"}
    # aiortc reads it back (the payload follows the block), its own fields intact.
    parsed = RtpPacket.parse(header + b"payload", ids)
    assert (parsed.sequence_number, parsed.timestamp, parsed.ssrc) == (7, 9, 0x1234)
    assert parsed.extensions.mid == "0" and parsed.payload == b"payload"
    # An id above 14 needs the two-byte form, for the whole block.
    two = fastsend.with_extensions(plain, {15: b"\x00\x00\x00"})
    assert struct.unpack_from("!H", two, 12)[0] == 0x1000
    assert _extensions(two) == {9: b"0", 2: b"\xab\xcd\xef", 15: b"\x00\x00\x00"}
    # A header without extensions gets a block.
    bare = RtpPacket(payload_type=102, ssrc=1).serialize()
    assert _extensions(fastsend.with_extensions(bare, {5: b"\x01\x02\x03"})) == {
        5: b"\x01\x02\x03"}
    with pytest.raises(ValueError, match="extension 0 with 3 byte"):
        fastsend.add_header_extension(object(), 0, b"abc")  # type: ignore[arg-type]


def test_chromiums_offer_lists_the_extension() -> None:
    assert offered_id(CHROMIUM_OFFER, "0") == 5
    assert offered_id(CHROMIUM_OFFER, "1") is None  # no such m-line
    assert f"a=extmap:5 {URI}" in CHROMIUM_OFFER


def test_the_line_scan_reads_the_id_as_aiortcs_parser_does() -> None:
    # Variants of a real offer: a direction on the extmap, the URI on an audio
    # m-line only, two video m-lines, no mid, other line endings.
    def parsed(sdp: str, mid: str | None) -> int | None:
        for media in SessionDescription.parse(sdp).media:
            if media.kind == "video" and (mid is None or media.rtp.muxId == mid):
                for ext in media.rtp.headerExtensions:
                    if ext.uri == URI:
                        return int(ext.id)
        return None

    video = CHROMIUM_OFFER[CHROMIUM_OFFER.index("m=video"):]
    session = CHROMIUM_OFFER[:CHROMIUM_OFFER.index("m=video")]
    second = video.replace("a=mid:0", "a=mid:1").replace(f"a=extmap:5 {URI}",
                                                         f"a=extmap:11/recvonly {URI}")
    audio = video.replace("m=video", "m=audio").replace("a=mid:0", "a=mid:2")
    variants = {
        "as made": CHROMIUM_OFFER,
        "direction": CHROMIUM_OFFER.replace(f"a=extmap:5 {URI}", f"a=extmap:5/sendrecv {URI}"),
        "two videos": session + video.replace(f"a=extmap:5 {URI}\r\n", "") + second,
        "audio only": session + video.replace(f"a=extmap:5 {URI}\r\n", "") + audio,
        "no mid": CHROMIUM_OFFER.replace("a=mid:0\r\n", ""),
        "bare newlines": CHROMIUM_OFFER.replace("\r\n", "\n"),
    }
    seen = set()
    for name, sdp in variants.items():
        for mid in (None, "0", "1", "2"):
            assert offered_id(sdp, mid) == parsed(sdp, mid), (name, mid)
            seen.add(offered_id(sdp, mid))
    assert seen == {None, 5, 11}  # the variants do exercise found and not found


class _Tap:
    """The SRTP session of a DTLS transport, keeping every protected RTP datagram."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.datagrams: list[bytes] = []

    def protect(self, packet: bytes) -> bytes:
        datagram: bytes = self.inner.protect(packet)
        self.datagrams.append(datagram)
        return datagram

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def tap_sent_rtp(sender: RTCRtpSender, timeout: float) -> _Tap:
    """From now on, every SRTP datagram ``sender``'s transport sends (once DTLS is up)."""
    dtls = sender.transport
    async with asyncio.timeout(timeout):
        while getattr(dtls, "_tx_srtp", None) is None:
            await asyncio.sleep(0.02)
    tap = _Tap(dtls._tx_srtp)
    dtls._tx_srtp = tap
    return tap


def video_extensions(tap: _Tap, ssrc: int) -> list[dict[int, bytes]]:
    """The header extensions of each tapped RTP packet of the video SSRC."""
    return [_extensions(d) for d in tap.datagrams
            if 128 <= d[0] < 192 and not 192 <= d[1] <= 223  # RTCP's types (RFC 5761)
            and struct.unpack_from("!L", d, 8)[0] == ssrc]


async def _viewer(broadcaster: Broadcaster, *, offer_extension: bool,
                  delay: PlayoutDelay | None) -> tuple[RTCPeerConnection, ViewerSession, str]:
    viewer = make_peer_connection([])
    prefer_h264(viewer.addTransceiver("video", direction="recvonly"))
    await viewer.setLocalDescription(await viewer.createOffer())
    offer = viewer.localDescription.sdp
    if offer_extension:  # as a browser lists it (aiortc does not)
        offer = offer.replace("a=mid:0\r\n", f"a=mid:0\r\na=extmap:7 {URI}\r\n")
        assert offered_id(offer, "0") == 7
    session = ViewerSession("v" * 20, broadcaster, [], lambda s, r: None, playout_delay=delay)
    answer = await session.answer(offer)
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return viewer, session, answer


async def test_only_a_viewer_that_offers_it_and_a_camera_that_asks_gets_it() -> None:
    source = TestPatternSource(SMALL)
    broadcaster = Broadcaster(source.request_keyframe)
    await source.start(broadcaster.publish)
    cases = [(True, PlayoutDelay(0, 0)), (True, None), (False, PlayoutDelay(0, 0))]
    peers = [await _viewer(broadcaster, offer_extension=o, delay=d) for o, d in cases]
    try:
        taps = [await tap_sent_rtp(s.pc.getTransceivers()[0].sender, scaled(10))
                for _, s, _ in peers]
        for pc, _, _ in peers:  # every viewer decodes pictures, the extension or not
            track = pc.getTransceivers()[0].receiver.track
            for _ in range(5):
                await asyncio.wait_for(track.recv(), scaled(10))
        seen = [video_extensions(tap, s.pc.getTransceivers()[0].sender._ssrc)
                for tap, (_, s, _) in zip(taps, peers, strict=True)]
        assert all(seen), "no video packet was tapped"
        assert f"a=extmap:7 {URI}" in peers[0][2]
        assert all(x.get(7) == b"\x00\x00\x00" for x in seen[0])  # on every packet
        assert all(1 in x for x in seen[0])  # aiortc's own (MID) still there
        for (_, _, answer), packets in zip(peers[1:], seen[1:], strict=True):
            assert URI not in answer
            assert all(7 not in x for x in packets)
    finally:
        for pc, session, _ in peers:
            await session.close("done")
            await pc.close()
        await source.close()
        broadcaster.close()
