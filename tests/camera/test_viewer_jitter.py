"""The CLI viewer's receiver hooks: marker release, bounded decoder queue, stamp corner.

Jitter-buffer tests are RTP packets in, frames out, against aiortc 1.16's own
JitterBuffer as the reference; the decoder-queue and stamp tests use real
libx264 access units and aiortc's H.264 decoder.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from fractions import Fraction
from pathlib import Path

import aiortc
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from camera import stamp
from camera.client.viewer import (
    MarkerJitterBuffer,
    Mp4Recorder,
    ReceiveSettings,
    _DecoderQueue,
    _hook_receiver,
    release_frames_on_marker,
    stamp_region,
)
from camera.compat.receiver import DECODER_ERROR_ATTR as _DECODER_ERROR_ATTR
from camera.compat.receiver import DECODER_QUEUE_ATTR as _DECODER_QUEUE_ATTR
from camera.compat.receiver import JITTER_BUFFER_ATTR as _JITTER_BUFFER_ATTR
from camera.compat.receiver import check_receiver_hooks
from camera.sources.base import VideoSettings
from camera.sources.x264 import X264Encoder

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=96)
Released = tuple[int, bytes]  # (timestamp, data)


def rtp(seq: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
    """A packet as aiortc's receiver hands it to the jitter buffer (depayloaded)."""
    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq % 65536,
                       timestamp=timestamp, payload=data)
    packet._data = data  # type: ignore[attr-defined]
    return packet


def frame_packets(first_seq: int, timestamp: int, count: int) -> list[RtpPacket]:
    """One frame of ``count`` packets, the marker on the last (RFC 6184 5.1)."""
    return [rtp(first_seq + i, timestamp, i == count - 1, b"%d.%d|" % (timestamp, i))
            for i in range(count)]


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, Released]]:
    """(index of the packet that released it, frame) for every frame released."""
    out = []
    for index, packet in enumerate(packets):
        _pli, frame = buffer.add(packet)
        if frame is not None:
            out.append((index, (frame.timestamp, frame.data)))
    return out


def video_buffers(capacity: int = 512) -> tuple[JitterBuffer, MarkerJitterBuffer]:
    """aiortc's video jitter buffer as the receiver makes it, and ours."""
    return (JitterBuffer(capacity=capacity, is_video=True),
            MarkerJitterBuffer(capacity=capacity, is_video=True))


# --- MarkerJitterBuffer ------------------------------------------------------------------


def test_in_order_frame_is_released_by_its_marker_packet() -> None:
    stock, ours = video_buffers()
    packets = frame_packets(100, 3000, 3) + frame_packets(103, 6000, 1)
    assert feed(ours, packets) == [(2, (3000, b"3000.0|3000.1|3000.2|")),
                                   (3, (6000, b"6000.0|"))]
    # aiortc's own buffer waits for the next frame's first packet, a frame late.
    assert feed(stock, packets) == [(3, (3000, b"3000.0|3000.1|3000.2|"))]


def test_out_of_order_packets_release_the_frame_when_the_last_one_arrives() -> None:
    _stock, ours = video_buffers()
    assert feed(ours, frame_packets(6, 0, 1)) == [(0, (0, b"0.0|"))]
    a, b, c = frame_packets(7, 90, 3)
    assert ours.add(c) == (False, None)  # marker first: the frame is not complete
    assert ours.add(a) == (False, None)
    pli, frame = ours.add(b)  # the missing middle packet completes it
    assert not pli and frame is not None
    assert (frame.timestamp, frame.data) == (90, b"90.0|90.1|90.2|")


def test_a_frame_with_a_lost_packet_is_not_released_early_and_later_frames_still_are() -> None:
    stock, ours = video_buffers()
    first = frame_packets(10, 1000, 3)
    second = frame_packets(13, 2000, 2)
    third = frame_packets(15, 3000, 2)
    lost = first[1]
    arrivals = [first[0], first[2], *second, *third]  # first[1] lost
    # Nothing comes out: the first frame has a hole, the rest queue behind it
    # (aiortc's order: NACK asks for the packet; the decoder must not see a hole).
    assert feed(ours, arrivals) == []
    assert feed(stock, arrivals) == []
    # The retransmission arrives: aiortc's own path releases the first frame ...
    _pli, frame = ours.add(lost)
    assert frame is not None and frame.data == b"1000.0|1000.1|1000.2|"
    # ... and the complete frames behind it go one per packet, the next one's marker
    # releasing that frame at once again.
    fourth = frame_packets(17, 4000, 2)
    assert feed(ours, fourth) == [(0, (2000, b"2000.0|2000.1|")), (1, (3000, b"3000.0|3000.1|"))]
    assert feed(ours, frame_packets(19, 5000, 1)) == [(0, (4000, b"4000.0|4000.1|"))]
    assert feed(ours, frame_packets(20, 6000, 2)) == [(0, (5000, b"5000.0|")),
                                                      (1, (6000, b"6000.0|6000.1|"))]


