"""``peercam view``: a command-line viewer that connects like the browser does, and heals.

It decodes the video (to count frames and read the test pattern's burnt-in
capture time back), and can record the stream to MP4 without transcoding
(:mod:`camera.client.recorder`), teeing the access units before aiortc's
decoder (:mod:`camera.client.receiver`).

A run outlives its sessions. The rendezvous link is a link of its own
(:mod:`camera.client.signaling`): when it drops, the peer-to-peer media goes on
and the link comes back in the background. Whether a session is alive is the
media plane's call (:mod:`camera.client.heal`): a peer connection that failed
or closed, or no frame for a stall threshold, and the session is replaced,
make-before-break; a ``bye`` relayed by the rendezvous is unsigned, so it is
only advice. The run ends at ``seconds`` (counted from its first frame), at
``stop``, on a terminal refusal (not paired, revoked, a forged answer), or when
its very first session cannot get video.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import statistics
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from cryptography.hazmat.primitives.asymmetric import ec

from camera.client import heal, natprofile
from camera.client import ice as viewer_ice
from camera.client.errors import (
    ForgedAnswer,
    RecordingFailed,
    Refused,
    SessionEnded,
    ViewError,
)
from camera.client.natprofile import SavedNat, profile_here, with_prediction
from camera.client.playout import PlayoutCounters, ReceiveSettings
from camera.client.receiver import (
    DECODER_BACKLOG,
    MarkerJitterBuffer,
    _DecoderQueue,
    _hook_receiver,
    release_frames_on_marker,
    stamp_region,
)
from camera.client.recorder import Mp4Recorder
from camera.client.signaling import LINK_LOST, SignalingLink, await_reply, check_answer, pair
from camera.client.udpcheck import udp_blocked
from camera.config import client_ssl, ws_url
from camera.identity import load_or_create_key
from camera.ladder import LABEL as QUALITY_LABEL
from camera.ladder import MODES, Mode
from camera.punch import NatProfile, PunchConfig, nat_attribute, with_nat_attribute
from camera.stamp import read as read_stamp
from camera.webrtc import (
    arm_punch,
    make_peer_connection,
    order_turn,
    prefer_h264,
    selected_pair,
    selected_transport,
)
from services.signaling import Message, Role, encode, normalize_device_id
from services.signaling import loads as loads_json
from services.signatures import encode_public_key, offer_statement, sign

__all__ = [
    "DECODER_BACKLOG",
    "Connection",
    "ForgedAnswer",
    "MarkerJitterBuffer",
    "Mp4Recorder",
    "RecordingFailed",
    "ReceiveSettings",
    "Refused",
    "SdpRewrite",
    "SessionEnded",
    "ViewError",
    "ViewStats",
    "ViewerIdentity",
    "_DecoderQueue",
    "_hook_receiver",
    "check_answer",
    "connect",
    "open_session",
    "pair",
    "parse_target",
    "release_frames_on_marker",
    "stamp_region",
    "view",
]

logger = logging.getLogger(__name__)

HEAL_TIMEOUT = 10.0
"""A replacement session's answer, then its first frame, each within this (or the
connect timeout if shorter): a camera that went quiet must not hold up the next try."""
TICK = 0.1
"""How often stalls and due retries are looked at."""

VIEWER_KEY_FILE = "viewer_key.pem"


def default_viewer_dir() -> Path:
    """Where the CLI viewer keeps its key: $PEERCAM_VIEWER_DIR or ~/.config/peercam."""
    if os.environ.get("PEERCAM_VIEWER_DIR"):
        return Path(os.environ["PEERCAM_VIEWER_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "peercam"


@dataclass(frozen=True)
class ViewerIdentity:
    """This viewer's key pair (its ACL entry on the camera) and its name."""

    private_key: ec.EllipticCurvePrivateKey
    name: str

    @property
    def key(self) -> str:
        return encode_public_key(self.private_key.public_key())

    @classmethod
    def load_or_create(
        cls, directory: Path | None = None, name: str | None = None
    ) -> ViewerIdentity:
        path = (directory or default_viewer_dir()) / VIEWER_KEY_FILE
        key, _created = load_or_create_key(path)
        return cls(key, name or f"peercam view on {socket.gethostname()}"[:64])


@dataclass(frozen=True)
class SdpRewrite:
    """Changes to a session's SDPs for something put in its ICE path on purpose (the
    benchmarks' impairing relay): ``offer`` before the offer is signed, ``answer``
    after the camera's signed answer was checked."""

    offer: Callable[[str], str]
    answer: Callable[[str], str]


