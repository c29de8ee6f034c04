"""The WHEP gateway's rules, without I/O: what a request may be, and what it becomes.

WHEP (draft-ietf-wish-whep, built on WHIP, RFC 9725) lets any player watch
with one HTTP POST of its SDP offer. Here the player's offer goes on to the
camera unchanged, signed with the gateway's own viewer key, exactly as
``peercam view`` signs its own; the camera's signed answer is checked before it
is handed back. Trickled candidates (PATCH, ``application/trickle-ice-sdpfrag``,
RFC 8840) become signed ``candidate`` messages with the protocol's numbering.

Everything here is pure: the aiohttp adapter (:mod:`camera.client.whep`) calls
these checks and acts on what they return.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field

from camera.errors import PeercamError
from services.ratelimit import TokenBucket
from services.signaling import MAX_CANDIDATES

SDP_TYPE = "application/sdp"
SDPFRAG_TYPE = "application/trickle-ice-sdpfrag"
END_OF_CANDIDATES_SEQ = MAX_CANDIDATES - 1
"""``seq`` kept for end-of-candidates; the others number the trickled candidates."""


class WhepError(PeercamError, ValueError):
    """A request the gateway refuses: ``status`` and a plain-text reason for the player."""

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


# -- requests ---------------------------------------------------------------------------


def bearer_token(authorization: str | None, query_token: str | None = None) -> str | None:
    """The token from ``Authorization: Bearer T`` (or a ``?token=`` where allowed)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return query_token or None


def token_index(token: str | None, tokens: list[str]) -> int:
    """Which configured token this is (its index: the client's identity); 401 otherwise.

    Every token is compared in constant time, so the answer's timing says nothing.
    """
    if token is None:
        raise WhepError(401, "missing bearer token (Authorization: Bearer TOKEN)")
    found = -1
    given = token.encode("utf-8", "surrogatepass")
    for index, known in enumerate(tokens):
        if hmac.compare_digest(given, known.encode("ascii")):
            found = index
    if found < 0:
        raise WhepError(401, "bad bearer token")
    return found


def media_type(content_type: str | None) -> str:
    """``application/sdp; charset=x`` → ``application/sdp`` (lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Route:
    """What a request path names: a camera, and maybe one of its sessions or a snapshot."""

    camera: str
    kind: str
    """``whep`` (the endpoint), ``session`` (a resource), ``snapshot``."""
    session: str | None = None


_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RESOURCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def route(path: str) -> Route | None:
    """``/<camera>/whep``, ``/<camera>/whep/<session>``, ``/<camera>/snapshot.jpg``."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "" or not _SEGMENT.match(parts[1]):
        return None
    camera = parts[1]
    if len(parts) == 3 and parts[2] == "whep":
        return Route(camera, "whep")
    if len(parts) == 3 and parts[2] == "snapshot.jpg":
        return Route(camera, "snapshot")
    if len(parts) == 4 and parts[2] == "whep" and _RESOURCE.match(parts[3]):
        return Route(camera, "session", parts[3])
    return None


