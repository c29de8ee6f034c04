"""A loopback UDP relay that impairs one viewer's media, for benchmarks and tests.

It sits in the ICE path between one viewer and the camera, on two loopback
sockets: the viewer is told the camera is at ``viewer_port`` and the camera is
told the viewer is at ``camera_port`` (:func:`rewrite_candidates` moves the
loopback UDP host candidates of an SDP, and drops its TCP ones: ICE over TCP
would go round the relay). Each side's address is learnt from the
datagrams it sends (ICE connectivity checks go both ways): the latest sender.

Each direction runs the NAT lab's sans-I/O link model
(:class:`services.natlab.shaping.LinkModel`: loss, a token-bucket rate cap with
a tail-dropping queue, delay and jitter that keep the order, reordering) on
``time.monotonic``; the event loop delivers each datagram when the model says
it comes out. The model is offered each datagram at the time the kernel received
it (SO_TIMESTAMPNS, as the lab's forwarder does), not when the event loop got
round to reading it: a loop held up for a while by a loaded machine reads a
backlog at once, and that backlog must not meet the rate cap's queue as a burst.

By default only SRTP and SRTCP are impaired (first byte 128..191,
RFC 7983): STUN and DTLS pass at once, so the impairment measures what media
does over a bad link, not how long a handshake retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.natlab.shaping import Impairment, LinkCounters, LinkModel
from services.natlab.wire import STAMP_SPACE, ArrivalClock, enable_receive_stamps, receive_stamp

_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 )(\d+)( typ host.*)$",
                        re.MULTILINE | re.IGNORECASE)


def candidate_ports(sdp: str) -> list[int]:
    """The ports of an SDP's loopback UDP host candidates, in order."""
    return [int(m.group(2)) for m in _CANDIDATE.finditer(sdp)]


_TCP_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ tcp .*(\r?\n|$)", re.MULTILINE | re.IGNORECASE)


def rewrite_candidates(sdp: str, port: int) -> str:
    """The SDP with every loopback UDP host candidate moved to ``port`` (the relay)
    and without TCP candidates (RFC 6544: they would reach the peer round the relay)."""
    moved = _CANDIDATE.sub(lambda m: f"{m.group(1)}{port}{m.group(3)}", sdp)
    return _TCP_CANDIDATE.sub("", moved)


READS_PER_WAKEUP = 64
MAX_DATAGRAM = 65_536


def is_media(data: bytes) -> bool:
    """SRTP or SRTCP (RFC 7983 section 7: the first byte is 128..191)."""
    return len(data) > 1 and 128 <= data[0] <= 191


@dataclass(frozen=True)
class DirectionCounters:
    """What one direction of the relay did so far."""

    datagrams: int
    media: int
    delivered: int
    link: LinkCounters