def parse_target(target: str, rendezvous: str | None) -> tuple[str, str, str | None]:
    """Split a link or a bare device ID into (rendezvous base URL, device ID, pair secret)."""
    secret = None
    if "://" in target:
        url = urllib.parse.urlsplit(target)
        params = urllib.parse.parse_qs(url.fragment)
        device = params.get("device", [""])[0]
        secret = params.get("pair", [None])[0]
        base = rendezvous or f"{url.scheme}://{url.netloc}"
    else:
        device, base = target, rendezvous or "ws://127.0.0.1:8080"
    return base, normalize_device_id(device), secret


GAP_LOGGED = 0.25
"""Seconds between two shown frames that count as a gap in :attr:`ViewStats.gaps`."""
GAPS_KEPT = 200
MOVE_WINDOW = 1.0
"""Seconds either side of a seen move off a relay (plus one ``TICK`` before it, since a
move is seen at most that late) over which :attr:`ViewStats.move_gap_ms` is taken."""


@dataclass
class ViewStats:
    """What one viewing measured."""

    ttff_ms: float | None = None
    frames: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    local_candidate: str | None = None
    remote_candidate: str | None = None
    remote_address: str | None = None
    transport: str | None = None
    """What that pair runs over: "udp", or "tcp" (ICE-TCP, where UDP cannot get out)."""
    width: int | None = None
    height: int | None = None
    recorded_frames: int = 0
    dropped_frames: int = 0
    """Frames that arrived but were not decoded: the decoder had fallen behind."""
    sessions: int = 0
    """Sessions that delivered video (more than one: the run healed)."""
    reconnects: int = 0
    """Times the rendezvous link came back after dropping."""
    last_cause: str | None = None
    """Why the last session was replaced (None: it never was)."""
    max_gap_ms: float | None = None
    """Longest time between two shown frames after the first."""
    first_frame_clock: float | None = None
    """``time.monotonic()`` at the first frame: one clock for every process on a machine,
    so a test or benchmark can line frames up with faults it made elsewhere."""
    gaps: list[tuple[float, float]] = field(default_factory=list)
    """``time.monotonic()`` (last frame before, first frame after) of every gap of
    ``GAP_LOGGED`` or more, at most ``GAPS_KEPT`` of them."""
    layer: str | None = None
    """The layer the camera last said this viewer is on ("high", "low"; None: it never
    said, e.g. a camera without the quality channel)."""
    quality: str | None = None
    """The quality mode the camera last confirmed ("auto", "high", "low")."""
    layer_switches: int = 0
    """Times the camera reported a move to another layer."""
    layer_changes: list[tuple[float, str]] = field(default_factory=list)
    """``time.monotonic()`` and layer of each report of a new layer (the first included)."""
    playout: PlayoutCounters | None = None
    """What the receiver's playout did (None: the playout was off), summed over sessions."""
    moved_after_s: float | None = None
    """A session that started on a relay and moved to a direct path (background
    checks, punching): seconds from the first frame to when the move was seen."""
    move_gap_ms: float | None = None
    """Where ``moved_after_s`` is set: the longest time between two shown frames that
    ended from ``MOVE_WINDOW`` + ``TICK`` before the move was seen to ``MOVE_WINDOW``
    after it (what the move cost the picture; compare ``max_gap_ms``, the whole run's)."""
    final_local_candidate: str | None = None
    final_remote_candidate: str | None = None
    """The shown session's pair types when the run ended (the first frame's are above)."""
    relay_bytes: int | None = None
    """A session whose first frame came through a TURN relay: the bytes its transport
    sent and received (DTLS and SRTP payloads, both ways) from its start until the
    move to a direct pair was seen (at most one ``TICK`` late) or the run ended. What
    the relay carried for it, once; the relay's ingress plus egress is about twice
    this, plus TURN and UDP headers. None: no relay at the first frame, or the run
    healed into a second session."""

    def as_dict(self) -> dict[str, Any]:
        span = (
            (self.last_frame_at - self.first_frame_at)
            if self.first_frame_at is not None and self.last_frame_at is not None
            else 0.0
        )
        fps = (self.frames - 1) / span if self.frames > 1 and span > 0 else 0.0
        out: dict[str, Any] = {
            "ttff_ms": None if self.ttff_ms is None else round(self.ttff_ms, 1),
            "frames": self.frames,
            "fps": round(fps, 2),
            "local_candidate": self.local_candidate,
            "remote_candidate": self.remote_candidate,
            "remote_address": self.remote_address,
            "transport": self.transport,
            "width": self.width,
            "height": self.height,
            "latency_ms_p50": None,
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "last_cause": self.last_cause,
            "max_gap_ms": None if self.max_gap_ms is None else round(self.max_gap_ms, 1),
            "first_frame_clock": self.first_frame_clock,
            "gaps": [[round(a, 3), round(b, 3)] for a, b in self.gaps],
            "layer": self.layer,
            "quality": self.quality,
            "layer_switches": self.layer_switches,
            "moved_after_s": None if self.moved_after_s is None else round(self.moved_after_s, 2),
            "move_gap_ms": None if self.move_gap_ms is None else round(self.move_gap_ms, 1),
            "final_local_candidate": self.final_local_candidate,
            "final_remote_candidate": self.final_remote_candidate,
            "relay_bytes": self.relay_bytes,
        }
        if self.playout is not None:
            out["playout"] = dataclasses.asdict(self.playout)
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            out["latency_ms_p50"] = round(statistics.median(ordered), 1)
            out["latency_ms_p95"] = round(ordered[int(0.95 * (len(ordered) - 1))], 1)
        if self.recorded_frames:
            out["recorded_frames"] = self.recorded_frames
        if self.dropped_frames:
            out["dropped_frames"] = self.dropped_frames
        return out


