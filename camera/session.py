"""One viewer's peer connection on the camera: offer in, answer out, media out.

The viewer may trickle its ICE candidates after the offer (docs/protocol.md,
``candidate``): the agent checks each one's signature, then hands it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from aiortc import RTCIceCandidate, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from camera.broadcaster import Broadcaster
from camera.compat import (
    PlayoutDelay,
    answer_as_dtls_server,
    hook_sender,
    ice_timing,
    negotiate_playout_delay,
    share_packetization,
    watch_rtcp,
)
from camera.errors import PeercamError
from camera.frames import Layer
from camera.ice import REFLEXIVE_TYPES, answer_waits
from camera.ladder import LABEL as QUALITY_LABEL
from camera.ptz import LABEL as PTZ_LABEL
from camera.ptz import PtzControl
from camera.quality import ViewerQuality
from camera.track import PassthroughTrack
from camera.webrtc import (
    make_peer_connection,
    prefer_h264,
    reflexive_checked,
    selected_pair_types,
    set_profile_level_id,
)
from services.signaling import MAX_CANDIDATES

logger = logging.getLogger(__name__)


CLOSE_TIMEOUT = 5.0
"""Seconds a session's peer connection may take to close before it is given up."""

_VIDEO_SECTION = re.compile(r"^m=video ", re.MULTILINE)
_END_OF_CANDIDATES = re.compile(r"^a=end-of-candidates\r?$", re.MULTILINE)
_CANDIDATE_TYPE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ \S+ \d+ typ (\S+)", re.MULTILINE)


class SessionFailed(PeercamError, RuntimeError):
    """The viewer's offer could not be answered (no H.264, bad SDP)."""


class BadCandidate(PeercamError, ValueError):
    """A viewer's trickled candidate cannot be used (malformed or a repeated ``seq``)."""


_CANDIDATE_PREFIX = "candidate:"


