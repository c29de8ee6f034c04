"""The impairing loopback relay: real UDP sockets on 127.0.0.1, the lab's link model."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from bench.impair import ImpairRelay, candidate_ports, is_media, rewrite_candidates
from services.natlab.shaping import Impairment
from tests.conftest import scaled

RTP = bytes([0x80, 0x60]) + bytes(198)  # version 2, payload type 96: SRTP to the relay
STUN = bytes([0x00, 0x01]) + bytes(98)


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((time.monotonic(), data))

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))


async def endpoints(relay: ImpairRelay) -> tuple[Endpoint, Endpoint]:
    """A viewer and a camera, each having said hello through the relay (it learns both)."""
    loop = asyncio.get_running_loop()
    _, viewer = await loop.create_datagram_endpoint(Endpoint, local_addr=("127.0.0.1", 0))
    _, camera = await loop.create_datagram_endpoint(Endpoint, local_addr=("127.0.0.1", 0))
    viewer.send(STUN, relay.viewer_port)
    camera.send(STUN, relay.camera_port)
    async with asyncio.timeout(scaled(5)):
        while not (relay.viewer and relay.camera):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the hellos were delivered (or dropped: no one was known)
    viewer.got.clear()
    camera.got.clear()
    return viewer, camera


async def settle(endpoint: Endpoint, count: int, seconds: float) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while len(endpoint.got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # nothing more is on its way


async def test_loss_drops_about_that_fraction_of_media_and_never_stun() -> None:
    relay = await ImpairRelay(to_viewer=Impairment(loss=0.2), seed=3).start()
    try:
        viewer, camera = await endpoints(relay)
        for k in range(1000):
            camera.send(RTP, relay.camera_port)
            camera.send(STUN, relay.camera_port)
            if k % 10 == 0:
                await asyncio.sleep(0.002)  # no socket buffer overflows on the way
        await settle(viewer, 1800, 5)
        media = sum(1 for _, data in viewer.got if is_media(data))
        stun = len(viewer.got) - media
        assert stun == 1000  # ICE and DTLS are never impaired
        assert 700 <= media <= 900, media  # 20 % lost, binomial spread well inside
        counts = relay.counters(True)
        assert counts.link.lost == 1000 - media and counts.media == 1000
        # The other direction is clean.
        for _ in range(100):
            viewer.send(RTP, relay.viewer_port)
            await asyncio.sleep(0.001)
        await settle(camera, 100, 5)
        assert len(camera.got) == 100
    finally:
        relay.close()


async def test_delay_and_jitter_hold_each_datagram_in_order() -> None:
    relay = await ImpairRelay(to_viewer=Impairment(delay=0.1, jitter=0.03), seed=5).start()
    try:
        viewer, camera = await endpoints(relay)
        sent = []
        for k in range(50):
            sent.append(time.monotonic())
            camera.send(RTP[:2] + k.to_bytes(2, "big") + RTP[4:], relay.camera_port)
            await asyncio.sleep(0.005)
        await settle(viewer, 50, 5)
        order = [int.from_bytes(data[2:4], "big") for _, data in viewer.got]
        assert order == list(range(50))  # jitter without reordering
        delays = [at - sent[k] for k, (at, _) in zip(order, viewer.got, strict=True)]
        assert min(delays) >= 0.07 - 0.005
        assert max(delays) >= 0.1  # some of it is jitter above the mean
    finally:
        relay.close()


async def test_a_rate_cap_holds_media_to_about_its_rate() -> None:
    relay = await ImpairRelay().start()
    try:
        viewer, camera = await endpoints(relay)
        relay.impair(to_viewer=Impairment(rate_kbit=400))
        started = time.monotonic()
        for _ in range(400):  # 400 x 242 bytes on the wire, offered in ~0.4 s
            camera.send(RTP, relay.camera_port)
            await asyncio.sleep(0.001)
        await settle(viewer, 400, 5)
        span = viewer.got[-1][0] - started
        delivered = len(viewer.got)
        rate = delivered * (len(RTP) + 42) * 8 / span
        assert delivered < 400 and relay.counters(True).link.overflowed == 400 - delivered
        assert rate <= 400_000 * 1.15, rate
        # Lifted: everything passes again.
        relay.impair(to_viewer=Impairment())
        viewer.got.clear()
        for _ in range(100):
            camera.send(RTP, relay.camera_port)
            await asyncio.sleep(0.001)
        await settle(viewer, 100, 5)
        assert len(viewer.got) == 100
    finally:
        relay.close()


async def test_datagrams_read_late_keep_the_times_they_arrived() -> None:
    """The event loop held up while datagrams arrive spread out: it then reads them in
    one go, yet the cap's queue and the delay see each at its kernel receive time."""
    size, count, interval, delay = 1000, 40, 0.02, 0.5
    frame = size + 42  # 10.4 ms at the cap, under the 20 ms between datagrams
    relay = await ImpairRelay().start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        viewer, _camera = await endpoints(relay)
        relay.impair(to_viewer=Impairment(rate_kbit=800, queue_bytes=10 * frame, delay=delay))
        # The camera's side (the relay takes the latest sender for the camera), paced by a
        # thread of its own.
        datagram = RTP[:2] + bytes(size - 2)
        sent: list[float] = []

        def send() -> None:
            for _ in range(count):
                sent.append(time.monotonic())
                sender.sendto(datagram, ("127.0.0.1", relay.camera_port))
                time.sleep(interval)

        pacer = threading.Thread(target=send)
        pacer.start()
        pacer.join()  # the loop is held up meanwhile: nothing is read for 0.8 s
        resumed = time.monotonic()
        await settle(viewer, count, 5)
    finally:
        sender.close()
        relay.close()
    # Read at once, 40 datagrams would meet a queue of 10 and most would be dropped.
    assert relay.counters(True).link.overflowed == 0
    assert len(viewer.got) == count
    # Delayed from when they arrived: the first ones were due while the loop was held up
    # and go at once; none earlier than the delay after it was sent.
    assert min(at - sent[k] for k, (at, _) in enumerate(viewer.got)) >= delay - 0.001
    assert viewer.got[0][0] - resumed < 0.8 * delay, viewer.got[0][0] - resumed


def test_candidates_are_moved_to_the_relay() -> None:
    sdp = ("v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
           "a=candidate:2 1 udp 2130706431 127.0.0.1 40002 typ host\r\n"
           "a=candidate:3 1 udp 1694498815 203.0.113.5 40000 typ srflx\r\n"
           "a=candidate:4 1 tcp 1519386623 127.0.0.1 40004 typ host tcptype passive\r\n"
           "a=candidate:5 1 tcp 1355808767 127.0.0.1 40006 typ srflx raddr 127.0.0.1 "
           "rport 40006 tcptype so\r\n"
           "a=end-of-candidates\r\n")
    for text in (sdp, sdp.replace("\r\n", "\n")):
        moved = rewrite_candidates(text, 5555)
        assert candidate_ports(moved) == [5555, 5555]
        assert "203.0.113.5 40000" in moved
        # ICE over TCP would reach the camera round the relay: its candidates go.
        assert " tcp " not in moved
        assert moved.splitlines()[-1] == "a=end-of-candidates"
        assert len(moved.splitlines()) == len(text.splitlines()) - 2


@pytest.mark.parametrize(("first", "media"), [(0x80, True), (0xBF, True), (0x00, False),
                                              (0x17, False)])
def test_only_srtp_and_srtcp_count_as_media(first: int, media: bool) -> None:
    assert is_media(bytes([first, 0])) is media
