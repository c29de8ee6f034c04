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

from camera.broadcaster import Broadcaster, Subscription
from camera.compat import hook_sender
from camera.frames import EncodedFrame, Layer
from camera.track import PassthroughTrack


def frame(n: int, keyframe: bool = False) -> EncodedFrame:
    return EncodedFrame(b"\x00\x00\x00\x01\x65" if keyframe else b"\x00\x00\x00\x01\x41",
                        pts=n * 3000, keyframe=keyframe, capture_time=0.0)


class Requests:
    def __init__(self) -> None:
        self.count = 0
        self.layers: list[Layer] = []

    def __call__(self, layer: Layer) -> None:
        self.count += 1
        self.layers.append(layer)


@pytest.fixture
def short_warm_join(monkeypatch: pytest.MonkeyPatch) -> tuple[Requests, Broadcaster]:
    """A broadcaster whose last IDR is too old to start a viewer from after 5 ms (not
    250), and its IDR requests."""
    import camera.broadcaster

    monkeypatch.setattr(camera.broadcaster, "WARM_JOIN_S", 0.005)
    requests = Requests()
    return requests, Broadcaster(requests, keyframe_burst=1000)


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
    broadcaster.publish(frame(5))  # before the media path is up: not queued
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


async def test_a_prepared_join_starts_from_the_idr_asked_for_at_the_offer() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    track = PassthroughTrack(broadcaster)
    track.prepare()  # the offer arrived: the IDR is made while ICE and DTLS run
    assert requests.count == 1 and broadcaster.viewer_count == 0
    broadcaster.publish(frame(7, keyframe=True))
    broadcaster.publish(frame(8))
    first, second = await track.recv(), await track.recv()  # DTLS up: the kept GOP, at once
    assert bytes(first) == frame(0, True).data and first.pts == 0
    assert bytes(second) == frame(1).data and second.pts == 3000
    assert requests.count == 1 and broadcaster.feed(Layer.HIGH).warm_joins == 1
    broadcaster.close()


async def test_a_join_long_after_the_last_idr_asks_for_a_new_one(
    short_warm_join: tuple[Requests, Broadcaster],
) -> None:
    requests, broadcaster = short_warm_join
    broadcaster.publish(frame(0, keyframe=True))
    await asyncio.sleep(0.01)
    broadcaster.publish(frame(1))  # the GOP is now too old to start a viewer from
    sub = broadcaster.subscribe(warm=True)
    assert requests.count == 1 and sub.waiting_for_keyframe and sub.backlog == 0
    assert broadcaster.feed(Layer.HIGH).warm_joins == 0


async def test_a_join_before_the_idr_asked_for_comes_waits_for_it_without_asking_again(
) -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, keyframe_burst=1000)
    track = PassthroughTrack(broadcaster)
    track.prepare()  # the offer: one IDR asked for
    receiving = asyncio.ensure_future(track.recv())  # DTLS is up before that IDR
    await asyncio.sleep(0)
    assert broadcaster.viewer_count == 1 and requests.count == 1
    assert broadcaster.feed(Layer.HIGH).joins_waiting == 1
    broadcaster.publish(frame(9))  # a picture made before the request: not a start
    broadcaster.publish(frame(10, keyframe=True))
    first = await asyncio.wait_for(receiving, 1)
    assert bytes(first) == frame(0, True).data and first.pts == 0
    assert requests.count == 1
    broadcaster.close()


async def test_a_join_long_after_an_unanswered_request_asks_again(
    short_warm_join: tuple[Requests, Broadcaster],
) -> None:
    requests, broadcaster = short_warm_join
    broadcaster.prepare_join()
    await asyncio.sleep(0.02)  # the source never made that IDR (or it is very late)
    sub = broadcaster.subscribe(warm=True)
    assert requests.count == 2 and sub.waiting_for_keyframe
    assert broadcaster.feed(Layer.HIGH).joins_waiting == 0


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


# --- layers -------------------------------------------------------------------


def layered(n: int, layer: Layer, keyframe: bool = False) -> EncodedFrame:
    nal = b"\x65" if keyframe else b"\x41"
    return EncodedFrame(b"\x00\x00\x00\x01" + nal + bytes([layer, n]), pts=n * 3000,
                        keyframe=keyframe, capture_time=0.0, layer=layer)


def publish_picture(broadcaster: Broadcaster, n: int, idr: set[Layer] = frozenset()) -> None:
    """One picture on both layers, high first (as the test pattern delivers them)."""
    for layer in (Layer.HIGH, Layer.LOW):
        broadcaster.publish(layered(n, layer, layer in idr))