# -- the player's offer -----------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A player's SDP offer as checked: the text (unchanged) and what trickle needs."""

    sdp: str
    mids: tuple[str | None, ...]
    """Each m-section's ``a=mid``, in order (its index is ``sdp_mline_index``)."""
    bundle: tuple[str, ...]
    ufrag: str | None
    """The offer's ICE username fragment (session-level or first m-section's)."""
    candidates: frozenset[str]
    """Candidate lines already in the offer (not sent again when trickled)."""


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def _attr(lines: list[str], name: str) -> str | None:
    prefix = f"a={name}:"
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def check_offer(body: bytes, max_body: int) -> Offer:
    """A player's POSTed offer, or a :class:`WhepError` (413, 400) saying what is wrong."""
    if len(body) > max_body:
        raise WhepError(413, f"offer of {len(body)} bytes: the limit is {max_body}")
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WhepError(400, "the offer is not UTF-8 text") from None
    if not sdp.strip():
        raise WhepError(400, "empty body: POST the player's SDP offer "
                             "(this endpoint does not make offers)")
    if not sdp.startswith("v=0"):
        raise WhepError(400, "not an SDP offer: it does not start with 'v=0'")
    if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in sdp):
        raise WhepError(400, "the offer contains control characters")
    session, media = _sections(sdp)
    if not media:
        raise WhepError(400, "the offer has no m= section")
    setups = [_attr(section, "setup") for section in media] + [_attr(session, "setup")]
    if any(s is not None and s != "actpass" for s in setups):
        bad = next(s for s in setups if s is not None and s != "actpass")
        raise WhepError(400, f"not an offer: a=setup:{bad} (an offer says actpass; "
                             "is this an answer?)")
    video_ok = False
    for section in media:
        if not section[0].startswith("m=video "):
            continue
        directions = {"sendrecv", "sendonly", "recvonly", "inactive"}
        direction = next((line[2:] for line in section if line[2:] in directions), "sendrecv")
        h264 = any(re.match(r"^a=rtpmap:\d+ H264/90000", line, re.IGNORECASE)
                   for line in section)
        port = section[0].split()[1] if len(section[0].split()) > 1 else "0"
        if h264 and direction in ("recvonly", "sendrecv") and port != "0":
            video_ok = True
    if not video_ok:
        raise WhepError(400, "the offer has no H.264 video m-line the player receives on "
                             "(the camera sends H.264 constrained baseline only)")
    mids = tuple(_attr(section, "mid") for section in media)
    group = _attr(session, "group") or ""
    bundle = tuple(group.split()[1:]) if group.startswith("BUNDLE") else ()
    ufrag = _attr(session, "ice-ufrag") or _attr(media[0], "ice-ufrag")
    existing = frozenset(line[2:] for section in media for line in section
                         if line.startswith("a=candidate:"))
    return Offer(sdp, mids, bundle, ufrag, existing)


# -- trickled candidates (RFC 8840 sdpfrag) -------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """A PATCH body: ICE credentials, candidates by mid, end-of-candidates."""

    ufrag: str | None
    candidates: tuple[tuple[str | None, str], ...]
    """(mid, ``candidate:...`` line) in order."""
    end: bool