def test_a_lost_marker_packet_is_not_guessed() -> None:
    _stock, ours = video_buffers()
    first = frame_packets(0, 100, 3)
    second = frame_packets(3, 200, 2)
    # The first frame's marker packet is lost; the second frame is whole but behind it.
    assert feed(ours, [first[0], first[1], *second]) == []
    _pli, frame = ours.add(first[2])  # retransmitted
    assert frame is not None and frame.timestamp == 100


def test_a_packet_lost_for_good_ends_in_aiortcs_overflow_and_pli_then_frames_flow() -> None:
    _stock, ours = video_buffers(capacity=16)
    packets = [p for n in range(30) for p in frame_packets(2 * n, 1000 * n, 2)]
    arrivals = packets[:1] + packets[2:]  # the first frame's marker packet never comes
    plis = [ours.add(packet)[0] for packet in arrivals[:15]]
    assert not any(plis)  # stuck behind the hole, as aiortc is
    released = feed(ours, arrivals[15:])
    # aiortc's overflow handling dropped the stuck frame and asked for a keyframe;
    # the frames queued behind it drain one per packet (aiortc's pace), then each
    # frame comes out at its own marker again.
    assert ours.add(packets[1])[1] is None  # too late: that frame is gone
    timestamps = [ts for _i, (ts, _data) in released]
    assert timestamps == [1000 * n for n in range(1, 30)]
    marker_at = {p.timestamp: i for i, p in enumerate(arrivals[15:]) if p.marker}
    assert [i for i, (ts, _d) in released[-5:]] == [marker_at[ts] for _i, (ts, _d) in released[-5:]]


def test_sequence_numbers_wrap() -> None:
    _stock, ours = video_buffers()
    packets = frame_packets(65534, 500, 3) + frame_packets(65537, 600, 2)
    assert feed(ours, packets) == [(2, (500, b"500.0|500.1|500.2|")), (4, (600, b"600.0|600.1|"))]


@pytest.mark.parametrize("seed", range(40))
def test_same_frames_as_aiortc_never_later_under_loss_reordering_and_duplicates(
    seed: int,
) -> None:
    rng = random.Random(seed)
    sent: list[RtpPacket] = []
    seq = rng.randrange(65536)
    for n in range(60):
        count = rng.choice([1, 1, 2, 3, 5, 9])
        sent += frame_packets(seq, 3000 * n, count)
        seq += count
    # Each packet is delayed by up to a few packet slots; some are lost and come back
    # as a retransmission well later (as after a NACK); some arrive twice.
    timed: list[tuple[float, int, RtpPacket]] = []
    for i, packet in enumerate(sent):
        at = i + rng.random() * 3
        if rng.random() < 0.08:
            at += 5 + rng.random() * 20
        timed.append((at, i, packet))
        if rng.random() < 0.05:
            timed.append((at + rng.random() * 6, i, packet))
    arrivals = [packet for _at, _i, packet in sorted(timed, key=lambda t: (t[0], t[1]))]
    stock, ours = video_buffers()
    reference = feed(stock, arrivals)
    early = feed(ours, arrivals)
    # The same frames, in the same order (ours may also release the stream's last
    # frames, which aiortc holds until a packet after them arrives) ...
    assert [frame for _i, frame in early[: len(reference)]] == [f for _i, f in reference]
    assert len(early) >= len(reference) and len(reference) > 30
    # ... never later, and some sooner (behind a hole, both release one per packet).
    assert all(mine <= theirs for (mine, _), (theirs, _) in zip(early, reference, strict=False))
    assert any(mine < theirs for (mine, _), (theirs, _) in zip(early, reference, strict=False))


def _access_units(
    count: int, width: int = 320, height: int = 240, idrs: tuple[int, ...] = (0,)
) -> list[bytes]:
    """Real libx264 access units (IDRs where asked, else P frames), stamped."""
    # Enough bits that x264 skips no picture (each decoded picture is its own).
    bitrate = max(500_000, 3 * width * height)
    encoder = X264Encoder(VideoSettings(width, height, 30, bitrate, gop_seconds=10.0))
    base_ms = int(time.time() * 1000)
    units: list[bytes] = []
    try:
        for n in range(count):
            picture = _picture(width, height, n)
            stamp.paint(picture[:height], n, base_ms + 33 * n)
            units += [p.data for p in encoder.encode_yuv(picture, force_idr=n in idrs)]
    finally:
        encoder.close()
    return units


