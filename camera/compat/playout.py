"""The playout-delay RTP header extension on the camera's video (aiortc 1.16 lacks it).

``http://www.webrtc.org/experiments/rtp-hdrext/playout-delay`` carries the
smallest and largest delay the sender wants between a frame's capture and its
rendering: two 12-bit counts of 10 ms in three bytes. Chromium offers it for
every video m-line; a frame that carries 0/0 is rendered as soon as it is
decoded, without the jitter buffer's smoothing delay. aiortc neither answers the
extension (it keeps only the extensions in its own list) nor writes it.

:func:`negotiate` runs between ``setRemoteDescription(offer)`` and
``createAnswer``: for every video transceiver whose offered m-line lists the
extension, it adds the offer's extension id to the transceiver's private
``_headerExtensions`` (what aiortc answers from), and registers the extension's
bytes with the send loop of :mod:`camera.compat.fastsend`, which writes them into
the header of every packet. A viewer whose offer does not list the extension
gets neither. The private attribute is checked on each transceiver before it is
touched (:func:`check_transceiver`): it exists only on an instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aiortc
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

from camera.compat import fastsend
from camera.compat.guard import AIORTC, instance_attribute
from camera.errors import BadConfig

URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
UNIT_MS = 10
"""The extension counts in 10 ms steps."""
MAX_MS = 0xFFF * UNIT_MS
"""The largest delay 12 bits of 10 ms steps can carry (40.95 s)."""
_EXTENSIONS = "_headerExtensions"
_MEDIA_SECTION = re.compile(r"\r?\n(?=m=)")
"""Where an SDP's media sections start (the first piece is the session's lines)."""
_EXTMAP = re.compile(r"a=extmap:(\d+)(?:/\S+)?\s+(\S+)")
"""``a=extmap:<id>[/<direction>] <uri>``: the id and the URI."""


@dataclass(frozen=True)
class PlayoutDelay:
    """The smallest and largest playout delay the camera asks a receiver for."""

    min_ms: int = 0
    max_ms: int = 0

    def __post_init__(self) -> None:
        for name, value in (("min_ms", self.min_ms), ("max_ms", self.max_ms)):
            if not 0 <= value <= MAX_MS or value % UNIT_MS:
                raise BadConfig(f"playout delay {name} {value}: need 0..{MAX_MS} ms "
                                f"in steps of {UNIT_MS}")
        if self.min_ms > self.max_ms:
            raise BadConfig(f"playout delay {self.min_ms}..{self.max_ms} ms: the smallest "
                            "is above the largest")

    @property
    def value(self) -> bytes:
        """The extension's three bytes: 12 bits of minimum, 12 of maximum (10 ms units)."""
        packed = (self.min_ms // UNIT_MS) << 12 | self.max_ms // UNIT_MS
        return packed.to_bytes(3, "big")


def check_transceiver(transceiver: RTCRtpTransceiver,
                      aiortc_module: ModuleType | Any = aiortc) -> None:
    """The transceiver's negotiated extension list is there and a list."""
    instance_attribute(AIORTC, aiortc_module, transceiver, _EXTENSIONS, list)


def offered_id(offer_sdp: str, mid: str | None) -> int | None:
    """The id the offer gives the extension in the video m-line ``mid`` (None: not offered).

    A scan of the offer's lines, not aiortc's parser: that one builds every codec
    and candidate of the offer again (about 4 ms of the camera's answer, which
    ``setRemoteDescription`` has just spent once) for one attribute. It runs
    after ``setRemoteDescription`` accepted the offer, so the SDP is well formed.
    """
    for section in _MEDIA_SECTION.split(offer_sdp)[1:]:
        lines = section.splitlines()
        if not lines[0].startswith("m=video "):
            continue
        section_mid = next((line[len("a=mid:"):].strip() for line in lines
                            if line.startswith("a=mid:")), None)
        if mid is not None and section_mid != mid:
            continue
        for line in lines:
            found = _EXTMAP.match(line)
            if found and found.group(2) == URI:
                return int(found.group(1))
    return None


def negotiate(pc: RTCPeerConnection, delay: PlayoutDelay) -> int:
    """Between ``setRemoteDescription(offer)`` and ``createAnswer``: answer the
    extension where the offer lists it and have the sender stamp it.

    Only a sender whose loop :func:`camera.compat.share_packetization` replaced
    can stamp it; a transceiver whose sender it did not replace is left alone.
    Returns how many transceivers negotiated it.
    """
    remote = pc.remoteDescription
    if remote is None:
        return 0
    negotiated = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "video" or fastsend.stats_of(transceiver.sender) is None:
            continue
        check_transceiver(transceiver)
        extension_id = offered_id(remote.sdp, transceiver.mid)
        if extension_id is None:
            continue
        extensions: list[RTCRtpHeaderExtensionParameters] = getattr(transceiver, _EXTENSIONS)
        if not any(e.uri == URI for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=extension_id, uri=URI))
        fastsend.add_header_extension(transceiver.sender, extension_id, delay.value)
        negotiated += 1
    return negotiated
