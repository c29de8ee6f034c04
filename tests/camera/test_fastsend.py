"""The shared-packetization send loop against real aiortc viewers on loopback:
SRTP the viewers decrypt, one packetization per access unit for all viewers,
NACKs answered from the kept packets (RTX), and the fallback for the rest."""

from __future__ import annotations

import asyncio
import struct

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from camera import track
from camera.broadcaster import Broadcaster
from camera.compat import fastsend, packetize_h264
from camera.frames import Layer
from camera.session import ViewerSession
from camera.sources.base import VideoSettings
from camera.sources.testpattern import TestPatternSource
from camera.webrtc import make_peer_connection, prefer_h264
from tests.conftest import scaled

SMALL = VideoSettings(width=320, height=240, fps=30, bitrate=400_000, low_layer=False)


async def _viewer(broadcaster: Broadcaster) -> tuple[RTCPeerConnection, ViewerSession]:
    viewer = make_peer_connection([])
    prefer_h264(viewer.addTransceiver("video", direction="recvonly"))
    await viewer.setLocalDescription(await viewer.createOffer())
    session = ViewerSession("v" * 20, broadcaster, [], lambda s, r: None)
    answer = await session.answer(viewer.localDescription.sdp)
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return viewer, session


async def test_two_viewers_decode_frames_packetized_once_and_nacks_are_served() -> None:
    source = TestPatternSource(SMALL, pattern="texture")
    broadcaster = Broadcaster(source.request_keyframe)
    await source.start(broadcaster.publish)
    peers = [await _viewer(broadcaster) for _ in range(2)]
    try:
        tracks = [pc.getTransceivers()[0].receiver.track for pc, _ in peers]
        for track in tracks:  # decoded pictures: SRTP, RTP and H.264 are all right
            for _ in range(5):
                picture = await asyncio.wait_for(track.recv(), scaled(10))
                assert (picture.width, picture.height) == (320, 240)
        feed = broadcaster.feed(Layer.HIGH)
        # Both viewers got the same frames, each cut into payloads once.
        assert 0 < feed.packetizations <= feed.frames_published

        sender = peers[0][1].pc.getTransceivers()[0].sender
        sent: list[bytes] = []
        send_rtp = sender.transport._send_rtp

        async def capture(data: bytes) -> None:
            sent.append(data)
            await send_rtp(data)

        sender.transport._send_rtp = capture  # type: ignore[method-assign]
        stats = fastsend.stats_of(sender)  # the loop is ours, not aiortc's
        assert stats is not None and stats.direct_sends == stats.packets > 0
        # The IDR it started with is counted as such (the ladder tells IDRs that do not
        # fit a link by their share of what is resent), the frames after it are not.
        assert 0 < stats.keyframe_packets < stats.packets
        # The last packet sent is still kept: resent as RTX (its own SSRC, the
        # original sequence number in front of the payload).
        latest = stats.last_sequence_number
        assert latest is not None
        before = len(sent)
        await sender._retransmit(latest)
        assert len(sent) == before + 1 and stats.retransmitted == 1
        rtx = sent[-1]
        assert struct.unpack_from("!L", rtx, 8)[0] == sender._rtx_ssrc
        assert struct.unpack_from("!H", RtpPacket.parse(rtx).payload)[0] == latest
        # A packet long gone: not resent, the camera asks its source for an IDR instead.
        requests = broadcaster.keyframe_requests
        await sender._retransmit((latest + 30000) & 0xFFFF)
        assert len(sent) == before + 1
        assert broadcaster.keyframe_requests == requests + 1
    finally:
        for pc, session in peers:
            await session.close("done")
            await pc.close()
        await source.close()
        broadcaster.close()


def test_packetize_h264_cuts_like_aiortc() -> None:
    import fractions

    import av
    from aiortc.codecs.h264 import H264Encoder

    unit = b"\x00\x00\x00\x01\x67" + bytes(20) + b"\x00\x00\x01\x68" + bytes(4) + (
        b"\x00\x00\x01\x65" + bytes(range(256)) * 20)
    packet = av.Packet(unit)
    packet.pts, packet.time_base = 0, fractions.Fraction(1, 90000)
    assert list(packetize_h264(unit)) == H264Encoder().pack(packet)[0]
    assert all(len(p) <= 1300 for p in packetize_h264(unit))