class ImpairRelay:
    """Relays one viewer's UDP to and from the camera through two link models."""

    def __init__(
        self,
        to_viewer: Impairment | None = None,
        to_camera: Impairment | None = None,
        *,
        seed: int = 1,
        media_only: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self.media_only = media_only
        self.viewer: tuple[str, int] | None = None
        """The viewer's address, learnt from the datagrams it sends."""
        self.camera: tuple[str, int] | None = None
        """The camera's address, learnt from the datagrams it sends."""
        self._models = {True: LinkModel(to_viewer or Impairment(), self._rng),
                        False: LinkModel(to_camera or Impairment(), self._rng)}
        self._counts = {True: [0, 0, 0], False: [0, 0, 0]}  # datagrams, media, delivered
        self._retired: dict[bool, list[LinkCounters]] = {True: [], False: []}
        self._sockets: dict[bool, socket.socket] = {}
        self._arrivals = {True: ArrivalClock(), False: ArrivalClock()}
        self._last_when = {True: float("-inf"), False: float("-inf")}

    @property
    def viewer_port(self) -> int:
        """Where the viewer sends (put it in the camera's answer as the camera's candidate)."""
        return int(self._sockets[True].getsockname()[1])

    @property
    def camera_port(self) -> int:
        """Where the camera sends (put it in the viewer's offer as the viewer's candidate)."""
        return int(self._sockets[False].getsockname()[1])

    def impair(self, to_viewer: Impairment | None = None,
               to_camera: Impairment | None = None) -> None:
        """Change the impairment from now on (a direction given as None is left alone);
        datagrams already scheduled keep their times."""
        for towards_viewer, settings in ((True, to_viewer), (False, to_camera)):
            if settings is not None:
                self._retired[towards_viewer].append(self._models[towards_viewer].counters)
                self._models[towards_viewer] = LinkModel(settings, self._rng)

    def settings(self, towards_viewer: bool) -> Impairment:
        return self._models[towards_viewer].settings

    def counters(self, towards_viewer: bool) -> DirectionCounters:
        """Everything so far, across changes of impairment."""
        datagrams, media, delivered = self._counts[towards_viewer]
        parts = [*self._retired[towards_viewer], self._models[towards_viewer].counters]
        link = LinkCounters(**{name: sum(getattr(p, name) for p in parts)
                               for name in LinkCounters.__dataclass_fields__})
        return DirectionCounters(datagrams, media, delivered, link)

    async def start(self, host: str = "127.0.0.1") -> ImpairRelay:
        loop = asyncio.get_running_loop()
        # Plain sockets, not asyncio transports: recvmsg gives each datagram's kernel stamp.
        for from_viewer in (True, False):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                enable_receive_stamps(sock)
                sock.bind((host, 0))
            except OSError:
                sock.close()
                self.close()
                raise
            self._sockets[from_viewer] = sock
            loop.add_reader(sock.fileno(), self._read, sock, from_viewer)
        return self

    def _read(self, sock: socket.socket, from_viewer: bool) -> None:
        """What the socket holds (up to a bound per wakeup), each at its arrival time."""
        now, wall_ns = self._clock(), time.time_ns()
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM, STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier send: UDP carries on
            arrived = self._arrivals[not from_viewer].arrival(receive_stamp(ancdata), now,
                                                              wall_ns)
            self._received(data, addr, from_viewer, arrived, now)
            if not self._sockets:
                return  # closed meanwhile

    def _received(self, data: bytes, addr: tuple[str, int], from_viewer: bool,
                  arrived: float, now: float) -> None:
        # The latest sender on each side: before BUNDLE is agreed a viewer checks from
        # one socket per m-line, and only the one it keeps goes on sending.
        if from_viewer:
            self.viewer = addr
        else:
            self.camera = addr
        towards_viewer = not from_viewer
        counts = self._counts[towards_viewer]
        counts[0] += 1
        if self.media_only and not is_media(data):
            self._deliver(data, towards_viewer)
            return
        counts[1] += 1
        model = self._models[towards_viewer]
        reordered = model.counters.reordered
        at = model.offer(arrived, len(data) + 42)  # UDP/IP/Ethernet headers
        if at is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + (at - now)
        last = self._last_when[towards_viewer]
        if model.counters.reordered > reordered:  # meant to overtake
            loop.call_at(when, self._deliver, data, towards_viewer)
            return
        if at <= now and last <= loop.time():
            self._deliver(data, towards_viewer)
            return
        # The loop's timers are a heap: equal times may come out in any order, so each
        # datagram goes a hair after the one before it (the model keeps the order).
        when = max(when, last + 1e-6)
        self._last_when[towards_viewer] = when
        # After close() the sockets are gone and a late delivery does nothing.
        loop.call_at(when, self._deliver, data, towards_viewer)

    def _deliver(self, data: bytes, towards_viewer: bool) -> None:
        target = self.viewer if towards_viewer else self.camera
        if target is None or not self._sockets:
            return  # the other side has not spoken yet: ICE retries
        # The datagram leaves from the socket the receiving side talks to.
        try:
            self._sockets[towards_viewer].sendto(data, target)
        except OSError:
            return  # a full send buffer or an unreachable side: lost, as on a wire
        self._counts[towards_viewer][2] += 1

    def close(self) -> None:
        loop = None
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
        for sock in self._sockets.values():
            if loop is not None:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
