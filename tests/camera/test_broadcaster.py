"""The fan-out: one stream for N viewers, bounded queues, keyframe discipline."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpSender,
)
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)

from camera.broadcaster import Broadcaster
from camera.compat import hook_sender
from camera.frames import EncodedFrame
from camera.track import PassthroughTrack


def frame(n: int, keyframe: bool = False) -> EncodedFrame:
    return EncodedFrame(b"\x00\x00\x00\x01\x65" if keyframe else b"\x00\x00\x00\x01\x41",
                        pts=n * 3000, keyframe=keyframe, capture_time=0.0)


class Requests:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_every_viewer_gets_the_same_single_stream() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    subs = [broadcaster.subscribe() for _ in range(5)]
    broadcaster.publish(frame(0, keyframe=True))
    for n in range(1, 4):
        broadcaster.publish(frame(n))
    for sub in subs:
        got = [await sub.get() for _ in range(4)]
        assert [f.pts for f in got] == [0, 3000, 6000, 9000]
    assert [s.backlog for s in subs] == [0] * 5
    assert broadcaster.frames_published == 4


async def test_joining_viewer_asks_for_an_idr_and_starts_at_one() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    broadcaster.publish(frame(0, keyframe=True))
    sub = broadcaster.subscribe()
    assert requests.count == 1
    broadcaster.publish(frame(1))  # P-frame before the IDR arrives: useless to a new decoder
    broadcaster.publish(frame(2, keyframe=True))
    first = await sub.get()
    assert first.keyframe and first.pts == 6000
    assert sub.frames_dropped == 1


async def test_slow_viewer_drops_to_next_keyframe_without_hurting_others() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, max_queue_frames=4, keyframe_burst=1000)
    slow, fast = broadcaster.subscribe(), broadcaster.subscribe()
    broadcaster.publish(frame(0, keyframe=True))
    received = [await fast.get()]
    for n in range(1, 10):
        broadcaster.publish(frame(n))
        received.append(await fast.get())
    assert len(received) == 10  # the fast viewer lost nothing
    assert slow.backlog <= 4  # bounded
    assert slow.waiting_for_keyframe
    assert requests.count >= 2  # the overflow asked for an IDR
    broadcaster.publish(frame(10))
    broadcaster.publish(frame(11, keyframe=True))
    resumed = await slow.get()
    assert resumed.keyframe and resumed.pts == 33000


async def test_keyframe_requests_are_rate_limited_and_coalesced() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_rate=5, keyframe_burst=1)
    for _ in range(50):
        broadcaster.request_keyframe("PLI storm")
    assert requests.count == 1
    await asyncio.sleep(0.3)
    assert requests.count == 2  # the storm produced exactly one deferred IDR
    assert broadcaster.keyframe_requests == 50


async def test_track_joins_on_first_recv_and_ends_with_its_subscription() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests)
    track = PassthroughTrack(broadcaster)
    broadcaster.publish(frame(0, keyframe=True))  # before the media path is up: not queued
    assert broadcaster.viewer_count == 0 and requests.count == 0
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert broadcaster.viewer_count == 1 and requests.count == 1  # joined, asked for an IDR
    broadcaster.publish(frame(1))
    broadcaster.publish(frame(0, keyframe=True))
    packet = await pending
    assert bytes(packet) == frame(0, True).data and packet.pts == 0
    assert packet.time_base is not None and packet.time_base.denominator == 90_000
    broadcaster.close()
    from aiortc.mediastreams import MediaStreamError

    with pytest.raises(MediaStreamError):
        await track.recv()
    assert broadcaster.viewer_count == 0


@pytest.mark.parametrize("fmt", [RTCP_PSFB_PLI, RTCP_PSFB_FIR])
async def test_pli_and_fir_reach_the_source(fmt: int) -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    sender = RTCRtpSender(PassthroughTrack(broadcaster), _dtls())
    hook_sender(sender, broadcaster.request_keyframe)
    before = requests.count
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=sender._ssrc))
    assert requests.count == before + 1


async def test_nack_beyond_history_asks_for_a_keyframe() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    sender = RTCRtpSender(PassthroughTrack(broadcaster), _dtls())
    hook_sender(sender, broadcaster.request_keyframe)
    before = requests.count
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
    nack.lost = [1234]
    await sender._handle_rtcp_packet(nack)
    assert requests.count == before + 1


def _dtls() -> RTCDtlsTransport:
    """A real (unstarted) DTLS transport: the sender only needs one to exist."""
    return RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer(iceServers=[])), [RTCCertificate.generateCertificate()]
    )