@dataclass
class Connection:
    """A viewer session the camera answered: what :func:`connect` hands its caller."""

    link: SignalingLink
    """The rendezvous link (the session ends with a bye on it)."""
    pc: RTCPeerConnection
    device_id: str
    session_id: str
    started: float
    """``time.perf_counter()`` just before the peer connection was made (TTFF origin)."""


async def open_session(
    link: SignalingLink,
    device_id: str,
    identity: ViewerIdentity,
    setup: Callable[[Connection], None],
    *,
    timeout: float,
    ice_servers: list[dict[str, Any]] | None,
    rewrite: SdpRewrite | None = None,
    nat: Sequence[SavedNat] = (),
    punch: bool = False,
) -> tuple[Connection, asyncio.Queue[Message]]:
    """Offer a session and apply the camera's checked answer.

    ``setup`` adds transceivers / data channels before the offer is made, so
    they are in the signed SDP; ``nat`` (the saved NAT measurements; the one of this network) adds
    predicted candidates to it behind a sequential symmetric NAT
    (:mod:`camera.client.natprofile`) and says it in the offer; with ``punch`` the
    session may punch through the two NATs if it completes on a relay
    (:mod:`camera.punch`: the birthday technique where one NAT picks ports at
    random). Returns the connection and the queue of later
    messages for its session (byes). On any failure the peer connection is
    closed, and a bye is sent if the offer went out.
    """
    session_id = secrets.token_urlsafe(18)
    queue = link.subscribe(session_id)
    pc: RTCPeerConnection | None = None
    offered = False
    try:
        servers = ice_servers
        if servers is None:
            await link.send(encode(Role.VIEWER, "prepare", device_id=device_id,
                                   session_id=session_id))
            prepared = await await_reply(queue, ("prepared",), timeout)
            servers = list(prepared["ice_servers"])
        try:
            # aiortc uses one TURN URL: where UDP is blocked it must be TURN over TCP.
            servers = order_turn(servers, udp_blocked=await udp_blocked(servers))
            viewer_ice.install()  # the controlling agent's relay rule; idempotent
            started = time.perf_counter()
            pc = make_peer_connection(servers, max_bundle=True)
        except (ValueError, TypeError, OSError) as exc:
            raise ViewError(f"the rendezvous sent unusable ICE servers ({exc})") from None
        connection = Connection(link, pc, device_id, session_id, started)
        setup(connection)
        try:
            await pc.setLocalDescription(await pc.createOffer())
        except (ValueError, TypeError, OSError) as exc:
            raise ViewError(f"cannot make an offer with these ICE servers ({exc})") from None
        here = profile_here(pc.localDescription.sdp, nat)
        offer_sdp = with_prediction(pc.localDescription.sdp, nat)
        if here is not None:
            offer_sdp = with_nat_attribute(offer_sdp, here, PunchConfig().sweep_ports)
        if rewrite is not None:
            offer_sdp = rewrite.offer(offer_sdp)
        timestamp = int(time.time() * 1000)
        signed = offer_statement(device_id, session_id, timestamp, identity.key, offer_sdp)
        await link.send(encode(
            Role.VIEWER,
            "offer",
            device_id=device_id,
            session_id=session_id,
            sdp=offer_sdp,
            viewer_key=identity.key,
            timestamp=timestamp,
            signature=sign(identity.private_key, signed),
        ))
        offered = True
        logger.debug("session %s: offer sent", session_id[:8])
        answer = await await_reply(queue, ("answer",), timeout)
        logger.debug("session %s: answer", session_id[:8])
        check_answer(device_id, session_id, offer_sdp, answer)
        answer_sdp = answer["sdp"] if rewrite is None else rewrite.answer(answer["sdp"])
        try:
            await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        except (ValueError, TypeError) as exc:
            raise ViewError(f"the camera's answer is not usable ({exc})") from None
        remote_nat = nat_attribute(answer["sdp"])
        if punch and (here is not None or remote_nat is not None):
            arm_punch(pc, here or NatProfile(symmetric=False),
                      remote_nat or NatProfile(symmetric=False), PunchConfig())
    except BaseException:
        link.unsubscribe(session_id)
        if offered:
            link.send_soon(encode(Role.VIEWER, "bye", session_id=session_id))
        if pc is not None:
            # Our own close is no news for the caller's handlers; and a close cut
            # short by a cancellation would leave aiortc's close waiting forever.
            pc.remove_all_listeners()
            await asyncio.shield(pc.close())
        raise
    return connection, queue


