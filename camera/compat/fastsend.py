"""A cheaper RTP send loop for aiortc 1.16's ``RTCRtpSender`` on the passthrough path.

aiortc's own loop (``RTCRtpSender._run_rtp``) packetizes every access unit again
for every viewer, builds an ``RtpPacket`` object per packet (kept for NACKs),
serializes its header extensions per packet and goes down four awaited layers
(DTLS, ICE transport, ICE connection, protocol) to one ``sendto`` per packet.

:func:`share_packetization` replaces that loop on one sender with one that

* takes RTP payloads cut once per access unit for every viewer on a layer
  (:meth:`camera.track.PassthroughTrack.next_payloads`, :func:`packetize_h264`),
  and sends them at once or, where the track says so (its ``spread``: an IDR on
  a layer for thin links), spread evenly over that many seconds;
* serializes the header with aiortc's own header-extension code once per
  viewer (again if its MID or SSRC change), plus the extensions aiortc cannot
  write that were added with :func:`add_header_extension` (playout-delay,
  :mod:`camera.compat.playout`); per access unit it puts in the abs-send-time,
  per packet it packs the sequence number, marker and timestamp;
* keeps the plain packets (bytes, no objects) for retransmission, and serves a
  NACK from them as aiortc would (RTX when negotiated); a NACK for a packet no
  longer kept goes to the ``_retransmit`` in place before (the camera's hook,
  which asks for a keyframe);
* protects with the DTLS transport's SRTP session and hands the datagram
  straight to the UDP transport of the ICE pair in use (through the pair's
  protocol where that is not plain UDP: TURN);
* updates the counters aiortc's RTCP sender reports and stats read, once per
  access unit;
* sends padding on request (:func:`send_padding`, :func:`pad_before_next_frame`):
  padding-only RTX packets, which cost the link bytes and the viewer nothing, for
  the layer controller's probes of a higher rate.

DTLS, ICE, SRTP keys, RTCP (PLI/FIR, NACK, receiver reports) stay aiortc's.
Everything private it touches is checked by :func:`check_members` (the class)
and when a loop starts (the sender and its transports).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aioice
import aioice.ice
import aiortc
from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import (
    RTP_HISTORY_SIZE,
    HeaderExtensionsMap,
    RtpPacket,
    pack_header_extensions,
    unpack_header_extensions,
    wrap_rtx,
)
from aiortc.utils import random32

from camera.compat.guard import AIOICE, AIORTC, Member, instance_attribute, require

logger = logging.getLogger(__name__)

_S = "_RTCRtpSender__"
RTP_STARTED = _S + "rtp_started"
RTP_EXITED = _S + "rtp_exited"
EXTENSIONS_MAP = _S + "rtp_header_extensions_map"
TRACK = _S + "track"
MID = _S + "mid"
RTX_PAYLOAD_TYPE = _S + "rtx_payload_type"
RTX_SEQUENCE_NUMBER = _S + "rtx_sequence_number"
NTP_TIMESTAMP = _S + "ntp_timestamp"
RTP_TIMESTAMP = _S + "rtp_timestamp"
OCTET_COUNT = _S + "octet_count"
PACKET_COUNT = _S + "packet_count"
DTLS_TX_BYTES = "_RTCDtlsTransport__tx_bytes"
DTLS_TX_PACKETS = "_RTCDtlsTransport__tx_packets"

_CLASS_MEMBERS = (
    Member("_run_rtp", "coroutine", ("self", "codec")),
    Member("_retransmit", "coroutine", ("self", "sequence_number")),
)
_PACKETIZER_MEMBERS = (
    Member("_split_bitstream", "function", ("buf",)),
    Member("_packetize", "function", ("cls", "packages")),
)
_SENDER_STATE: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    (RTP_STARTED, asyncio.Event),
    (RTP_EXITED, asyncio.Event),
    (EXTENSIONS_MAP, HeaderExtensionsMap),
    (RTX_SEQUENCE_NUMBER, int),
    (NTP_TIMESTAMP, int),
    (RTP_TIMESTAMP, int),
    (OCTET_COUNT, int),
    (PACKET_COUNT, int),
    ("_ssrc", int),
    ("_rtx_ssrc", int),
    ("_enabled", bool),
)
_SENDER_OPTIONAL = (TRACK, MID, RTX_PAYLOAD_TYPE)
"""Present from construction, possibly None until ``send()``."""

_HEAD = struct.Struct("!BBHL")
"""The first 8 bytes of an RTP header: V/P/X/CC, M/PT, sequence number, timestamp."""


def check_members(module: Any = aiortc, sender_class: Any = RTCRtpSender,
                  encoder_class: Any = H264Encoder) -> None:
    """The sender methods replaced and the packetizer functions used."""
    for member in _CLASS_MEMBERS:
        require(AIORTC, module, sender_class, member)
    for member in _PACKETIZER_MEMBERS:
        require(AIORTC, module, encoder_class, member)


def packetize_h264(access_unit: bytes) -> tuple[bytes, ...]:
    """RFC 6184 payloads of one Annex-B access unit, exactly as aiortc cuts them
    (single NAL unit, STAP-A, FU-A; at most aiortc's packet size)."""
    return tuple(H264Encoder._packetize(H264Encoder._split_bitstream(access_unit)))


_KEYFRAME_NAL_TYPES = frozenset({5, 7, 8})
"""IDR slice, SPS, PPS: what an IDR access unit's packets carry."""


def carries_keyframe(packet: bytes) -> bool:
    """Whether this plain RTP packet (H.264, RFC 6184) carries part of an IDR access
    unit: an IDR slice (whole or an FU-A fragment) or the SPS/PPS in front of one."""
    if len(packet) < 13:
        return False
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # a header extension block
        if len(packet) < offset + 4:
            return False
        offset += 4 + 4 * struct.unpack_from("!H", packet, offset + 2)[0]
    return payload_carries_keyframe(packet[offset:])


def payload_carries_keyframe(payload: bytes) -> bool:
    """The same for an RTP payload (what :func:`packetize_h264` cuts)."""
    if len(payload) < 2:
        return False
    nal = payload[0] & 0x1F
    if nal == 28:  # FU-A: the fragmented NAL unit's type is in the FU header
        return payload[1] & 0x1F in _KEYFRAME_NAL_TYPES
    if nal == 24:  # STAP-A: each aggregated NAL unit after its 2-byte size
        at = 1
        while at + 2 < len(payload):
            if payload[at + 2] & 0x1F in _KEYFRAME_NAL_TYPES:
                return True
            at += 2 + int.from_bytes(payload[at : at + 2], "big")
        return False
    return nal in _KEYFRAME_NAL_TYPES


def _check_sender(sender: RTCRtpSender) -> None:
    for name, kind in _SENDER_STATE:
        instance_attribute(AIORTC, aiortc, sender, name, kind)
    for name in _SENDER_OPTIONAL:
        if not hasattr(sender, name):
            raise AIORTC.fail(aiortc, f"RTCRtpSender.{name} is missing: the hook that uses "
                              "it would be lost")


def _check_dtls(dtls: RTCDtlsTransport) -> None:
    for name in (DTLS_TX_BYTES, DTLS_TX_PACKETS):
        instance_attribute(AIORTC, aiortc, dtls, name, int)
    instance_attribute(AIORTC, aiortc, dtls, "_state", State)
    connection = instance_attribute(AIORTC, aiortc, dtls.transport, "_connection",
                                    aioice.ice.Connection)
    instance_attribute(AIOICE, aioice, connection, "_nominated", dict)


class SharedSendStats:
    """What one sender's loop did (tests and benchmarks read it)."""

    def __init__(self) -> None:
        self.frames = 0
        self.packets = 0
        self.retransmitted = 0
        self.retransmitted_keyframe = 0
        """Of those, packets of an IDR access unit (its SPS/PPS and IDR slices)."""
        self.keyframe_packets = 0
        """Packets sent of IDR access units (of ``packets``)."""
        self.direct_sends = 0
        """Datagrams handed straight to a UDP transport (not through a TURN protocol)."""
        self.last_sequence_number: int | None = None
        """Of the last RTP packet sent (None: nothing sent yet)."""
        self.padding_packets = 0
        """Padding-only RTX packets sent (:func:`send_padding`), not counted in ``packets``."""
        self.padding_bytes = 0
        """Their datagrams' bytes."""
        self.bursts = 0
        """Bursts of padding sent before an access unit (:func:`pad_before_next_frame`)."""


_STATS: weakref.WeakKeyDictionary[RTCRtpSender, SharedSendStats] = weakref.WeakKeyDictionary()
_EXTRA: weakref.WeakKeyDictionary[RTCRtpSender, dict[int, bytes]] = weakref.WeakKeyDictionary()
"""Per sender: header extensions aiortc does not write (id -> value), on every packet."""
_PADDERS: weakref.WeakKeyDictionary[
    RTCRtpSender, Callable[[int], Awaitable[int]]] = weakref.WeakKeyDictionary()

_BURSTS: weakref.WeakKeyDictionary[RTCRtpSender, int] = weakref.WeakKeyDictionary()
"""Per sender: padding bytes to send just before the next access unit."""

PADDING_BYTES = 255
"""Padding per padding-only packet: the most RTP's one-byte padding length allows."""


def add_header_extension(sender: RTCRtpSender, extension_id: int, value: bytes) -> None:
    """Write extension ``extension_id`` with ``value`` into every RTP packet ``sender``
    sends from now on (its header is serialized again). One-byte form where the id
    and value allow it (RFC 8285), as aiortc decides for the whole header."""
    if not 1 <= extension_id <= 255 or not 1 <= len(value) <= 255:
        raise ValueError(f"header extension {extension_id} with {len(value)} byte(s): "
                         "need an id 1..255 and 1..255 bytes")
    _EXTRA.setdefault(sender, {})[extension_id] = bytes(value)


def with_extensions(header: bytes, extra: dict[int, bytes]) -> bytes:
    """An RTP header (12 bytes and its extension block, no CSRCs, no payload) with
    the ``extra`` extensions added after aiortc's own, packed as aiortc packs them."""
    if not extra:
        return header
    has_block = bool(header[0] & 0x10)
    if header[0] & 0x0F:
        raise ValueError("an RTP header with CSRCs: not what the send loop builds")
    present: list[tuple[int, bytes]] = []
    if has_block:
        profile, words = struct.unpack_from("!HH", header, 12)
        present = unpack_header_extensions(profile, header[16 : 16 + 4 * words])
        if len(header) != 16 + 4 * words:
            raise ValueError("an RTP header with bytes after its extension block")
    elif len(header) != 12:
        raise ValueError("an RTP header with bytes after its fixed part")
    ids = {x_id for x_id, _ in present}
    added = present + [(x_id, v) for x_id, v in sorted(extra.items()) if x_id not in ids]
    profile, block = pack_header_extensions(added)
    return (bytes([header[0] | 0x10]) + header[1:12] + struct.pack("!HH", profile,
                                                                     len(block) // 4) + block)


def stats_of(sender: RTCRtpSender) -> SharedSendStats | None:
    """The counters of a sender :func:`share_packetization` changed (None: not changed)."""
    return _STATS.get(sender)


def pad_before_next_frame(sender: RTCRtpSender, nbytes: int) -> bool:
    """Send ``nbytes`` of padding (as :func:`send_padding`) in one burst just before
    the next access unit's packets, so they queue behind it: where a link's queue
    cannot take a burst that size (an IDR of the layer above), the frame's own
    packets are the ones dropped, and the viewer asks for them again at once.
    False: this sender cannot pad."""
    if sender not in _PADDERS or nbytes <= 0:
        return False
    _BURSTS[sender] = nbytes
    return True


async def send_padding(sender: RTCRtpSender, nbytes: int) -> int:
    """Send at least ``nbytes`` (datagram bytes) of padding-only RTX packets on
    ``sender`` now; returns the bytes sent (0: this sender cannot pad: its loop
    was not replaced by :func:`share_packetization`, the viewer negotiated no RTX,
    or nothing has been sent yet).

    A padding-only packet is an RTX packet (RFC 4588) whose payload is all RTP
    padding: every receiver drops it unread (aiortc, libwebrtc: an RTX payload
    under two bytes), and it costs the link what a packet of the layer above
    would. It is how a sender tries a higher rate without changing the picture.
    """
    pad = _PADDERS.get(sender)
    if pad is None or nbytes <= 0:
        return 0
    return await pad(nbytes)


def share_packetization(sender: RTCRtpSender) -> SharedSendStats | None:
    """Make ``sender`` send its track's shared payloads (see the module doc).

    The track must offer ``next_payloads(packetize)`` (PassthroughTrack does);
    any other track keeps aiortc's loop and this returns None. Call it after
    the camera's own hooks (:func:`camera.compat.hook_sender`) and before the
    sender starts (it starts when the peer connection connects): a NACK for a
    packet no longer kept is handed to the ``_retransmit`` in place now.
    """
    track = getattr(sender, "track", None)
    if not callable(getattr(track, "next_payloads", None)):
        return None
    check_members()
    _check_sender(sender)
    fallback_retransmit = sender._retransmit  # the class member is checked above
    history: list[bytes | None] = [None] * RTP_HISTORY_SIZE
    stats = SharedSendStats()
    extensions_map: HeaderExtensionsMap = getattr(sender, EXTENSIONS_MAP)
    checked: set[int] = set()

    def transport() -> RTCDtlsTransport:
        dtls = sender.transport
        if id(dtls) not in checked:
            _check_dtls(dtls)
            checked.add(id(dtls))
        if dtls._state != State.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        return dtls

    async def run_rtp(codec: Any) -> None:
        getattr(sender, RTP_STARTED).set()
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        payload_type = int(codec.payloadType)
        try:
            while True:
                track = getattr(sender, TRACK)
                if track is None:
                    await asyncio.sleep(0.02)
                    continue
                payloads, pts = await track.next_payloads(packetize_h264)
                if not sender._enabled or not payloads:
                    continue
                spread = getattr(track, "spread", 0.0)
                keyframe = getattr(track, "keyframe", False) is True
                burst = _BURSTS.pop(sender, 0)
                if burst and await pad(burst):
                    stats.bursts += 1
                sequence_number = await _send_frame(payloads, pts, payload_type,
                                                    sequence_number, timestamp_origin,
                                                    spread if isinstance(spread, float) else 0.0)
                if keyframe:
                    stats.keyframe_packets += len(payloads)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # The exit below must run (RTCRtpSender.stop waits for it), as in aiortc.
            logger.exception("RTP send loop failed")
        track = getattr(sender, TRACK)
        if track is not None:
            track.stop()
            setattr(sender, TRACK, None)
        getattr(sender, RTP_EXITED).set()

    header: list[Any] = []  # [(mid, ssrc, extra), first byte, before abs-send-time, after]

    def header_for(payload_type: int, abs_send_time: int) -> tuple[int, bytes]:
        """(first byte, header from the SSRC on) of this frame's packets.

        aiortc serializes the header with its extensions; that is done again only
        when what goes into it (MID, SSRC, the extensions added with
        :func:`add_header_extension`) changes. Between frames only the
        abs-send-time value moves: found once by serializing two values, then put
        in place with a slice.
        """
        mid, ssrc = getattr(sender, MID), sender._ssrc
        extra = _EXTRA.get(sender, {})
        key = (mid, ssrc, tuple(sorted(extra.items())))
        if not header or header[0] != key:
            heads = []
            for probe in (0, 0xABCDEF):
                template = RtpPacket(payload_type=payload_type, ssrc=ssrc)
                template.extensions.abs_send_time = probe
                template.extensions.mid = mid
                heads.append(with_extensions(template.serialize(extensions_map), extra))
            a, b = heads
            at = next((i for i in range(8, len(a)) if a[i] != b[i]), None)
            if at is not None and (len(a) != len(b) or a[at : at + 3] != bytes(3)
                                   or b[at : at + 3] != b"\xab\xcd\xef"):
                raise AIORTC.fail(aiortc, "the RTP header extensions are not serialized "
                                  "as the send loop expects (abs-send-time)")
            if at is None:  # abs-send-time not negotiated: the header never changes
                header[:] = [key, a[0], a[8:], b""]
            else:
                header[:] = [key, a[0], a[8:at], a[at + 3 :]]
        _, first, before, after = header
        if not after:
            return first, before
        return first, before + abs_send_time.to_bytes(3, "big") + after

    async def _send_frame(payloads: Sequence[bytes], pts: int, payload_type: int,
                          sequence_number: int, timestamp_origin: int,
                          spread: float = 0.0) -> int:
        dtls = transport()
        timestamp = (timestamp_origin + pts) & 0xFFFFFFFF
        ntp = current_ntp_time()
        first, rest = header_for(payload_type, (ntp >> 14) & 0x00FFFFFF)
        protect = dtls._tx_srtp.protect
        pair = dtls.transport._connection._nominated.get(1)  # checked by transport()
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol, address = pair.protocol, pair.remote_addr
        udp: Callable[[bytes, Any], None] | None = None
        if type(protocol) is aioice.ice.StunProtocol and protocol.transport is not None:
            udp = protocol.transport.sendto
        pack = _HEAD.pack
        last = len(payloads) - 1
        octets = sent = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i, payload in enumerate(payloads):
            if spread > 0 and i:
                # Packet i leaves at i/n of the spread (sleeps under a millisecond are
                # left out: the loop's timer is not finer).
                delay = began + spread * i / len(payloads) - loop.time()
                if delay >= 0.001:
                    await asyncio.sleep(delay)
            plain = pack(first, payload_type | 0x80 if i == last else payload_type,
                         sequence_number, timestamp) + rest + payload
            history[sequence_number % RTP_HISTORY_SIZE] = plain
            datagram = protect(plain)
            if udp is not None:
                udp(datagram, address)
            else:
                await protocol.send_data(datagram, address)
            sent += len(datagram)
            octets += len(payload)
            sequence_number = (sequence_number + 1) & 0xFFFF
        count = last + 1
        stats.last_sequence_number = (sequence_number - 1) & 0xFFFF
        stats.frames += 1
        stats.packets += count
        if udp is not None:
            stats.direct_sends += count
        setattr(sender, NTP_TIMESTAMP, ntp)
        setattr(sender, RTP_TIMESTAMP, timestamp)
        setattr(sender, OCTET_COUNT, getattr(sender, OCTET_COUNT) + octets)
        setattr(sender, PACKET_COUNT, getattr(sender, PACKET_COUNT) + count)
        setattr(dtls, DTLS_TX_BYTES, getattr(dtls, DTLS_TX_BYTES) + sent)
        setattr(dtls, DTLS_TX_PACKETS, getattr(dtls, DTLS_TX_PACKETS) + count)
        return sequence_number

    async def retransmit(sequence_number: int) -> None:
        plain = history[sequence_number % RTP_HISTORY_SIZE]
        if plain is None or _HEAD.unpack_from(plain)[2] != sequence_number:
            await fallback_retransmit(sequence_number)  # lost beyond what is kept
            return
        packet = RtpPacket.parse(plain, extensions_map)
        rtx_payload_type = getattr(sender, RTX_PAYLOAD_TYPE)
        if rtx_payload_type is not None:
            rtx_sequence = getattr(sender, RTX_SEQUENCE_NUMBER)
            packet = wrap_rtx(packet, payload_type=rtx_payload_type,
                              sequence_number=rtx_sequence, ssrc=sender._rtx_ssrc)
            setattr(sender, RTX_SEQUENCE_NUMBER, (rtx_sequence + 1) & 0xFFFF)
        stats.retransmitted += 1
        if carries_keyframe(plain):
            stats.retransmitted_keyframe += 1
        await sender.transport._send_rtp(packet.serialize(extensions_map))

    async def pad(nbytes: int) -> int:
        rtx_payload_type = getattr(sender, RTX_PAYLOAD_TYPE)
        if rtx_payload_type is None or stats.last_sequence_number is None:
            return 0
        dtls = transport()
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol, address = pair.protocol, pair.remote_addr
        template = RtpPacket(payload_type=rtx_payload_type,
                             timestamp=getattr(sender, RTP_TIMESTAMP), ssrc=sender._rtx_ssrc)
        template.extensions.mid = getattr(sender, MID)
        template.extensions.abs_send_time = (current_ntp_time() >> 14) & 0x00FFFFFF
        head = bytearray(template.serialize(extensions_map))
        head[0] |= 0x20  # P: the payload is padding only, its length in the last byte
        tail = bytes(PADDING_BYTES - 1) + bytes([PADDING_BYTES])
        protect = dtls._tx_srtp.protect
        sent = count = 0
        while sent < nbytes:
            sequence = getattr(sender, RTX_SEQUENCE_NUMBER)
            setattr(sender, RTX_SEQUENCE_NUMBER, (sequence + 1) & 0xFFFF)
            struct.pack_into("!H", head, 2, sequence)
            datagram = protect(bytes(head) + tail)
            if type(protocol) is aioice.ice.StunProtocol and protocol.transport is not None:
                protocol.transport.sendto(datagram, address)
            else:
                await protocol.send_data(datagram, address)
            sent += len(datagram)
            count += 1
        stats.padding_packets += count
        stats.padding_bytes += sent
        setattr(dtls, DTLS_TX_BYTES, getattr(dtls, DTLS_TX_BYTES) + sent)
        setattr(dtls, DTLS_TX_PACKETS, getattr(dtls, DTLS_TX_PACKETS) + count)
        return sent

    _STATS[sender] = stats
    _PADDERS[sender] = pad
    sender._run_rtp = run_rtp  # type: ignore[method-assign]
    sender._retransmit = retransmit  # type: ignore[method-assign]
    return stats


