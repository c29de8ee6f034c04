"""Per-viewer aiortc track on the packet path, and the sender hooks aiortc lacks.

aiortc sends a pre-encoded ``av.Packet`` through ``encoder.pack()``: no decode,
no re-encode. On that path it drops PLI/FIR (``RTCRtpSender._send_keyframe``
only sets a private flag its encoder path reads) and silently ignores a NACK
for a packet that fell out of its 128-packet history. We hook both so they
reach the source as keyframe requests. These are private aiortc members: the
pin in pyproject.toml (aiortc==1.16.*) and ``check_aiortc`` guard them.
"""

from __future__ import annotations

import fractions
import logging
from collections.abc import Callable
from typing import Any

import aiortc
import av
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTP_HISTORY_SIZE

from camera.broadcaster import Broadcaster, Subscription
from camera.frames import VIDEO_CLOCK_RATE

logger = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
_HISTORY_ATTR = "_RTCRtpSender__rtp_history"


def check_aiortc() -> None:
    """Fail loudly if the aiortc internals we hook are not the ones we tested."""
    if not aiortc.__version__.startswith("1.16."):
        raise RuntimeError(f"peercam hooks aiortc 1.16 internals; found {aiortc.__version__}")
    for name in ("_send_keyframe", "_retransmit"):
        if not hasattr(RTCRtpSender, name):
            raise RuntimeError(f"aiortc RTCRtpSender has no {name}: hooks would be lost")


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


def hook_sender(sender: RTCRtpSender, request_keyframe: Callable[[str], None]) -> None:
    """Route this sender's PLI/FIR and unservable NACKs to ``request_keyframe``."""
    history: dict[int, Any] = getattr(sender, _HISTORY_ATTR)
    retransmit = sender._retransmit

    def send_keyframe() -> None:
        request_keyframe("PLI/FIR")

    async def retransmit_or_keyframe(sequence_number: int) -> None:
        packet = history.get(sequence_number % RTP_HISTORY_SIZE)
        if packet is None or packet.sequence_number != sequence_number:
            # Lost beyond the retransmit history: only a new IDR repairs the picture.
            request_keyframe("NACK beyond history")
            return
        await retransmit(sequence_number)

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]
    sender._retransmit = retransmit_or_keyframe  # type: ignore[method-assign]