@contextlib.asynccontextmanager
async def connect(
    target: str,
    setup: Callable[[Connection], None],
    *,
    rendezvous: str | None = None,
    connect_timeout: float = 15.0,
    ice_servers: list[dict[str, Any]] | None = None,
    identity: ViewerIdentity | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
) -> AsyncIterator[Connection]:
    """Open one session with a camera the way the browser does, and yield it.

    Pairs first if the link has ``pair=SECRET``; asks the rendezvous for ICE
    servers unless given (see :func:`open_session`). The answer is checked
    against the device ID before it is applied. Leaving the block says bye; the
    peer connection is closed either way. No healing: :func:`view` does that.
    """
    base, device_id, secret = parse_target(target, rendezvous)
    identity = identity or ViewerIdentity.load_or_create()
    link = SignalingLink(ws_url(base, "/ws/viewer"), ssl=client_ssl(tls_ca, tls_insecure),
                         connect_timeout=connect_timeout)
    await link.open()
    try:
        if secret is not None:
            await pair(link, device_id, secret, identity.key, identity.private_key,
                       identity.name, connect_timeout)
        connection, _queue = await open_session(link, device_id, identity, setup,
                                                timeout=connect_timeout,
                                                ice_servers=ice_servers)
        try:
            yield connection
            with contextlib.suppress(ViewError):
                await link.send(encode(Role.VIEWER, "bye", session_id=connection.session_id))
        finally:
            link.unsubscribe(connection.session_id)
            await connection.pc.close()
    finally:
        await link.close()


