"""The Janus benchmark's feeder: peercam's test pattern as plain RTP over UDP.

``python -m bench.rtp_feeder --port P --rtcp-port Q`` runs the camera's own
:class:`~camera.sources.testpattern.TestPatternSource` (the same libx264
settings the peercam camera uses), packetizes every access unit with aiortc's
H.264 packetizer (RFC 6184: single NAL unit, STAP-A and FU-A packets, the one
peercam's senders use) and sends it to a Janus streaming mountpoint. It is its
own process so its encode is not charged to Janus.

Keyframes: every second it sends an RTCP sender report to the mountpoint's
RTCP port, which tells Janus where to send feedback; a PLI or FIR coming back
(RFC 4585 section 6.3.1, RFC 5104 section 4.3.1) asks the encoder for an IDR
through peercam's own keyframe limiter (2/s, burst 2), exactly as a viewer
joining peercam does. It prints ``FEEDING`` once the first packet is out and
``STATS {json}`` when stdin closes, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: RTP clock rate for H.264 (RFC 6184 section 8.2.1).
CLOCK_RATE = 90_000
#: Seconds between RTCP sender reports (RFC 3550 section 6.2 allows this rate
#: for a single sender; Janus only needs one to learn our RTCP address).
SR_INTERVAL = 1.0
#: Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (RFC 5905 section 6).
NTP_EPOCH_OFFSET = 2_208_988_800


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (RFC 3550 section 4) of a ``time.time()`` value."""
    seconds = unix_time + NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))


class RtpPacketizer:
    """Access units in, RTP datagrams out: one SSRC, one payload type.

    The marker bit is set on the last packet of each access unit (RFC 6184
    section 5.1); the sequence number and timestamp start at random values
    (RFC 3550 section 5.1).
    """

    def __init__(self, payload_type: int, ssrc: int | None = None) -> None:
        from aiortc.codecs.h264 import H264Encoder

        self.payload_type = payload_type
        self.ssrc = random.getrandbits(32) if ssrc is None else ssrc
        self._packer = H264Encoder()
        self._sequence = random.getrandbits(16)
        self._timestamp_origin = random.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self.last_timestamp = self._timestamp_origin

    def packetize(self, access_unit: bytes, pts: int) -> list[bytes]:
        """RTP packets for one Annex-B access unit with a 90 kHz ``pts``."""
        import av
        from aiortc.rtp import RtpPacket

        packet = av.Packet(access_unit)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, CLOCK_RATE)
        payloads, timestamp = self._packer.pack(packet)
        self.last_timestamp = (self._timestamp_origin + timestamp) % (1 << 32)
        out = []
        for i, payload in enumerate(payloads):
            rtp = RtpPacket(payload_type=self.payload_type,
                            marker=int(i == len(payloads) - 1),
                            sequence_number=self._sequence,
                            timestamp=self.last_timestamp, ssrc=self.ssrc, payload=payload)
            self._sequence = (self._sequence + 1) % (1 << 16)
            self.packets += 1
            self.octets += len(payload)
            out.append(rtp.serialize())
        return out

    def sender_report(self, now: float) -> bytes:
        """An RTCP SR for what was sent so far (RFC 3550 section 6.4.1)."""
        from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

        info = RtcpSenderInfo(ntp_timestamp=ntp_timestamp(now), rtp_timestamp=self.last_timestamp,
                              packet_count=self.packets % (1 << 32),
                              octet_count=self.octets % (1 << 32))
        return bytes(RtcpSrPacket(ssrc=self.ssrc, sender_info=info))


def keyframe_requests(datagram: bytes) -> int:
    """How many PLI / FIR requests an RTCP compound packet carries (0 if malformed)."""
    from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket

    try:
        packets = RtcpPacket.parse(datagram)
    except ValueError:
        return 0
    return sum(1 for p in packets
               if isinstance(p, RtcpPsfbPacket) and p.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR))


class _Rtcp(asyncio.DatagramProtocol):
    def __init__(self, on_request: Any) -> None:
        self._on_request = on_request

    def datagram_received(self, data: bytes, addr: Any) -> None:
        for _ in range(keyframe_requests(data)):
            self._on_request()


async def feed(args: argparse.Namespace) -> dict[str, Any]:
    """Feed the mountpoint until stdin closes; return what was sent."""
    from camera.broadcaster import Broadcaster
    from camera.frames import EncodedFrame
    from camera.sources.base import VideoSettings
    from camera.sources.testpattern import TestPatternSource

    loop = asyncio.get_running_loop()
    # One stream, as the Janus mountpoint takes one (no second, lower layer).
    settings = VideoSettings(width=args.width, height=args.height, fps=args.fps,
                             bitrate=args.bitrate, low_layer=False)
    source: Any = TestPatternSource(settings, pattern=args.pattern)
    if args.clip:
        from bench.camera_proc import ensure_clip
        from camera.sources.file import FileSource

        source = FileSource(settings, ensure_clip(Path(args.clip), settings, args.pattern))
    limiter = Broadcaster(source.request_keyframe)  # peercam's IDR limiter, nothing else
    packetizer = RtpPacketizer(args.payload_type)
    stats = {"frames": 0, "keyframes": 0, "keyframe_requests": 0}
    target = (args.host, args.port)
    rtp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                 local_addr=(args.host, 0))

    def on_request() -> None:
        stats["keyframe_requests"] += 1
        logger.debug("keyframe request at %.3f", time.monotonic())
        limiter.request_keyframe("PLI from Janus")

    rtcp, _ = await loop.create_datagram_endpoint(lambda: _Rtcp(on_request),
                                                  local_addr=(args.host, 0))
    announced = False

    def sink(frame: EncodedFrame) -> None:
        nonlocal announced
        stats["frames"] += 1
        stats["keyframes"] += int(frame.keyframe)
        if frame.keyframe:
            logger.debug("keyframe sent at %.3f", time.monotonic())
        for datagram in packetizer.packetize(frame.data, frame.pts):
            rtp.sendto(datagram, target)
        if not announced:
            announced = True
            print("FEEDING", flush=True)

    async def reports() -> None:
        while True:
            if args.rtcp_port:
                rtcp.sendto(packetizer.sender_report(time.time()), (args.host, args.rtcp_port))
            await asyncio.sleep(SR_INTERVAL)

    reporter = asyncio.ensure_future(reports())
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await source.start(sink)
    try:
        # Until stdin closes; a failing reporter ends the feeder loudly, not silently.
        await asyncio.wait([reporter, stdin_closed], return_when=asyncio.FIRST_COMPLETED)
        if reporter.done():
            reporter.result()
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await source.close()
        limiter.close()
        rtp.close()
        rtcp.close()
    return {**stats, "packets": packetizer.packets, "octets": packetizer.octets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rtp_feeder", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="the mountpoint's RTP port")
    p.add_argument("--rtcp-port", type=int, default=0, help="its RTCP port (0: no feedback)")
    p.add_argument("--payload-type", type=int, default=96)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--pattern", default="bars", choices=["bars", "texture"],
                   help="the test pattern (texture: the encoder reaches its bitrate)")
    p.add_argument("--clip", default="",
                   help="a folder: play a pre-encoded clip of the pattern (as the camera's "
                   "--clip) instead of encoding live")
    p.add_argument("--debug", action="store_true", help="log keyframe requests and IDRs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.debug:
        for name in (__name__, "camera.broadcaster"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    stats = asyncio.run(feed(args))
    print("STATS " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
