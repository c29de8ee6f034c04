"""Per-viewer aiortc track on the packet path.

No decode, no re-encode: the camera's sender takes each access unit's RTP
payloads, cut once for every viewer on its layer (:meth:`PassthroughTrack.next_payloads`,
:func:`camera.compat.share_packetization`); ``recv`` still hands aiortc's own
send loop an ``av.Packet``. A track sits on one layer of the broadcast and moves
to another at that layer's IDR (:meth:`PassthroughTrack.switch_to`); its sender
numbers and times the packets, so the viewer sees one RTP stream (one SSRC,
continuous sequence numbers and timestamps) whose picture size changes at an
IDR. The sender hooks that
turn PLI/FIR and NACK misses on that path into keyframe requests (on the
track's layer) are :func:`camera.compat.hook_sender`.
"""

from __future__ import annotations

import fractions
import logging
from collections.abc import Callable
from typing import TypeVar

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from camera.broadcaster import Broadcaster, Subscription
from camera.frames import VIDEO_CLOCK_RATE, EncodedFrame, Layer

logger = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

LOW_KEYFRAME_SPREAD = 0.025
"""Seconds over which a sender spreads the packets of an IDR on a layer below the top
one (most of a frame interval at 30 fps). A viewer is on such a layer because its
link is thin: an IDR sent at once, several times the size of the frames around it,
overflows the queue of a thin link's bottleneck (a policer's is often a tenth of a
second at its rate) and costs the picture it was meant to repair. On the top layer
IDRs go at once: its viewers have room, and a burst there is what shows a link too
thin for it."""

P = TypeVar("P")


class PassthroughTrack(MediaStreamTrack):
    """A video track returning encoded ``av.Packet``s from one broadcast subscription.

    It joins the broadcast on the first ``recv``, which aiortc makes once DTLS is
    up: the join's IDR then goes straight out instead of waiting in the queue
    behind ICE and DTLS (or overflowing it). That IDR is asked for earlier, when
    the offer is answered (:meth:`prepare`), and kept by the broadcaster for the
    join: it is ready when DTLS completes.
    """

    kind = "video"

    def __init__(self, broadcaster: Broadcaster) -> None:
        super().__init__()
        self._broadcaster = broadcaster
        self._subscription: Subscription | None = None
        self._first_pts: int | None = None
        self._last_pts = -1
        self._join_layer = broadcaster.layers[0]
        """The layer to join on (changed by a switch asked for before the first recv)."""
        self.spread = 0.0
        """Seconds over which to send the packets of the access unit :meth:`next_payloads`
        returned last (0: at once; see ``LOW_KEYFRAME_SPREAD``)."""
        self.keyframe = False
        """Whether that access unit was an IDR (the send loop counts its packets)."""

    @property
    def layer(self) -> Layer:
        """The layer this viewer is getting (or will join on)."""
        return self._subscription.layer if self._subscription is not None else self._join_layer

    @property
    def target(self) -> Layer | None:
        """The layer a pending switch goes to at its next IDR, if any."""
        return self._subscription.target if self._subscription is not None else None

    @property
    def switches(self) -> int:
        return self._subscription.switches if self._subscription is not None else 0

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self._broadcaster.layers

    def layer_bytes(self, layer: Layer) -> int:
        """Bytes of access units ``layer`` has published so far (its rate, sampled)."""
        return self._broadcaster.feed(layer).bytes_published

    def keyframe_bytes(self, layer: Layer) -> int:
        """Bytes of ``layer``'s last IDR (0: none yet)."""
        return self._broadcaster.feed(layer).keyframe_bytes

    def switch_to(self, layer: Layer) -> bool:
        """Move to ``layer`` at its next IDR (see :meth:`Subscription.switch_to`)."""
        if layer not in self._broadcaster.layers:
            return False
        if self._subscription is None:
            self._join_layer = layer
            return False
        return self._subscription.switch_to(layer)

    def prepare(self) -> None:
        """The session is being set up: have the join's IDR made now (see the class)."""
        if self._subscription is None:
            self._broadcaster.prepare_join(self._join_layer)

    def request_keyframe(self, reason: str) -> None:
        """An IDR on this viewer's layer (the sender's PLI/FIR and NACK hooks)."""
        if self._subscription is not None:
            self._subscription.request_keyframe(reason)
        else:
            self._broadcaster.request_keyframe(reason, self._join_layer)

    async def recv(self) -> av.Packet:  # type: ignore[override,type-arg,unused-ignore]
        frame, pts = await self._next()
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = _TIME_BASE
        return packet

    async def next_payloads(self, packetize: Callable[[bytes], P]) -> tuple[P, int]:
        """The next access unit as ``packetize`` cuts it (once for every viewer on its
        layer) and its RTP time in 90 kHz ticks from this viewer's first frame: what a
        sender that shares packetization sends instead of :meth:`recv`'s packet."""
        frame, pts = await self._next()
        low = frame.layer is not self._broadcaster.layers[0]
        self.spread = LOW_KEYFRAME_SPREAD if frame.keyframe and low else 0.0
        self.keyframe = frame.keyframe
        return self._broadcaster.payloads(frame, packetize), pts

    async def _next(self) -> tuple[EncodedFrame, int]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._subscription is None:
            self._subscription = self._broadcaster.subscribe(self._join_layer, warm=True)
        try:
            frame = await self._subscription.get()
        except ConnectionError:
            self.stop()
            raise MediaStreamError from None
        if self._first_pts is None:
            self._first_pts = frame.pts
        # Each viewer's RTP clock starts at its own first frame (aiortc adds a random
        # origin). Every layer shares the source's clock; should two layers' encoders
        # run apart around a switch, time still never goes backwards.
        self._last_pts = max(frame.pts - self._first_pts, self._last_pts + 1)
        return frame, self._last_pts

    def stop(self) -> None:
        super().stop()
        if self._subscription is not None:
            self._subscription.close()