async def view(
    target: str,
    *,
    rendezvous: str | None = None,
    seconds: float | None = None,
    record: Path | None = None,
    connect_timeout: float = 15.0,
    ice_servers: list[dict[str, Any]] | None = None,
    stop: asyncio.Event | None = None,
    identity: ViewerIdentity | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
    stall: float = heal.STALL,
    wait: float = 0.0,
    quality: Mode | None = None,
    receive: ReceiveSettings | None = None,
    rewrite: SdpRewrite | None = None,
    port_prediction: bool = True,
) -> ViewStats:
    """Watch a camera until ``seconds`` pass (from the first frame) or ``stop`` is set.

    A link with ``pair=SECRET`` in its fragment pairs this viewer's key first.
    Sessions that die are replaced (see the module's description); ``stall``
    is the frame gap that counts as a dead session; ``wait`` is how long a run
    that has not shown a frame yet keeps trying a camera that is offline or
    restarting (0: the first failure ends it), starting again the moment the
    rendezvous says the camera registered. Every session opens the
    camera's ``quality`` channel (the camera says which layer the viewer is on);
    ``quality`` asks for ``auto``, ``high`` or ``low`` on each (None: the camera's
    default, auto). ``receive`` is how the receiver waits for and asks again for
    lost packets (:class:`ReceiveSettings`); ``rewrite`` changes the SDPs for a
    relay put in the path (benchmarks). With ``port_prediction``, a NAT measurement
    saved by ``peercam natcheck`` on this network adds predicted candidates to the
    offers (:mod:`camera.client.natprofile`). Anything but that ending
    raises a :class:`ViewError` carrying the stats so far:
    :class:`SessionEnded` when the camera refuses to go on with a run that was
    playing (revoked), :class:`RecordingFailed` when ``record`` cannot be
    written (checked before connecting, and on every frame), a plain
    :class:`ViewError` (or :class:`ForgedAnswer`) when there was no video at all.
    """
    if record is not None:
        Mp4Recorder.check(record)
    if quality is not None and quality not in MODES:
        raise ValueError(f"quality {quality!r}: choose auto, high or low")
    base, device_id, secret = parse_target(target, rendezvous)
    identity = identity or ViewerIdentity.load_or_create()
    stats = ViewStats()
    stop = stop or asyncio.Event()
    link = SignalingLink(ws_url(base, "/ws/viewer"), ssl=client_ssl(tls_ca, tls_insecure),
                         connect_timeout=connect_timeout)
    run = _Run(link, device_id, identity, stats,
               record=record, connect_timeout=connect_timeout, ice_servers=ice_servers,
               healer=heal.Healer(stall=stall, wait=wait), quality=quality,
               receive=receive or ReceiveSettings(), rewrite=rewrite,
               nat=natprofile.load(default_viewer_dir(), time.time()) if port_prediction
               else (), punch=port_prediction)
    try:
        await link.open()
        if secret is not None:
            await pair(link, device_id, secret, identity.key, identity.private_key,
                       identity.name, connect_timeout)
        await run.play(stop, seconds)
    except ViewError as exc:
        exc.stats = exc.stats or (stats if stats.frames else None)
        raise
    finally:
        await run.close()
        await link.close()
        stats.reconnects = link.reconnects
    if run.recorder is not None and run.recorder.error is not None:
        raise RecordingFailed(run.recorder.error, stats)
    return stats


@dataclass(eq=False)
class _Session:
    """One peer connection of a run, from its offer to its close."""

    number: int
    started: float = field(default_factory=time.perf_counter)
    pc: RTCPeerConnection | None = None
    session_id: str | None = None
    decoder_queue: _DecoderQueue | None = None
    playout: PlayoutCounters | None = None
    layer_heard: tuple[str, Any] | None = None
    """The camera's last (layer, mode) report on this session's quality channel."""
    owner: asyncio.Task[None] | None = None
    """Opens it, waits for its first frame, then reads the camera's byes for it."""
    tasks: set[asyncio.Future[None]] = field(default_factory=set)
    """Its track consumers."""
    framed: asyncio.Event = field(default_factory=asyncio.Event)
    bye: str | None = None
    """The reason in the camera's bye for it, if one came (advice only)."""
    closing: bool = False


