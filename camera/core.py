"""The camera agent's protocol core: a message from the rendezvous and the time in,
actions out. No sockets, no asyncio, no aiortc.

The adapter (``camera.agent``) feeds it what the rendezvous link receives and
what its peer connections report, and performs the actions it returns: send a
message, start a viewer's peer connection, hand it a trickled candidate, close
it. Keeping the decisions here lets the tests drive hostile and out-of-order
sequences (candidates before their offer is served, byes crossing answers,
malformed or hostile values in any field) without a network.

Each viewer session has an explicit phase::

    waiting  ──▶ answering ──▶ live ──▶ closing
       │             │                     ▲
       └─────────────┴─────────────────────┘

- waiting: the offer is accepted (ACL, signature, freshness, capacity) but the
  ICE servers are not settled yet: an offer that arrives just after
  registration waits (at most ``nat_wait`` seconds) for the start-up NAT check,
  so a camera whose network blocks UDP never starts with TURN over UDP.
- answering: the adapter is making the peer connection and the answer.
- live: the signed answer went out.
- closing: the session is ending; nothing more is sent for it but one bye.

A ``bye`` relayed by the rendezvous ends a session whose media is not up yet
(a viewer that gave up, or refused the answer); once its peer connection has
connected, the media plane ends it (the viewer's DTLS close, ICE consent),
because byes are unsigned and the rendezvous also sends one when only the
viewer's signaling link dropped.

A trickled candidate is checked (the viewer's signature over it and its offer)
the moment it arrives; in ``waiting`` it is queued and handed over when the
session starts, in ``answering`` and ``live`` it is handed over at once.

Nothing a peer sends can stop the core: a malformed message is refused (with a
bye when it names a session), and an unexpected error while handling one
message is logged and costs that message, or that session, never the link.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from camera.errors import BadConfig
from camera.gatekeeper import Gatekeeper, Refused
from services.signaling import (
    MAX_CANDIDATES,
    ErrorCode,
    Message,
    ProtocolError,
    Role,
    encode,
    normalize_session_id,
    parse,
)
from services.signaling import loads as loads_json

logger = logging.getLogger(__name__)

NAT_WAIT = 3.0
"""Longest an accepted offer waits for the start-up NAT check (UDP blocked or not)."""


def printable(text: object, limit: int = 200) -> str:
    """``text`` made safe for a log line: no lone surrogates, no control characters."""
    out = str(text)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join("?" if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch for ch in out)


class Phase(enum.Enum):
    WAITING = "waiting"
    ANSWERING = "answering"
    LIVE = "live"
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A viewer's trickled candidate whose signature checked out."""

    seq: int
    line: str
    """The RFC 8839 attribute value, ``candidate:`` included; "" is end-of-candidates."""
    sdp_mid: str | None
    sdp_mline_index: int | None


@dataclass(slots=True)
class SessionRecord:
    """What the core knows of one viewer session."""

    session_id: str
    viewer_key: str
    offer_sdp: str
    offered_ice_servers: list[dict[str, Any]]
    """The ICE servers the rendezvous sent with the offer (TURN credentials for it)."""
    phase: Phase
    since: float
    """When it entered its phase."""
    queued: list[Candidate] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    media: bool = False
    """The peer connection connected (ICE and DTLS up): from now on its media decides."""


# -- actions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this text to the rendezvous."""

    text: str


@dataclass(frozen=True, slots=True)
class StartSession:
    """Make the viewer's peer connection and answer ``offer_sdp``; report back with
    :meth:`AgentCore.answered` or :meth:`AgentCore.session_ended`."""

    session_id: str
    offer_sdp: str
    viewer_key: str
    ice_servers: list[dict[str, Any]]
    udp_blocked: bool
    """The NAT check found UDP blocked: put TURN over TCP first."""


@dataclass(frozen=True, slots=True)
class AddCandidate:
    session_id: str
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Close the session's peer connection (no bye: the core sends its own)."""

    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Replaced:
    """Another connection registered our device ID: back off fully before reconnecting."""


@dataclass(frozen=True, slots=True)
class PairingUsed:
    """A single-use pairing window was consumed (the LED stops showing "pairing")."""


Action = Send | StartSession | AddCandidate | CloseSession | Replaced | PairingUsed