def parse_fragment(body: bytes, max_body: int) -> Fragment:
    if len(body) > max_body:
        raise WhepError(413, f"fragment of {len(body)} bytes: the limit is {max_body}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WhepError(400, "the fragment is not UTF-8 text") from None
    ufrag: str | None = None
    mid: str | None = None
    candidates: list[tuple[str | None, str]] = []
    end = False
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:"):]
        elif line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith("a=candidate:"):
            candidates.append((mid, line[2:]))
        elif line == "a=end-of-candidates":
            end = True
        elif line[:2] not in ("a=", "m=", "c=") or "=" not in line:
            raise WhepError(400, f"not an SDP fragment line: {line[:60]!r}")
    return Fragment(ufrag, tuple(candidates), end)


def _udp(line: str) -> bool:
    fields = line.split()
    return len(fields) > 2 and fields[2].lower() == "udp"


@dataclass(frozen=True)
class Trickle:
    """One candidate to sign and send: ``candidate`` "" is end-of-candidates."""

    seq: int
    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int | None


# -- sessions ---------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One player's WHEP session, from its 201 to DELETE or the camera's bye."""

    resource: str
    """The unguessable part of the Location URL (not the signaling session ID)."""
    session_id: str
    """The signaling session ID the rendezvous and camera know it by."""
    camera: str
    device_id: str
    owner: int
    """Which bearer token made it: only that token may PATCH or DELETE it."""
    offer: Offer
    created: float
    etag: str = field(default_factory=lambda: '"' + secrets.token_hex(8) + '"')
    ended: str | None = None
    """Why it ended (None: live)."""
    ended_at: float = 0.0
    next_seq: int = 0
    sent: set[str] = field(default_factory=set)
    end_sent: bool = False

    def plan(self, fragment: Fragment) -> list[Trickle]:
        """The signed-candidate messages a PATCH becomes (what the camera can use).

        Only UDP candidates (a player's TCP ones are active: it connects to the
        camera's passive one by itself, and nothing of the camera's pairs with
        them) of the BUNDLE-tagged section
        (or the first, without BUNDLE), none already offered or sent; ``seq`` 0-30
        for candidates, 31 for end-of-candidates; a 32nd candidate is dropped
        (connectivity checks still find it as peer-reflexive).
        """
        if fragment.ufrag is not None and self.offer.ufrag is not None \
                and fragment.ufrag != self.offer.ufrag:
            raise WhepError(422, "ICE restart is not supported: DELETE this session and "
                                 "POST a new offer")
        tag = self.offer.bundle[0] if self.offer.bundle else self.offer.mids[0]
        out: list[Trickle] = []
        for mid, line in fragment.candidates:
            if mid is not None and mid != tag:
                continue
            if not _udp(line) or line in self.sent or line in self.offer.candidates:
                continue
            if self.next_seq >= END_OF_CANDIDATES_SEQ or self.end_sent:
                break
            index = self.offer.mids.index(tag) if tag in self.offer.mids else 0
            self.sent.add(line)
            out.append(Trickle(self.next_seq, line, tag, index))
            self.next_seq += 1
        if fragment.end and not self.end_sent:
            self.end_sent = True
            out.append(Trickle(END_OF_CANDIDATES_SEQ, "", None, None))
        return out


class Sessions:
    """The gateway's session table: the cap, ownership, tombstones for repeated DELETEs."""

    TOMBSTONE_SECONDS = 60.0

    def __init__(self, limit: int, max_age: float) -> None:
        self.limit = limit
        self.max_age = max_age
        self._by_resource: dict[str, Session] = {}
        self._by_session_id: dict[str, Session] = {}
        self._reserved = 0

    def live(self) -> int:
        return sum(s.ended is None for s in self._by_resource.values()) + self._reserved

    def reserve(self) -> None:
        """Hold a place for an offer in flight; 503 when every place is taken."""
        if self.live() >= self.limit:
            raise WhepError(503, f"gateway busy: {self.limit} sessions open (max_sessions)",
                            retry_after=5)
        self._reserved += 1

    def release(self) -> None:
        self._reserved = max(0, self._reserved - 1)

    def add(self, session: Session) -> None:
        """The reserved place becomes this session."""
        self.release()
        self._by_resource[session.resource] = session
        self._by_session_id[session.session_id] = session

    def find(self, resource: str, owner: int, camera: str) -> Session:
        """The session behind a Location, for its own token only (else 404, not 403:
        another client's session ID is not confirmed to exist)."""
        session = self._by_resource.get(resource)
        if session is None or session.owner != owner or session.camera != camera:
            raise WhepError(404, "no such session (ended long ago, or never existed)")
        return session

    def by_session_id(self, session_id: str) -> Session | None:
        return self._by_session_id.get(session_id)

    def end(self, session: Session, reason: str, now: float) -> bool:
        """Mark it ended (its place is free; a tombstone for a minute, so a repeated
        DELETE still gets 200); False if it already was."""
        if session.ended is not None:
            return False
        session.ended, session.ended_at = reason, now
        return True

    def sweep(self, now: float) -> list[Session]:
        """End live sessions older than ``max_age`` (returned: the adapter says bye for
        them) and forget tombstones a minute after their end."""
        dropped: list[Session] = []
        for session in list(self._by_resource.values()):
            if session.ended is None:
                if now - session.created > self.max_age:
                    self.end(session, "too old (max_session_age)", now)
                    dropped.append(session)
            elif now - session.ended_at > self.TOMBSTONE_SECONDS:
                del self._by_resource[session.resource]
                self._by_session_id.pop(session.session_id, None)
        return dropped

    def all(self) -> list[Session]:
        return list(self._by_resource.values())


class ClientLimits:
    """A token bucket per client address, with a bounded table (oldest forgotten)."""

    def __init__(self, rate: float, burst: float, max_clients: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, client: str, now: float) -> None:
        bucket = self._buckets.pop(client, None) or TokenBucket(self.rate, self.burst)
        self._buckets[client] = bucket  # most recent last
        while len(self._buckets) > self.max_clients:
            self._buckets.pop(next(iter(self._buckets)))
        if not bucket.allow(now):
            wait = bucket.wait_time(now)
            raise WhepError(429, f"too many requests from {client}: slow down",
                            retry_after=max(1, int(wait + 0.999)))


def status_for_refusal(camera: str, reason: str) -> WhepError:
    """The HTTP answer to the camera's (or the rendezvous') refusal of an offer."""
    said = reason or "no reason given"
    lowered = said.lower()
    if "busy" in lowered:
        return WhepError(503, f"camera {camera!r} is busy: {said}", retry_after=10)
    if "not authorized" in lowered or "not paired" in lowered or "revoked" in lowered:
        return WhepError(502, f"camera {camera!r} refused this gateway: {said} "
                              "(pair it: peercam whep pair LINK --name NAME)")
    if "unavailable" in lowered or "offline" in lowered:
        return WhepError(503, f"camera {camera!r} is offline: {said}", retry_after=5)
    return WhepError(502, f"camera {camera!r} refused the offer: {said}")