class _Run:
    """One ``view()``: the healer's decisions carried out on real sessions."""

    def __init__(
        self,
        link: SignalingLink,
        device_id: str,
        identity: ViewerIdentity,
        stats: ViewStats,
        *,
        record: Path | None,
        connect_timeout: float,
        ice_servers: list[dict[str, Any]] | None,
        healer: heal.Healer,
        quality: Mode | None = None,
        receive: ReceiveSettings | None = None,
        rewrite: SdpRewrite | None = None,
        nat: Sequence[SavedNat] = (),
        punch: bool = False,
    ) -> None:
        self.link = link
        self.device_id = device_id
        self.identity = identity
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.ice_servers = ice_servers
        self.healer = healer
        self.quality = quality
        self.receive = receive or ReceiveSettings()
        self.rewrite = rewrite
        self.nat = nat
        self.punch = punch
        self.outcome: asyncio.Future[ViewError] = asyncio.get_running_loop().create_future()
        self.recorder = (Mp4Recorder(record, on_error=lambda text: self._end(
            RecordingFailed(text))) if record is not None else None)
        self.sessions: dict[int, _Session] = {}
        self.errors: dict[int, ViewError] = {}
        self.first_frame = asyncio.Event()
        self.dropped = 0
        self.recent_gaps: collections.deque[tuple[float, float]] = collections.deque()
        """(``time.monotonic()`` at the frame, ms since the one before) while a relayed
        first session has not been seen to move: the last ``MOVE_WINDOW`` + ``TICK``."""
        self.move_seen_at: float | None = None
        self.last_bye: str | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # -- the run -----------------------------------------------------------------

    async def play(self, stop: asyncio.Event, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.ensure_future(stop.wait())
        framed = asyncio.ensure_future(self.first_frame.wait())
        try:
            self._apply(self.healer.start(loop.time()))
            self._ticker = asyncio.create_task(self._tick(), name="viewer-heal-tick")
            # The first frame, or the first session's failure (its own timeouts).
            first: list[asyncio.Future[Any]] = [framed, stopped, self.outcome]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if self.outcome.done():
                raise self.outcome.result()
            if stopped.done():
                return
            rest: list[asyncio.Future[Any]] = [stopped, self.outcome]
            await asyncio.wait(rest, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            if self.outcome.done():
                raise self.outcome.result()
        finally:
            for waiter in (stopped, framed):
                waiter.cancel()
            await asyncio.gather(stopped, framed, return_exceptions=True)

    async def close(self) -> None:
        """Close every session and wait for it (nothing of the run outlives it)."""
        self.stats.final_local_candidate, self.stats.final_remote_candidate = self._shown_pair()
        if self._on_relay():
            await self._count_relay_bytes()
        self.link.unwatch(self.device_id)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for number in list(self.sessions):
            self._close(number, "viewer left")
        while self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        self.stats.sessions = self.healer.sessions_used
        self.stats.last_cause = self.healer.last_cause
        self.stats.dropped_frames = self.dropped
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as exc:  # the file's last write failed
                self.recorder.error = (self.recorder.error
                                       or f"recording to {self.recorder.path} failed: {exc}")
            self.stats.recorded_frames = self.recorder.frames

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            self._apply(self.healer.tick(loop.time()))
            if self._follow_pair():
                await self._count_relay_bytes()

    def _shown_pair(self) -> tuple[str | None, str | None]:
        current = self.healer.current
        session = None if current is None else self.sessions.get(current)
        if session is None or session.pc is None or not session.framed.is_set():
            return None, None
        local, remote, _address = selected_pair(session.pc)
        return local, remote

    def _on_relay(self) -> bool:
        """The run's one session showed its first frame over a relay and has not been
        seen to move off it."""
        stats = self.stats
        return (stats.moved_after_s is None and stats.first_frame_clock is not None
                and "relay" in (stats.local_candidate, stats.remote_candidate)
                and self.healer.sessions_used == 1)

    def _follow_pair(self) -> bool:
        """Note when a session that showed its first frame over a relay moved off it;
        True the moment it is seen."""
        stats = self.stats
        if not self._on_relay() or stats.first_frame_clock is None:
            return False
        local, remote = self._shown_pair()
        if local is not None and remote is not None and "relay" not in (local, remote):
            self.move_seen_at = time.monotonic()
            stats.moved_after_s = self.move_seen_at - stats.first_frame_clock
            since = self.move_seen_at - MOVE_WINDOW - TICK
            stats.move_gap_ms = max((gap for at, gap in self.recent_gaps if at >= since),
                                    default=0.0)
            self.recent_gaps.clear()
            return True
        return False

    def _note_move_gap(self, clock: float, gap_ms: float) -> None:
        """Keep the frame gaps around a move off the relay (``move_gap_ms``)."""
        if self.move_seen_at is not None:
            if clock <= self.move_seen_at + MOVE_WINDOW and self.stats.move_gap_ms is not None:
                self.stats.move_gap_ms = max(self.stats.move_gap_ms, gap_ms)
            return
        if not self._on_relay():
            return
        self.recent_gaps.append((clock, gap_ms))
        while self.recent_gaps and self.recent_gaps[0][0] < clock - MOVE_WINDOW - TICK:
            self.recent_gaps.popleft()

    async def _count_relay_bytes(self) -> None:
        """What the shown session's transport has carried so far, as ``relay_bytes``."""
        current = self.healer.current
        session = None if current is None else self.sessions.get(current)
        if session is None or session.pc is None:
            return
        report = await session.pc.getStats()
        self.stats.relay_bytes = sum(
            int(getattr(stat, "bytesSent", 0)) + int(getattr(stat, "bytesReceived", 0))
            for stat in report.values() if getattr(stat, "type", None) == "transport")

    def _end(self, error: ViewError) -> None:
        if not self.outcome.done():
            self.outcome.set_result(error)

    def _apply(self, actions: list[heal.Action]) -> None:
        for action in actions:
            if isinstance(action, heal.Open):
                if action.cause != "start":  # the first try of a replacement, then quieter
                    logger.log(logging.INFO if self.healer.retry.attempt == 0 else logging.DEBUG,
                               "opening a new session (%s)", action.cause)
                self._open(action.session)
            elif isinstance(action, heal.Close):
                self._close(action.session, action.reason)
            elif isinstance(action, heal.Promote):
                self._promoted(action.session)
            else:
                self._end(self._give_up(action))

    # -- one session ---------------------------------------------------------------

    def _open(self, number: int) -> None:
        session = _Session(number)
        self.sessions[number] = session
        session.owner = asyncio.create_task(self._own(session), name=f"viewer-session-{number}")

    async def _own(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if self.healer.played:
            timeout = min(timeout, HEAL_TIMEOUT)
        try:
            if not self.link.connected.is_set():
                await self.link.wait_connected(timeout)
            connection, queue = await open_session(
                self.link, self.device_id, self.identity,
                lambda connection: self._setup(session, connection),
                timeout=timeout, ice_servers=self.ice_servers, rewrite=self.rewrite,
                nat=self.nat, punch=self.punch,
            )
            session.session_id = connection.session_id
            try:
                async with asyncio.timeout(timeout):
                    await session.framed.wait()
            except TimeoutError:
                raise ViewError(f"no video within {timeout:.0f} s") from None
        except ViewError as exc:
            self.errors[session.number] = exc
            self._close(session.number, str(exc), owner_done=True)
            actions = self.healer.failed(session.number, str(exc), terminal=_terminal(exc),
                                         now=loop.time())
            if isinstance(exc, Refused) and "reconnected" in exc.reason:
                actions += self.healer.retry_now(loop.time())  # the camera is back: now
            elif not _terminal(exc) and not self.outcome.done():
                # Offline, restarting, unreachable: the rendezvous says when it registers
                # (advice; the healer's own retry stays the fallback).
                self.link.watch(self.device_id, self._camera_online)
            self._apply(actions)
            return
        (self.stats.local_candidate, self.stats.remote_candidate,
         self.stats.remote_address) = selected_pair(connection.pc)
        self.stats.transport = selected_transport(connection.pc)
        while True:  # the camera's byes for this session: advice, not orders
            message = await queue.get()
            if message is LINK_LOST or message.type != "bye":
                continue
            session.bye = self.last_bye = str(message.get("reason") or "bye")
            logger.info("the camera said bye (%s): going on while video flows", session.bye)
            self._apply(self.healer.bye(session.number, loop.time()))

    def _camera_online(self) -> None:
        """The rendezvous says our camera registered: the next attempt starts now."""
        if self._ticker is not None and not self.outcome.done():
            self._apply(self.healer.retry_now(asyncio.get_running_loop().time()))

    def _setup(self, session: _Session, connection: Connection) -> None:
        pc = connection.pc
        session.pc, session.session_id = pc, connection.session_id
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        loop = asyncio.get_running_loop()

        def tee(frame: JitterFrame, keyframe: bool) -> None:
            if session.closing:
                return
            self._apply(self.healer.frame(session.number, loop.time(), keyframe))
            if session.number == self.healer.current:
                session.framed.set()
                if self.recorder is not None:
                    self.recorder.write(frame.data, frame.timestamp, session.number)

        session.decoder_queue, session.playout = _hook_receiver(transceiver.receiver, tee,
                                                                self.receive)
        self._open_quality_channel(session, pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            task = asyncio.ensure_future(self._consume(session, track))
            session.tasks.add(task)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if session.closing or state not in ("failed", "closed"):
                return
            cause = heal.FAILED if state == "failed" else heal.CLOSED
            if session.bye:
                cause += f" (the camera said: {session.bye})"
            self.errors.setdefault(session.number, ViewError(f"lost the camera: {cause}"))
            self._close(session.number, cause)
            self._apply(self.healer.ended(session.number, cause, loop.time()))

    def _open_quality_channel(self, session: _Session, pc: RTCPeerConnection) -> None:
        """The camera's ``quality`` channel: ask for the mode, hear which layer we are on."""
        channel = pc.createDataChannel(QUALITY_LABEL)

        def opened() -> None:
            if self.quality is not None:
                channel.send(json.dumps({"quality": self.quality}))

        def heard(data: str | bytes) -> None:
            if session.closing:
                return
            try:
                reply = loads_json(data)
            except (ValueError, TypeError):
                return
            if not isinstance(reply, dict):
                return
            if reply.get("type") == "error":
                logger.warning("the camera refused a quality request: %s", reply.get("error"))
            elif reply.get("type") == "quality" and isinstance(reply.get("layer"), str):
                session.layer_heard = (str(reply["layer"]), reply.get("mode"))
                if self.healer.current in (None, session.number):
                    self._layer_reported(*session.layer_heard)

        channel.on("open", opened)
        channel.on("message", heard)

    def _layer_reported(self, layer: str, mode: Any) -> None:
        stats = self.stats
        if isinstance(mode, str):
            stats.quality = mode
        if layer == stats.layer:
            return
        if stats.layer is not None:
            stats.layer_switches += 1
            logger.info("now on the %s layer", layer)
        stats.layer = layer
        stats.layer_changes.append((time.monotonic(), layer))

    def _promoted(self, number: int) -> None:
        if self.healer.sessions_used > 1:
            logger.info("healed: session %d plays (%s)", number, self.healer.last_cause)
        session = self.sessions.get(number)
        if session is not None and session.layer_heard is not None:
            self._layer_reported(*session.layer_heard)
        self.first_frame.set()

    def _close(self, number: int, reason: str, *, owner_done: bool = False) -> None:
        session = self.sessions.pop(number, None)
        if session is None:
            return
        session.closing = True
        task = asyncio.create_task(self._shut(session, owner_done), name="viewer-session-close")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _shut(self, session: _Session, owner_done: bool) -> None:
        pending: list[asyncio.Future[None]] = list(session.tasks)
        if session.owner is not None and not owner_done:
            pending.append(session.owner)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if session.session_id is not None:
            self.link.unsubscribe(session.session_id)
            self.link.send_soon(encode(Role.VIEWER, "bye", session_id=session.session_id))
        if session.decoder_queue is not None:
            self.dropped += session.decoder_queue.dropped
        if session.playout is not None:
            self._add_playout(session.playout)
        if session.pc is not None:
            await asyncio.shield(session.pc.close())

    def _add_playout(self, counters: PlayoutCounters) -> None:
        total = self.stats.playout
        if total is None:
            self.stats.playout = dataclasses.replace(counters)
            return
        for item in dataclasses.fields(PlayoutCounters):
            mine, theirs = getattr(total, item.name), getattr(counters, item.name)
            setattr(total, item.name,
                    max(mine, theirs) if item.name == "waited_ms_max" else mine + theirs)

    def _give_up(self, action: heal.GiveUp) -> ViewError:
        error = self.errors.get(action.session) or ViewError(action.cause)
        if not self.healer.played or isinstance(error, ForgedAnswer):
            return error
        said = error.reason if isinstance(error, Refused) else str(error)
        if "not paired" in said:
            # It played, so it was paired when the run began: the key was revoked since
            # (the camera's own bye saying so may come after its DTLS close, or never).
            said = f"this viewer was revoked ({said})"
        if self.last_bye is not None and heal.terminal_refusal(self.last_bye):
            said = self.last_bye
        return SessionEnded(f"the camera ended the session: {said}")

    async def _consume(self, session: _Session, track: Any) -> None:
        stats = self.stats
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if session.number != self.healer.current:
                continue  # a session that lost, in its last moments
            now = time.perf_counter()
            clock = time.monotonic()
            if stats.first_frame_at is None:
                stats.ttff_ms = (now - session.started) * 1000
                stats.first_frame_at = now
                stats.first_frame_clock = clock
            elif stats.last_frame_at is not None:
                gap = (now - stats.last_frame_at) * 1000
                stats.max_gap_ms = max(stats.max_gap_ms or 0.0, gap)
                if gap >= GAP_LOGGED * 1000 and len(stats.gaps) < GAPS_KEPT:
                    stats.gaps.append((clock - gap / 1000, clock))
                self._note_move_gap(clock, gap)
            stats.last_frame_at = now
            stats.frames += 1
            stats.width, stats.height = frame.width, frame.height  # the latest picture's
            stamp = read_stamp(stamp_region(frame))
            if stamp is not None:
                _number, capture_ms = stamp
                latency = time.time() * 1000 - capture_ms
                if 0 <= latency < 60_000:
                    stats.latencies_ms.append(latency)


def _terminal(error: ViewError) -> bool:
    """Retrying cannot help: the camera said no for good, or the server forged a reply."""
    if isinstance(error, ForgedAnswer):
        return True
    return isinstance(error, Refused) and heal.terminal_refusal(error.reason)
