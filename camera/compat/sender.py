"""The camera's hooks into aiortc 1.16's ``RTCRtpSender``: PLI/FIR and NACK misses.

aiortc sends a pre-encoded ``av.Packet`` through ``encoder.pack()``: no decode,
no re-encode. On that path it drops PLI/FIR (``RTCRtpSender._send_keyframe``
only sets a private flag its encoder path reads) and silently ignores a NACK
for a packet that fell out of its 128-packet history. :func:`hook_sender` makes
both reach the source as keyframe requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import RTCRtpSender
from aiortc.rtcrtpsender import RTT_ALPHA
from aiortc.rtp import RTP_HISTORY_SIZE

from camera.compat.guard import AIORTC, Member, instance_attribute, require

HISTORY_ATTR = "_RTCRtpSender__rtp_history"
"""The sender's retransmit history: sequence number modulo RTP_HISTORY_SIZE -> packet."""

_SENDER_MEMBERS = (
    Member("_send_keyframe", "method", ("self",)),
    Member("_retransmit", "coroutine", ("self", "sequence_number")),
    Member("_handle_rtcp_packet", "coroutine", ("self", "packet")),
)


def check_members(module: Any = aiortc, sender_class: Any = RTCRtpSender) -> None:
    """The sender methods :func:`hook_sender` replaces (and the one that calls them)."""
    for member in _SENDER_MEMBERS:
        require(AIORTC, module, sender_class, member)


def hook_sender(sender: RTCRtpSender, request_keyframe: Callable[[str], None]) -> None:
    """Route this sender's PLI/FIR and unservable NACKs to ``request_keyframe``."""
    history: dict[int, Any] = instance_attribute(AIORTC, aiortc, sender, HISTORY_ATTR, dict)
    retransmit = require(AIORTC, aiortc, sender, _SENDER_MEMBERS[1])

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


def watch_rtcp(sender: RTCRtpSender, on_rtcp: Callable[[], None]) -> None:
    """Call ``on_rtcp`` for every RTCP packet this sender receives (receiver reports,
    NACK, PLI): while they arrive, the viewer's half of the media path works."""
    handle = require(AIORTC, aiortc, sender, _SENDER_MEMBERS[2])

    async def handle_and_note(packet: Any) -> None:
        on_rtcp()
        await handle(packet)

    sender._handle_rtcp_packet = handle_and_note  # type: ignore[method-assign]


RTT_ATTR = "_RTCRtpSender__rtt"
"""The sender's round-trip time: an average, moved by each receiver report that
answers its latest sender report (``RTT_ALPHA`` of the old value)."""


def watch_rtt(sender: RTCRtpSender, on_sample: Callable[[float], None]) -> None:
    """Call ``on_sample`` with each round-trip time sample (seconds) this sender takes
    from a receiver report: the raw sample behind aiortc's average, read around the
    report's handling, so none is lost when several reports arrive between two
    looks at the stats (a browser sends one with every NACK) and a report that
    answers an older sender report (no sample) gives none."""
    instance_attribute(AIORTC, aiortc, sender, RTT_ATTR, (float, type(None)))
    require(AIORTC, aiortc, RTCRtpSender, _SENDER_MEMBERS[2])
    handle = sender._handle_rtcp_packet  # aiortc's, or a hook already on it (watch_rtcp)
    alpha = float(RTT_ALPHA)

    async def handle_and_sample(packet: Any) -> None:
        before = getattr(sender, RTT_ATTR, None)
        await handle(packet)
        after = getattr(sender, RTT_ATTR, None)
        if isinstance(after, float) and after != before:
            on_sample(after if before is None else (after - alpha * before) / (1 - alpha))

    sender._handle_rtcp_packet = handle_and_sample  # type: ignore[method-assign]