def test_a_changed_sender_or_packetizer_is_refused_by_name() -> None:
    import types

    import aiortc
    from aiortc import RTCRtpSender
    from aiortc.codecs.h264 import H264Encoder

    from camera.compat import IncompatibleLibrary

    class NoLoop:
        async def _retransmit(self, sequence_number: int) -> None: ...

    with pytest.raises(IncompatibleLibrary, match="NoLoop._run_rtp is missing"):
        fastsend.check_members(aiortc, NoLoop, H264Encoder)
    with pytest.raises(IncompatibleLibrary, match="_split_bitstream is missing"):
        fastsend.check_members(aiortc, RTCRtpSender, types.SimpleNamespace)
    # A track that cannot hand out shared payloads keeps aiortc's own loop.
    sender = types.SimpleNamespace(track=object())
    assert fastsend.share_packetization(sender) is None  # type: ignore[arg-type]


async def test_a_low_layer_idr_is_spread_over_most_of_a_frame_interval() -> None:
    """A viewer on the layer for thin links gets each IDR's packets spread (a thin link's
    queue takes them)."""
    layered = VideoSettings(width=640, height=480, fps=30, bitrate=1_500_000,
                            low_bitrate=400_000)
    source = TestPatternSource(layered, pattern="texture")
    broadcaster = Broadcaster(source.request_keyframe, layers=layered.layers)
    await source.start(broadcaster.publish)
    viewer, session = await _viewer_on(broadcaster, Layer.LOW)
    try:
        receiver = viewer.getTransceivers()[0].receiver
        arrivals: dict[int, list[float]] = {}
        keyframes: set[int] = set()
        handle = receiver._handle_rtp_packet
        loop = asyncio.get_running_loop()

        async def timed(packet: RtpPacket, arrival_time_ms: int) -> None:
            arrivals.setdefault(packet.timestamp, []).append(loop.time())
            if packet.payload[:1] and packet.payload[0] & 0x1F in (7, 24):  # SPS / STAP-A
                keyframes.add(packet.timestamp)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = timed  # type: ignore[method-assign]
        received = receiver.track
        picture = await asyncio.wait_for(received.recv(), scaled(10))
        assert (picture.width, picture.height) == (320, 240)  # the low layer
        source.request_keyframe(Layer.LOW)
        for _ in range(20):
            await asyncio.wait_for(received.recv(), scaled(10))
        spread = [max(times) - min(times) for ts, times in arrivals.items()
                  if ts in keyframes and len(times) > 4]
        assert spread, arrivals
        # Packet i of n leaves i/n of the spread in: the last at (n-1)/n of it.
        assert track.LOW_KEYFRAME_SPREAD >= 0.02
        assert min(spread) >= 0.5 * track.LOW_KEYFRAME_SPREAD, spread
    finally:
        await session.close("done")
        await viewer.close()
        await source.close()
        broadcaster.close()


async def _viewer_on(broadcaster: Broadcaster, layer: Layer
                     ) -> tuple[RTCPeerConnection, ViewerSession]:
    viewer, session = await _viewer(broadcaster)
    assert session.track is not None
    session.track.switch_to(layer)  # before its first frame: it joins on that layer
    return viewer, session