async def drain(sub: Subscription) -> list[EncodedFrame]:
    out = []
    while sub.backlog:
        out.append(await sub.get())
    return out


async def test_viewers_sit_on_one_layer_and_ask_for_that_layers_idr() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, layers=(Layer.HIGH, Layer.LOW), keyframe_burst=1000)
    high, low = broadcaster.subscribe(), broadcaster.subscribe(Layer.LOW)
    assert requests.layers == [Layer.HIGH, Layer.LOW]  # each join asked its own layer
    publish_picture(broadcaster, 0, {Layer.HIGH, Layer.LOW})
    for n in range(1, 4):
        publish_picture(broadcaster, n)
    assert {f.layer for f in await drain(high)} == {Layer.HIGH}
    assert {f.layer for f in await drain(low)} == {Layer.LOW}
    low.request_keyframe("PLI/FIR")
    assert requests.layers[-1] is Layer.LOW
    assert broadcaster.frames_published == 4  # pictures, counted on the top layer
    assert broadcaster.viewer_count == 2
    assert broadcaster.feed(Layer.LOW).frames_published == 4


async def test_switch_happens_at_the_target_layers_idr_never_mid_gop() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, layers=(Layer.HIGH, Layer.LOW), keyframe_burst=1000)
    sub = broadcaster.subscribe()
    publish_picture(broadcaster, 0, {Layer.HIGH, Layer.LOW})
    publish_picture(broadcaster, 1)
    assert sub.switch_to(Layer.LOW)
    assert requests.layers[-1] is Layer.LOW and sub.target is Layer.LOW
    publish_picture(broadcaster, 2)  # no low IDR yet: still on high
    publish_picture(broadcaster, 3, {Layer.LOW})
    publish_picture(broadcaster, 4)
    got = await drain(sub)
    # High up to picture 2, then low from its IDR at picture 3: one picture per
    # moment (high's picture 3 was already queued and is dropped), pts rising.
    assert [(f.layer, f.pts // 3000) for f in got] == [
        (Layer.HIGH, 0), (Layer.HIGH, 1), (Layer.HIGH, 2), (Layer.LOW, 3), (Layer.LOW, 4)]
    assert got[3].keyframe
    assert sub.layer is Layer.LOW and sub.target is None and sub.switches == 1
    # And back up, at a high IDR that comes first this time.
    assert sub.switch_to(Layer.HIGH)
    publish_picture(broadcaster, 5)
    publish_picture(broadcaster, 6, {Layer.HIGH})
    got = await drain(sub)
    assert [(f.layer, f.pts // 3000) for f in got] == [(Layer.LOW, 5), (Layer.HIGH, 6)]
    assert broadcaster.feed(Layer.LOW).subscribers == set()


async def test_switch_to_the_current_layer_cancels_and_unknown_layers_are_refused() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, layers=(Layer.HIGH, Layer.LOW), keyframe_burst=1000)
    sub = broadcaster.subscribe()
    publish_picture(broadcaster, 0, {Layer.HIGH, Layer.LOW})
    assert sub.switch_to(Layer.LOW)
    assert not sub.switch_to(Layer.HIGH)  # changed its mind before the IDR
    publish_picture(broadcaster, 1, {Layer.LOW})
    assert {f.layer for f in await drain(sub)} == {Layer.HIGH}
    single = Broadcaster(requests)
    only = single.subscribe()
    assert not only.switch_to(Layer.LOW) and only.layer is Layer.HIGH


async def test_track_switches_layers_with_continuous_timestamps() -> None:
    requests = Requests()
    broadcaster = Broadcaster(requests, layers=(Layer.HIGH, Layer.LOW), keyframe_burst=1000)
    track = PassthroughTrack(broadcaster)
    hook_sender(RTCRtpSender(track, _dtls()), track.request_keyframe)
    first = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    publish_picture(broadcaster, 10, {Layer.HIGH, Layer.LOW})
    pts = [(await first).pts]
    assert track.switch_to(Layer.LOW) and track.layer is Layer.HIGH
    publish_picture(broadcaster, 11)
    publish_picture(broadcaster, 12, {Layer.LOW})
    for _ in range(2):
        pts.append((await track.recv()).pts)
    assert pts == [0, 3000, 6000] and track.layer is Layer.LOW and track.switches == 1
    track.stop()
