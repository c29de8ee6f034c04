"""Per-viewer aiortc track on the packet path.

aiortc sends a pre-encoded ``av.Packet`` through ``encoder.pack()``: no decode,
no re-encode. The sender hooks that turn PLI/FIR and NACK misses on that path
into keyframe requests are :func:`camera.compat.hook_sender`.
"""

from __future__ import annotations

import fractions
import logging

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from camera.broadcaster import Broadcaster, Subscription
from camera.frames import VIDEO_CLOCK_RATE

logger = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class PassthroughTrack(MediaStreamTrack):
    """A video track returning encoded ``av.Packet``s from one broadcast subscription.

    It joins the broadcast on the first ``recv``, which aiortc makes once DTLS is
    up: the join's IDR then goes straight out instead of waiting in the queue
    behind ICE and DTLS (or overflowing it).
    """

    kind = "video"

    def __init__(self, broadcaster: Broadcaster) -> None:
        super().__init__()
        self._broadcaster = broadcaster
        self._subscription: Subscription | None = None
        self._first_pts: int | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override,type-arg,unused-ignore]
        if self.readyState != "live":
            raise MediaStreamError
        if self._subscription is None:
            self._subscription = self._broadcaster.subscribe()
        try:
            frame = await self._subscription.get()
        except ConnectionError:
            self.stop()
            raise MediaStreamError from None
        if self._first_pts is None:
            self._first_pts = frame.pts
        packet = av.Packet(frame.data)
        # Each viewer's RTP clock starts at its own first frame (aiortc adds a random origin).
        packet.pts = frame.pts - self._first_pts
        packet.time_base = _TIME_BASE
        return packet

    def stop(self) -> None:
        super().stop()
        if self._subscription is not None:
            self._subscription.close()