def _picture(width: int, height: int, n: int) -> np.ndarray:
    """A moving gradient with some noise, as I420 ``(h * 3 // 2, w)``."""
    rng = np.random.default_rng(n)
    x = np.arange(width)[None, :]
    y = np.arange(height * 3 // 2)[:, None]
    noise = rng.integers(-12, 13, (height * 3 // 2, width))
    picture: np.ndarray = np.clip((x * 3 + y * 2 + n * 7) % 220 + 16 + noise, 0, 255)
    return picture.astype(np.uint8)


def test_real_h264_packetized_by_aiortc_is_released_at_each_marker_and_decodes() -> None:
    units = _access_units(12)
    packer = H264Encoder()
    packets: list[RtpPacket] = []
    seq = 40_000
    for n, unit in enumerate(units):
        av_packet = av.Packet(unit)
        av_packet.pts, av_packet.time_base = n, Fraction(1, 30)
        payloads, timestamp = packer.pack(av_packet)  # what the camera's sender sends
        for i, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, marker=int(i == len(payloads) - 1),
                               sequence_number=seq % 65536, timestamp=timestamp, payload=payload)
            packet._data = h264_depayload(payload)  # type: ignore[attr-defined]
            packets.append(packet)
            seq += 1
    assert len(packets) > len(units)  # the IDR at least is fragmented (FU-A)
    stock, ours = video_buffers()
    early = feed(ours, packets)
    reference = feed(stock, packets)
    markers = [i for i, p in enumerate(packets) if p.marker]
    assert [i for i, _frame in early] == markers
    assert [f for _i, f in early[:-1]] == [f for _i, f in reference]
    decoder = H264Decoder()
    read = []
    for _i, (timestamp, data) in early:
        for decoded in decoder.decode(JitterFrame(data, timestamp)):
            read.append(stamp.read(stamp_region(decoded)))
    assert [r[0] for r in read if r is not None] == list(range(12))


# --- hooking the receiver, and its guard ----------------------------------------------------


async def test_hooks_replace_the_receivers_jitter_buffer_and_decoder_queue() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        stock = getattr(receiver, _JITTER_BUFFER_ATTR)
        check_receiver_hooks(receiver)
        decoder_queue, counters = _hook_receiver(receiver, None,
                                                 ReceiveSettings(playout=False, nack=False))
        assert counters is None
        jitter = getattr(receiver, _JITTER_BUFFER_ATTR)
        assert type(jitter) is MarkerJitterBuffer and jitter.capacity == stock.capacity
        assert getattr(receiver, _DECODER_QUEUE_ATTR) is decoder_queue
        # Once hooked (or started), a receiver is not what the hooks expect any more.
        with pytest.raises(RuntimeError, match="JitterBuffer the viewer hooks"):
            release_frames_on_marker(receiver)
    finally:
        await pc.close()


async def test_guard_names_the_unexpected_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        monkeypatch.setattr(aiortc, "__version__", "1.17.0")
        with pytest.raises(RuntimeError, match=r"aiortc 1\.16 .*found aiortc 1\.17\.0"):
            check_receiver_hooks(receiver)
        monkeypatch.undo()
        # A receiver whose private attributes moved (an aiortc refactor).
        monkeypatch.delattr(receiver, _DECODER_QUEUE_ATTR)
        with pytest.raises(RuntimeError, match=_DECODER_QUEUE_ATTR):
            check_receiver_hooks(receiver)
        monkeypatch.undo()
        monkeypatch.setattr(receiver, _DECODER_ERROR_ATTR, None)
        with pytest.raises(RuntimeError, match=_DECODER_ERROR_ATTR):
            check_receiver_hooks(receiver)
        monkeypatch.undo()
        monkeypatch.setattr(receiver, _JITTER_BUFFER_ATTR, JitterBuffer(16, prefetch=4))
        with pytest.raises(RuntimeError, match=_JITTER_BUFFER_ATTR):
            check_receiver_hooks(receiver)
        monkeypatch.undo()
        check_receiver_hooks(receiver)  # and the untouched receiver passes
    finally:
        await pc.close()


# --- the bounded decoder queue --------------------------------------------------------------


def test_a_stalled_decoder_drops_to_the_next_keyframe_and_asks_for_one(tmp_path: Path) -> None:
    units = _access_units(12, idrs=(0, 9))  # the IDR at 9 answers the PLI
    wanted = threading.Event()
    recorder = Mp4Recorder(tmp_path / "clip.mp4")
    q = _DecoderQueue(wanted, lambda f, _key: recorder.write(f.data, f.timestamp), backlog=4)
    for n, unit in enumerate(units[:4]):
        q.put((H264, JitterFrame(unit, 3000 * n)))
    assert q.qsize() == 4 and not wanted.is_set() and q.dropped == 0
    # Nothing is decoded (the decoder thread is stuck): the fifth frame finds four waiting.
    q.put((H264, JitterFrame(units[4], 3000 * 4)))
    assert q.qsize() == 0 and q.dropped == 5
    assert wanted.is_set()  # the receiver sends a PLI with its next packet
    wanted.clear()
    for n in range(5, 9):  # P frames cannot be decoded without what was dropped
        q.put((H264, JitterFrame(units[n], 3000 * n)))
    assert q.qsize() == 0 and q.dropped == 9
    assert wanted.is_set()  # no keyframe after `backlog` more drops: asked again
    keyframe = (H264, JitterFrame(units[9], 3000 * 9))
    following = (H264, JitterFrame(units[10], 3000 * 10))
    q.put(keyframe)
    q.put(following)
    q.put(None)  # aiortc stopping the decoder
    assert [q.get_nowait() for _ in range(3)] == [keyframe, following, None]
    recorder.close()
    # The recording kept every frame that arrived, dropped or not, and plays.
    assert recorder.frames == 11
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) >= 11


def test_a_keyframe_meeting_a_full_queue_replaces_the_backlog_without_a_pli() -> None:
    units = _access_units(6)
    wanted = threading.Event()
    q = _DecoderQueue(wanted, backlog=2)
    frames = [(H264, JitterFrame(unit, 3000 * n)) for n, unit in enumerate(units)]
    q.put(frames[1])
    q.put(frames[2])
    q.put(frames[0])  # an IDR finding the queue full: the backlog goes, the IDR stays
    assert not wanted.is_set()  # no keyframe needed: it is here
    q.put(frames[4])
    q.put(None)
    assert [q.get_nowait() for _ in range(3)] == [frames[0], frames[4], None]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.dropped == 2


def test_a_decoder_that_keeps_up_never_drops() -> None:
    units = _access_units(20)
    q = _DecoderQueue(threading.Event(), backlog=2)
    for n, unit in enumerate(units):
        q.put((H264, JitterFrame(unit, n)))
        assert q.get_nowait()[1].timestamp == n
    assert q.dropped == 0


# --- reading the stamp from the luma corner -------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (360, 240), (320, 240)])
def test_stamp_corner_equals_the_whole_frame_gray_read(width: int, height: int) -> None:
    decoder = H264Decoder()  # what aiortc's receiver decodes with
    checked = 0
    for n, unit in enumerate(_access_units(8, width, height)):
        for frame in decoder.decode(JitterFrame(unit, 3000 * n)):
            gray = frame.to_ndarray(format="gray")
            corner = stamp_region(frame)
            assert corner.shape == (stamp.CODE_HEIGHT, stamp.CODE_WIDTH)
            np.testing.assert_array_equal(corner, gray[: stamp.CODE_HEIGHT, : stamp.CODE_WIDTH])
            got = stamp.read(corner, now_ms=int(time.time() * 1000))
            assert got == stamp.read(gray, now_ms=int(time.time() * 1000))
            assert got is not None and got[0] == n
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("range_", ["mpeg", "jpeg", "yuvj420p"])
def test_stamp_corner_equals_gray_for_every_luma_value_and_both_ranges(range_: str) -> None:
    rng = np.random.default_rng(7)
    # Every value 0..255, out-of-range ones included, with a padded line (width 200).
    picture = rng.integers(0, 256, (300 * 3 // 2, 200), dtype=np.uint8)
    picture[:1, :200] = np.arange(200, dtype=np.uint8)
    picture[1:2, :56] = np.arange(200, 256, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(picture, format="yuvj420p" if range_ == "yuvj420p"
                                       else "yuv420p")
    if range_ == "jpeg":
        frame.color_range = 2  # full range signalled on a yuv420p frame
    np.testing.assert_array_equal(
        stamp_region(frame),
        frame.to_ndarray(format="gray")[: stamp.CODE_HEIGHT, : stamp.CODE_WIDTH])


def test_stamp_corner_of_a_small_picture_is_the_whole_gray_picture() -> None:
    frame = av.VideoFrame.from_ndarray(np.zeros((120 * 3 // 2, 160), np.uint8), format="yuv420p")
    region = stamp_region(frame)
    assert region.shape == (120, 160) and stamp.read(region) is None
