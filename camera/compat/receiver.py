"""The CLI viewer's hooks into aiortc 1.16's ``RTCRtpReceiver`` and ``JitterBuffer``.

The viewer (:mod:`camera.client.viewer`) replaces a receiver's jitter buffer and
decoder queue and sets its decoder-error flag to ask for a keyframe; its jitter
buffer reads the stock buffer's slots. aiortc keeps all of these private (set in
``RTCRtpReceiver.__init__``; the receiver reads them per packet, so swapping them
before the receiver starts is enough). Each accessor checks what it touches, so
another aiortc (or a receiver already running) gets :class:`IncompatibleLibrary`
instead of a viewer that silently loses the hooks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from camera.compat.guard import AIORTC, Member, check_version, instance_attribute, require

DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"
DECODER_ERROR_ATTR = "_RTCRtpReceiver__decoder_error"
DECODER_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"
NACK_GENERATOR_ATTR = "_RTCRtpReceiver__nack_generator"
PAYLOAD_ATTR = "_data"
"""What aiortc's receiver stores on each RtpPacket: its depayloaded bytes."""

_JITTER_MEMBERS = (
    Member("add", "method", ("self", "packet")),
    Member("remove", "method", ("self", "count")),
)


def check_members(module: Any = aiortc, jitter_class: Any = JitterBuffer) -> None:
    """The jitter buffer's members the viewer's buffer reads (on a throwaway instance)."""
    for member in _JITTER_MEMBERS:
        require(AIORTC, module, jitter_class, member)
    probe = jitter_class(capacity=16, is_video=True)
    instance_attribute(AIORTC, module, probe, "_packets", list)
    instance_attribute(AIORTC, module, probe, "capacity", int)
    if getattr(probe, "_origin", "missing") is not None:
        raise AIORTC.fail(module, f"{type(probe).__qualname__}._origin is not None when empty")


def check_receiver_hooks(receiver: RTCRtpReceiver, module: Any = aiortc) -> None:
    """Fail loudly unless ``receiver`` is an unstarted aiortc 1.16 video receiver."""
    check_version(AIORTC, module)
    jitter = getattr(receiver, JITTER_BUFFER_ATTR, None)
    if (
        type(jitter) is not JitterBuffer
        or not isinstance(getattr(jitter, "_packets", None), list)
        or getattr(jitter, "_origin", "missing") is not None
        or getattr(jitter, "_prefetch", None) != 0
        or getattr(jitter, "_is_video", None) is not True
    ):
        raise AIORTC.fail(
            module,
            f"RTCRtpReceiver.{JITTER_BUFFER_ATTR} is not the fresh 1.16 video "
            f"JitterBuffer the viewer hooks (got {jitter!r})",
        )
    decoder_queue = getattr(receiver, DECODER_QUEUE_ATTR, None)
    if type(decoder_queue) is not queue.Queue or not decoder_queue.empty():
        raise AIORTC.fail(
            module,
            f"RTCRtpReceiver.{DECODER_QUEUE_ATTR} is not the empty queue.Queue "
            f"the viewer hooks (got {decoder_queue!r})",
        )
    decoder_error(receiver, module)
    _not_started(receiver, module)


def _not_started(receiver: RTCRtpReceiver, module: Any) -> None:
    if getattr(receiver, DECODER_THREAD_ATTR, "missing") is not None:
        raise AIORTC.fail(
            module,
            f"RTCRtpReceiver.{DECODER_THREAD_ATTR} is set: the receiver's decoder is already "
            "running (or aiortc changed); the viewer's hooks must go in before it starts",
        )


def jitter_buffer(receiver: RTCRtpReceiver, module: Any = aiortc) -> JitterBuffer:
    """The receiver's jitter buffer (the stock one, or whichever was put in)."""
    buffer: JitterBuffer = instance_attribute(AIORTC, module, receiver, JITTER_BUFFER_ATTR,
                                              JitterBuffer)
    return buffer


def set_jitter_buffer(receiver: RTCRtpReceiver, buffer: JitterBuffer,
                      module: Any = aiortc) -> None:
    """Replace an unstarted receiver's jitter buffer."""
    jitter_buffer(receiver, module)
    _not_started(receiver, module)
    setattr(receiver, JITTER_BUFFER_ATTR, buffer)


def set_decoder_queue(receiver: RTCRtpReceiver, decoder_queue: queue.Queue[Any],
                      module: Any = aiortc) -> None:
    """Replace an unstarted receiver's decoder queue: it gets (codec, JitterFrame) items
    from the receiver and a None when the receiver stops its decoder thread."""
    instance_attribute(AIORTC, module, receiver, DECODER_QUEUE_ATTR, queue.Queue)
    _not_started(receiver, module)
    setattr(receiver, DECODER_QUEUE_ATTR, decoder_queue)


def set_nack_generator(receiver: RTCRtpReceiver, generator: Any, module: Any = aiortc) -> None:
    """Replace an unstarted video receiver's NACK generator. The receiver calls
    ``generator.add(packet)`` for every RTP packet and, when it returns True, sends a
    NACK for ``sorted(generator.missing)``."""
    from aiortc.rtcrtpreceiver import NackGenerator

    instance_attribute(AIORTC, module, receiver, NACK_GENERATOR_ATTR, NackGenerator)
    _not_started(receiver, module)
    setattr(receiver, NACK_GENERATOR_ATTR, generator)


def decoder_error(receiver: RTCRtpReceiver, module: Any = aiortc) -> threading.Event:
    """The flag aiortc's decoder thread sets on a failed decode; the receiver then sends
    a PLI with its next packet (RFC 4585 section 6.3.1). Setting it asks for a keyframe."""
    flag: threading.Event = instance_attribute(
        AIORTC, module, receiver, DECODER_ERROR_ATTR, threading.Event)
    return flag


def buffered(buffer: JitterBuffer) -> Iterator[RtpPacket | None]:
    """The buffer's slots from its head (oldest) on, None for a gap; empty if it is empty."""
    origin = buffer._origin
    if origin is None:
        return
    packets = buffer._packets
    capacity = buffer.capacity
    for count in range(capacity):
        yield packets[(origin + count) % capacity]


def payload(packet: RtpPacket) -> bytes:
    """A received packet's depayloaded bytes, as aiortc's receiver stored them."""
    data = getattr(packet, PAYLOAD_ATTR, None)
    if not isinstance(data, bytes):
        raise AIORTC.fail(aiortc, f"RtpPacket.{PAYLOAD_ATTR} (the depayloaded bytes) is missing")
    return data