def parse_candidate(
    line: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> RTCIceCandidate | None:
    """aiortc's form of a browser's candidate line; None for end-of-candidates ("").

    ``line`` is what RTCIceCandidate.candidate holds: the SDP attribute value
    of RFC 8839 section 5.1, ``candidate:`` included.
    """
    if line == "":
        return None  # end-of-candidates (trickle ICE, RFC 8838)
    if not line.startswith(_CANDIDATE_PREFIX):
        raise BadCandidate(f"candidate {line[:60]!r}: does not start with 'candidate:'")
    try:
        candidate = candidate_from_sdp(line[len(_CANDIDATE_PREFIX):])
    except (AssertionError, ValueError, IndexError) as exc:
        raise BadCandidate(f"candidate {line[:60]!r}: {str(exc) or 'too few fields'}") from None
    # RFC 8445: component IDs 1..256, priorities 1..2^31-1.
    if not 1 <= candidate.component <= 256 or not 0 < candidate.priority < 2**31:
        raise BadCandidate(f"candidate {line[:60]!r}: component or priority out of range")
    if not 0 < candidate.port < 65536:
        raise BadCandidate(f"candidate {line[:60]!r}: port {candidate.port} out of range")
    candidate.sdpMid = sdp_mid
    candidate.sdpMLineIndex = sdp_mline_index
    return candidate


class ViewerSession:
    """A viewer watching through its own peer connection and its own track."""

    def __init__(
        self,
        session_id: str,
        broadcaster: Broadcaster,
        ice_servers: list[dict[str, Any]],
        on_closed: Callable[[ViewerSession, str], None],
        *,
        ice_timeout: float = 30.0,
        viewer_key: str | None = None,
        ptz: PtzControl | None = None,
        authorized: Callable[[str | None], bool] | None = None,
        layer_bitrates: Mapping[Layer, int] | None = None,
        probe_revert: bool = True,
        probe_padding: bool = True,
        on_connected: Callable[[ViewerSession], None] | None = None,
        playout_delay: PlayoutDelay | None = None,
    ) -> None:
        """``authorized(viewer_key)`` is asked for every quality-channel request (None:
        every request is refused); ``layer_bitrates`` are the layers' target bitrates;
        ``on_connected`` is called once ICE and DTLS are up; ``playout_delay`` is asked
        of a viewer whose offer lists the playout-delay extension (None: never)."""
        self.session_id = session_id
        self.viewer_key = viewer_key
        """The ACL key whose signed offer opened this session (revocation ends it)."""
        self._broadcaster = broadcaster
        self._on_closed = on_closed
        self._on_connected = on_connected
        self._ice_timeout = ice_timeout
        self._ptz = ptz
        self._authorized = authorized or (lambda key: False)
        self._layer_bitrates = layer_bitrates
        self._probe_revert = probe_revert
        self._probe_padding = probe_padding
        self._playout_delay = playout_delay
        self.quality: ViewerQuality | None = None
        self._video_sender: RTCRtpSender | None = None
        """This viewer's layer choice (None for a control-only session)."""
        self.offer_sdp: str | None = None
        """The viewer's signed offer, once :meth:`answer` has it (candidates sign its hash)."""
        self._offer_applied = False
        self._early_candidates: list[RTCIceCandidate | None] = []
        """Trickled before the offer was applied: aiortc needs its transceivers first."""
        self._candidate_seqs: set[int] = set()
        self._has_servers = bool(ice_servers)
        self._remote_types: list[str] = []
        """Types of the viewer's trickled candidates applied so far."""
        self._host_at: float | None = None
        """Loop time the viewer's first trickled host candidate was applied."""
        self._candidate_in = asyncio.Event()
        """Set as each trickled candidate (or end-of-candidates) is applied."""
        self._reflexive_in = asyncio.Event()
        """Set once a server-reflexive or relayed candidate of the viewer (or its
        end-of-candidates) is applied: a held answer goes (camera.ice rule 6)."""
        self.pc: RTCPeerConnection = make_peer_connection(ice_servers)
        self.track: PassthroughTrack | None = None
        self.connected = asyncio.Event()
        self.last_rtcp: float | None = None
        """Loop time of the viewer's last RTCP packet (video sessions; None: none yet)."""
        self._closing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("datachannel", self._datachannel)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the viewer's offer and return our answer SDP (ICE gathered; checks
        started; held up to ``DirectFirst.answer_hold`` for a trickling viewer's
        server-reflexive candidate, camera.ice rule 6)."""
        self.offer_sdp = offer_sdp
        logger.debug("session %s: offer in", self.session_id)
        if _VIDEO_SECTION.search(offer_sdp):
            self.track = PassthroughTrack(self._broadcaster)
            # The transceiver must exist before setRemoteDescription so that our
            # codec preferences apply; otherwise aiortc picks VP8.
            transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
            prefer_h264(transceiver)
            watch_rtcp(transceiver.sender, self._rtcp_seen)
            self._video_sender = transceiver.sender
            self.quality = ViewerQuality(session_id=self.session_id, track=self.track,
                                         viewer_key=self.viewer_key,
                                         authorized=self._authorized,
                                         bitrates=self._layer_bitrates,
                                         revert_on_picture_loss=self._probe_revert,
                                         pad_probes=self._probe_padding)
            hook_sender(transceiver.sender, self._keyframe_wanted)
            # The offer is signed by a viewer in the ACL: the IDR it starts from is
            # made now, while the answer is made and travels and ICE and DTLS run.
            self.track.prepare()
            share_packetization(transceiver.sender)  # after hook_sender: NACK misses
        # else: a control-only session (``peercam ptz``): a transceiver the offer
        # has no m-line for would break aiortc's answer, and no video is wanted.
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await self._apply_early_candidates()
            answer_as_dtls_server(self.pc)  # the viewer starts the DTLS handshake
            if self._playout_delay is not None:
                negotiate_playout_delay(self.pc, self._playout_delay)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, KeyError, IndexError) as exc:
            raise SessionFailed(f"cannot answer this offer: {exc}") from None
        except Exception as exc:  # aiortc raises its own OperationError / InvalidStateError
            raise SessionFailed(f"cannot answer this offer: {exc}") from None
        self._watchdog = asyncio.create_task(self._connect_deadline(), name="session-deadline")
        logger.debug("session %s: answer made", self.session_id)
        await self._hold_answer(offer_sdp)
        local = self.pc.localDescription
        return set_profile_level_id(local.sdp, self._broadcaster.profile_level_id)

    def _keyframe_wanted(self, reason: str) -> None:
        """The viewer lost a picture: an IDR on its layer, and its probe (if any) failed."""
        if self.quality is not None:
            self.quality.picture_lost(reason)
        if self.track is not None:
            self.track.request_keyframe(reason)

    async def add_candidate(
        self, seq: int, line: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """Use one of the viewer's trickled candidates; its signature is already checked.

        ``line`` "" is end-of-candidates. Each ``seq`` is used once (a replay is
        refused); one that comes before the offer is applied waits for it.
        """
        if not 0 <= seq < MAX_CANDIDATES or seq in self._candidate_seqs:
            raise BadCandidate(f"seq {seq}: out of range or already used")
        candidate = parse_candidate(line, sdp_mid, sdp_mline_index)
        self._candidate_seqs.add(seq)
        if self._closing is not None:
            return
        if not self._offer_applied:
            self._early_candidates.append(candidate)
            return
        await self._apply_candidate(candidate)

    async def _apply_early_candidates(self) -> None:
        self._offer_applied = True
        early, self._early_candidates = self._early_candidates, []
        # Concurrently, as aiortc does with the offer's own candidates (an mDNS
        # name is resolved for up to a second); end-of-candidates last.
        await asyncio.gather(*(self._apply_candidate(c) for c in early if c is not None))
        if None in early:
            await self._apply_candidate(None)

    async def _hold_answer(self, offer_sdp: str) -> None:
        """Checks are running: the answer waits, briefly, until our check to one of the
        viewer's server-reflexive (or relayed) candidates has left, so that the
        viewer's first check meets our NAT open (camera.ice, rule 6)."""
        hold = ice_timing().answer_hold
        checked = reflexive_checked(self.pc)
        if (hold <= 0 or checked is None or checked.is_set() or not answer_waits(
                trickled=not _END_OF_CANDIDATES.search(offer_sdp), servers=self._has_servers,
                offered_types=_CANDIDATE_TYPE.findall(offer_sdp))):
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        after_host = ice_timing().answer_hold_after_host
        while not self._reflexive_in.is_set():  # a reflexive one, or end-of-candidates
            limit = began + hold
            if self._host_at is not None:
                limit = min(limit, self._host_at + after_host)
            if loop.time() >= limit:
                break
            self._candidate_in.clear()
            try:
                async with asyncio.timeout(limit - loop.time()):
                    await self._candidate_in.wait()
            except TimeoutError:
                break
        if any(t in REFLEXIVE_TYPES for t in self._remote_types):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, began + hold - loop.time())):
                    await checked.wait()  # our check to it has left: our NAT is open
        logger.debug("session %s: answer held %.1f ms%s", self.session_id,
                     1000 * (loop.time() - began),
                     "" if checked.is_set() else " (no check to a reflexive candidate yet)")

    async def _apply_candidate(self, candidate: RTCIceCandidate | None) -> None:
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception as exc:  # aiortc/aioice raise ValueError or their own errors
            logger.warning("session %s: candidate %s not applied: %s", self.session_id,
                           candidate, exc)
            return
        if candidate is not None:
            self._remote_types.append(candidate.type)
            if candidate.type == "host" and self._host_at is None:
                self._host_at = asyncio.get_running_loop().time()
        self._candidate_in.set()
        if candidate is None or candidate.type in REFLEXIVE_TYPES:
            self._reflexive_in.set()
        logger.debug("session %s: remote candidate %s", self.session_id,
                     candidate or "end-of-candidates")

    async def _connect_deadline(self) -> None:
        try:
            async with asyncio.timeout(self._ice_timeout):
                await self.connected.wait()
        except TimeoutError:
            logger.info("session %s: not connected after %.0f s", self.session_id,
                        self._ice_timeout)
            self.close("ICE did not connect")

    def _rtcp_seen(self) -> None:
        self.last_rtcp = asyncio.get_running_loop().time()

    def quiet(self, now: float, after: float) -> bool:
        """A connected video session whose viewer has sent no RTCP for ``after`` seconds:
        its half of the path is broken (a NAT that forgot its mapping, a link down)."""
        return (self.connected.is_set() and self.last_rtcp is not None
                and now - self.last_rtcp > after)

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        logger.debug("session %s: %s", self.session_id, state)
        if state == "connected":
            if not self.connected.is_set():
                if self.track is not None and self.last_rtcp is None:
                    # Connecting is a sign of life; RTCP follows within a second or so.
                    self.last_rtcp = asyncio.get_running_loop().time()
                if self._on_connected is not None:
                    self._on_connected(self)
            self.connected.set()
            if self.quality is not None and self._video_sender is not None:
                self.quality.start(self._video_sender)  # its stats feed the layer choice
            local, remote = selected_pair_types(self.pc)
            logger.info("session %s connected (%s -> %s)", self.session_id, local, remote)
        elif state in ("failed", "closed"):
            self.close(f"peer connection {state}")

    def _datachannel(self, channel: Any) -> None:
        # The viewer opens its channels (DCEP, RFC 8832); we serve pan/tilt and quality.
        if channel.label == PTZ_LABEL and self._ptz is not None:
            self._ptz.attach(channel, self.session_id, self.viewer_key)
        elif channel.label == QUALITY_LABEL and self.quality is not None:
            self.quality.attach(channel)
        else:
            logger.info("session %s: closing data channel %r", self.session_id, channel.label)
            channel.close()

    @property
    def layer(self) -> str | None:
        """The layer this viewer gets ("high", "low"); None without video."""
        return self.track.layer.label if self.track is not None else None

    @property
    def trickled(self) -> int:
        """How many trickled candidate messages were taken (end-of-candidates included)."""
        return len(self._candidate_seqs)

    @property
    def pair_types(self) -> tuple[str | None, str | None]:
        return selected_pair_types(self.pc)

    def close(self, reason: str) -> asyncio.Task[None]:
        """Start closing (idempotent); the returned task finishes the job."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason), name="session-close")
        return self._closing

    async def _close(self, reason: str) -> None:
        logger.info("session %s closed: %s", self.session_id, reason)
        if self._ptz is not None:
            self._ptz.session_closed(self.session_id)  # stops the head if we moved it
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.quality is not None:
            await self.quality.close()
        if self.track is not None:
            self.track.stop()
        try:
            # aiortc's close waits on its transports; on a network that is gone
            # (the camera moved) that can take forever. The session ends anyway.
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.pc.close()
        except TimeoutError:
            logger.warning("session %s: the peer connection did not close within %.0f s",
                           self.session_id, CLOSE_TIMEOUT)
        except Exception as exc:
            logger.warning("session %s: closing the peer connection failed: %s",
                           self.session_id, exc)
        finally:
            self._on_closed(self, reason)