async def test_padding_reaches_the_viewer_on_the_rtx_ssrc_and_is_dropped_unread() -> None:
    """What a padding probe sends: padding-only RTX packets, as many bytes as asked for,
    which the viewer's receiver takes in (its link carried them) and drops unread;
    the picture and the media counters go on as if they were not there."""
    source = TestPatternSource(SMALL, pattern="texture")
    broadcaster = Broadcaster(source.request_keyframe)
    await source.start(broadcaster.publish)
    viewer, session = await _viewer(broadcaster)
    try:
        receiver = viewer.getTransceivers()[0].receiver
        received = receiver.track
        padding: list[RtpPacket] = []
        order: list[str] = []  # "p" padding, "m" media, in arrival order
        handle = receiver._handle_rtp_packet

        async def watched(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not packet.payload:
                padding.append(packet)
            order.append("m" if packet.payload else "p")
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = watched  # type: ignore[method-assign]
        await asyncio.wait_for(received.recv(), scaled(10))
        sender = session.pc.getTransceivers()[0].sender
        stats = fastsend.stats_of(sender)
        assert stats is not None
        packets, octets = stats.packets, sender._RTCRtpSender__octet_count
        sent = await fastsend.send_padding(sender, 10_000)
        # At least what was asked, at most one packet more.
        assert 10_000 <= sent < 10_000 + 400
        assert stats.padding_bytes == sent and stats.padding_packets >= 10_000 // 300
        for _ in range(3):  # the viewer still decodes pictures after the padding
            await asyncio.wait_for(received.recv(), scaled(10))
        assert len(padding) == stats.padding_packets
        assert {p.ssrc for p in padding} == {sender._rtx_ssrc}
        assert {p.padding_size for p in padding} == {fastsend.PADDING_BYTES}
        # Consecutive RTX sequence numbers; none counted as media.
        sequence = [p.sequence_number for p in padding]
        assert sequence == [(sequence[0] + i) & 0xFFFF for i in range(len(sequence))]
        assert stats.packets - packets < 20  # only the frames sent meanwhile
        assert sender._RTCRtpSender__octet_count - octets < 20 * 1200
        assert await fastsend.send_padding(sender, 0) == 0
        # A burst goes out just before the next frame's packets: they queue behind it.
        order.clear()
        assert fastsend.pad_before_next_frame(sender, 3000)
        async with asyncio.timeout(scaled(5)):
            while stats.bursts < 1 or "m" not in order[order.index("p"):]:
                await asyncio.sleep(0.01)
        burst = "".join(order)
        assert "m" + "p" * 11 + "m" in burst or burst.startswith("p" * 11 + "m"), burst
        assert not fastsend.pad_before_next_frame(object(), 3000)  # type: ignore[arg-type]
    finally:
        await session.close("done")
        await viewer.close()
        await source.close()
        broadcaster.close()


async def _layered_viewer(broadcaster: Broadcaster, *, rtx: bool
                          ) -> tuple[RTCPeerConnection, ViewerSession]:
    from camera.webrtc import h264_preferences

    viewer = make_peer_connection([])
    codecs = [c for c in h264_preferences() if rtx or c.mimeType != "video/rtx"]
    viewer.addTransceiver("video", direction="recvonly").setCodecPreferences(codecs)
    await viewer.setLocalDescription(await viewer.createOffer())
    session = ViewerSession("v" * 20, broadcaster, [], lambda s, r: None,
                            layer_bitrates={Layer.HIGH: 1_500_000, Layer.LOW: 400_000})
    answer = await session.answer(viewer.localDescription.sdp)
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    assert session.track is not None
    session.track.switch_to(Layer.LOW)
    return viewer, session


@pytest.mark.parametrize("rtx", [True, False], ids=["rtx", "no-rtx"])
async def test_a_move_up_pads_first_where_the_viewer_has_rtx(rtx: bool) -> None:
    """With RTX negotiated a move up to the high layer waits for its padding probe (on
    loopback the link takes it); without RTX there is nothing to pad with, and the
    move is made at once, as before padding probes."""
    layered = VideoSettings(width=640, height=480, fps=30, bitrate=1_500_000,
                            low_bitrate=400_000)
    source = TestPatternSource(layered, pattern="texture")
    broadcaster = Broadcaster(source.request_keyframe, layers=layered.layers)
    await source.start(broadcaster.publish)
    viewer, session = await _layered_viewer(broadcaster, rtx=rtx)
    try:
        received = viewer.getTransceivers()[0].receiver.track
        picture = await asyncio.wait_for(received.recv(), scaled(10))
        assert picture.width == 320  # on the low layer
        quality, sender = session.quality, session.pc.getTransceivers()[0].sender
        assert quality is not None and session.track is not None
        stats = fastsend.stats_of(sender)
        assert stats is not None
        quality.controller.switched(1, quality._clock())  # it knows the viewer is low
        quality.controller.pending = 0  # as the controller's decision to probe up leaves it
        assert quality._start_padding(Layer.HIGH, quality._clock())
        task = quality._probe_task
        assert task is not None
        await asyncio.wait_for(task, scaled(10))
        assert quality.padding_probes == 1 and quality.padding_probes_failed == 0
        assert Layer.HIGH in (session.track.target, session.track.layer)  # the move
        if rtx:
            assert stats.padding_bytes > 0 and stats.bursts == 1
        else:
            assert stats.padding_bytes == 0 and stats.bursts == 0
    finally:
        await session.close("done")
        await viewer.close()
        await source.close()
        broadcaster.close()