class AgentCore:
    """Sessions and trust decisions of one camera; see the module docstring."""

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        *,
        max_viewers: int = 16,
        ice_servers: list[dict[str, Any]] | None = None,
        nat_wait: float = NAT_WAIT,
    ) -> None:
        """``ice_servers``: the camera's own list, which overrides the rendezvous' (None:
        use what the rendezvous sends with each offer)."""
        self.gatekeeper = gatekeeper
        self.max_viewers = max_viewers
        self.configured_ice_servers = ice_servers
        self.nat_wait = nat_wait
        self.sessions: dict[str, SessionRecord] = {}
        self.nat_settled = False
        """The start-up NAT check has finished (or there is none to wait for)."""
        self.udp_blocked = False
        self.refusals = 0
        """Requests refused: unpaired, forged, replayed, malformed."""
        self.errors = 0
        """Messages whose handling failed unexpectedly (logged; the link goes on)."""

    # -- events ------------------------------------------------------------------

    def received(self, data: str | bytes, now: float) -> list[Action]:
        """One frame from the rendezvous. Never raises for what a peer sent."""
        try:
            message = parse(data, Role.SERVER)
        except ProtocolError as exc:
            logger.warning("rendezvous sent a bad message: %s", printable(exc.message))
            return self._refuse_unparsed(data, exc.message)
        try:
            return self._dispatch(message, now)
        except Exception as exc:
            self.errors += 1
            logger.error("handling a %s message failed: %s: %s", message.type,
                         type(exc).__name__, printable(exc))
            session_id = message.get("session_id")
            if isinstance(session_id, str) and message.type in ("offer", "pair", "candidate"):
                return self._end(session_id, "the camera could not handle this request")
            return []

    def nat_checked(self, udp_blocked: bool, now: float) -> list[Action]:
        """The start-up NAT check finished (or failed: ``udp_blocked`` False)."""
        self.udp_blocked = udp_blocked
        self.nat_settled = True
        return self._start_waiting(now)

    def tick(self, now: float) -> list[Action]:
        """Call about once a second: starts offers that waited long enough for the NAT check."""
        if self.nat_settled:
            return []
        due = any(r.phase is Phase.WAITING and now - r.since >= self.nat_wait
                  for r in self.sessions.values())
        return self._start_waiting(now, only_due=True) if due else []

    def answered(self, session_id: str, answer_sdp: str, now: float) -> list[Action]:
        """The adapter made the answer: sign it and send it; the session is live."""
        record = self.sessions.get(session_id)
        if record is None or record.phase is not Phase.ANSWERING:
            return []  # closed while it was being answered
        fields = self.gatekeeper.answer(session_id, record.offer_sdp, answer_sdp)
        record.phase, record.since = Phase.LIVE, now
        return [Send(encode(Role.CAMERA, "answer", **fields))]

    def media_up(self, session_id: str) -> None:
        """The session's peer connection connected: a relayed bye no longer ends it."""
        record = self.sessions.get(session_id)
        if record is not None:
            record.media = True

    def session_ended(self, session_id: str, reason: str) -> list[Action]:
        """The adapter's peer connection ended: on its own (ICE failed, no answer), and
        then the rendezvous is told, or because the core closed it (no second bye)."""
        record = self.sessions.pop(session_id, None)
        if record is None or record.phase is Phase.CLOSING:
            return []
        return [_bye(session_id, reason)]

    def end_revoked(self) -> list[Action]:
        """End the sessions of viewers no longer in the ACL (revoked over SSH)."""
        actions: list[Action] = []
        for record in list(self.sessions.values()):
            if record.phase is not Phase.CLOSING and record.viewer_key not in self.gatekeeper.acl:
                logger.info("viewer revoked: ending session %s", record.session_id)
                actions += self._end(record.session_id,
                                     "not authorized: this viewer was revoked")
        return actions

    def close_all(self, reason: str) -> list[Action]:
        """End every session (shutdown): a bye each, and close them."""
        actions: list[Action] = []
        for session_id in list(self.sessions):
            actions += self._end(session_id, reason)
        return actions

    def active(self) -> int:
        """Sessions that count against ``max_viewers``."""
        return sum(r.phase is not Phase.CLOSING for r in self.sessions.values())

    # -- messages ----------------------------------------------------------------

    def _dispatch(self, message: Message, now: float) -> list[Action]:
        if message.type == "offer":
            return self._offer(message, now)
        if message.type == "candidate":
            return self._candidate(message)
        if message.type == "pair":
            return self._pair(message)
        if message.type == "bye":
            record = self.sessions.get(message["session_id"])
            if record is None or record.phase is Phase.CLOSING:
                return []
            reason = message.get("reason") or "viewer left"
            if record.phase is Phase.LIVE and record.media:
                # Byes are unsigned, and the rendezvous sends one when only the viewer's
                # signaling dropped: for a session with media up it is advice. The media plane
                # decides: the viewer's DTLS close, or ICE consent (RFC 7675) failing.
                logger.info("session %s: the rendezvous says %r; the media decides",
                            record.session_id, printable(reason))
                return []
            # No media yet: the viewer gave up before connecting. No bye goes back.
            record.phase = Phase.CLOSING
            return [CloseSession(record.session_id, reason)]
        if message.type == "error":
            return self._error(message)
        # hello/registered belong to the link's handshake; prepared/answer/paired are
        # for viewers. Seen here, they are the rendezvous' mistake: ignore them.
        logger.info("ignored an unexpected %s from the rendezvous", message.type)
        return []

    def _offer(self, message: Message, now: float) -> list[Action]:
        session_id = message["session_id"]
        existing = self.sessions.get(session_id)
        try:
            viewer_key = self.gatekeeper.check_offer(message)
        except (Refused, BadConfig) as exc:
            self.refusals += 1
            logger.warning("offer %s refused: %s", session_id, printable(exc))
            return [_bye(session_id, str(exc))]
        if existing is not None:  # cannot pass the replay cache; refused all the same
            return [_bye(session_id, "that session ID is in use")]
        if self.active() >= self.max_viewers:
            return [_bye(session_id, "camera busy: too many viewers")]
        record = SessionRecord(
            session_id, viewer_key, message["sdp"], list(message["ice_servers"]),
            Phase.WAITING, now,
        )
        self.sessions[session_id] = record
        return self._start_waiting(now) if self.nat_settled else []

    def _start_waiting(self, now: float, *, only_due: bool = False) -> list[Action]:
        actions: list[Action] = []
        for record in list(self.sessions.values()):
            if record.phase is not Phase.WAITING:
                continue
            if only_due and now - record.since < self.nat_wait:
                continue
            record.phase, record.since = Phase.ANSWERING, now
            servers = (list(self.configured_ice_servers)
                       if self.configured_ice_servers is not None
                       else record.offered_ice_servers)
            actions.append(StartSession(record.session_id, record.offer_sdp, record.viewer_key,
                                        servers, self.udp_blocked))
            queued, record.queued = record.queued, []
            actions += [AddCandidate(record.session_id, c) for c in queued]
        return actions

    def _candidate(self, message: Message) -> list[Action]:
        session_id = message["session_id"]
        record = self.sessions.get(session_id)
        if record is None or record.phase is Phase.CLOSING:
            logger.info("candidate for unknown session %s dropped", session_id)
            return []
        try:
            self.gatekeeper.check_candidate(message, record.viewer_key, record.offer_sdp)
        except Refused as exc:
            self.refusals += 1
            logger.warning("candidate for session %s refused: %s", session_id, printable(exc))
            return []
        seq = message["seq"]
        if not 0 <= seq < MAX_CANDIDATES or seq in record.seqs:
            logger.warning("candidate for session %s dropped: seq %d repeated", session_id, seq)
            return []
        record.seqs.add(seq)
        candidate = Candidate(seq, message["candidate"], message.get("sdp_mid"),
                              message.get("sdp_mline_index"))
        if record.phase is Phase.WAITING:
            record.queued.append(candidate)
            return []
        return [AddCandidate(session_id, candidate)]

    def _pair(self, message: Message) -> list[Action]:
        session_id = message["session_id"]
        try:
            fields = self.gatekeeper.check_pair(message)
        except Refused as exc:
            self.refusals += 1
            logger.warning("pairing request refused: %s", printable(exc))
            return [_bye(session_id, str(exc))]
        except BadConfig as exc:
            logger.error("cannot pair: %s", printable(exc))
            return [_bye(session_id, "pairing failed on the camera")]
        except OSError as exc:
            logger.error("cannot pair: the viewer list could not be saved (%s); the pairing "
                         "link stays open: free space on the camera's storage and try again",
                         printable(str(exc)))
            return [_bye(session_id, "pairing failed on the camera: it could not save the "
                                     "viewer list (storage full or read-only); try again")]
        return [PairingUsed(), Send(encode(Role.CAMERA, "paired", **fields))]

    def _error(self, message: Message) -> list[Action]:
        if message["code"] == ErrorCode.REPLACED:
            logger.error("another connection registered %s: is this key on two devices?",
                         self.gatekeeper.device_id)
            return [Replaced()]
        # unknown-session: our bye crossed the viewer's (both ended it): benign.
        level = logging.DEBUG if message["code"] == ErrorCode.UNKNOWN_SESSION else logging.WARNING
        logger.log(level, "rendezvous error %s: %s", printable(message["code"], 40),
                   printable(message["message"]))
        return []

    def _refuse_unparsed(self, data: str | bytes, why: str) -> list[Action]:
        """A malformed offer or pairing request that names a session still gets a bye,
        so the viewer learns why instead of waiting for a timeout."""
        obj = _loads(data)
        if not isinstance(obj, Mapping) or obj.get("type") not in ("offer", "pair"):
            return []
        try:
            session_id = normalize_session_id(obj.get("session_id"))
        except ValueError:
            return []
        if session_id in self.sessions:
            return []
        self.refusals += 1
        return [_bye(session_id, f"not authorized: {why}")]

    def _end(self, session_id: str, reason: str) -> list[Action]:
        """End a session from here: one bye, and close it if it was started."""
        record = self.sessions.get(session_id)
        if record is not None and record.phase is Phase.CLOSING:
            return []
        actions: list[Action] = [_bye(session_id, reason)]
        if record is not None:
            if record.phase is Phase.WAITING:
                del self.sessions[session_id]  # nothing was started for it
            else:
                record.phase = Phase.CLOSING
                actions.append(CloseSession(session_id, reason))
        return actions


def _bye(session_id: str, reason: str) -> Send:
    text = printable(reason, 200)
    try:
        return Send(encode(Role.CAMERA, "bye", session_id=session_id, reason=text))
    except ProtocolError:  # a reason the schema refuses still ends the session
        return Send(encode(Role.CAMERA, "bye", session_id=session_id))


def _loads(data: str | bytes) -> Any:
    """Decode JSON for a second look at a refused message; None when it is not JSON."""
    try:
        return loads_json(data)
    except ValueError:  # not JSON, nested too deep, or not Unicode
        return None
