"""Who is online and which session goes where: the rendezvous state machine, no I/O.

The aiohttp adapter (``services.rendezvous``) calls these methods with what
arrived and performs the returned actions. Keeping the routing here lets the
tests drive hostile sequences (answers for foreign sessions, duplicate IDs,
forged registrations, vanishing peers) without sockets.

The router is not trusted by cameras or viewers: it forwards their signed
fields untouched and cannot make them up. What it does enforce is its own
part: a camera proves it holds the key its ID names, for this server's own
name, before it is reachable, and TURN credentials go only to registered
cameras and routed sessions.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.errors import ServiceError
from services.ratelimit import TokenBucket
from services.signaling import (
    MAX_CANDIDATES,
    ErrorCode,
    Message,
    ProtocolError,
    Role,
    encode,
    error,
    parse,
)
from services.signatures import device_id_of, register_statement, verify

logger = logging.getLogger(__name__)

#: Seconds a camera has from ``hello`` to a signed ``register``.
REGISTER_WINDOW = 30.0

#: Server names a registration may be signed for (each costs a signature check).
MAX_SERVER_NAMES = 16

#: ``watch`` requests a viewer connection may have open at once, and how long one lasts:
#: a hint that a camera registered is cheap to give, but not without bound.
MAX_WATCHES = 8
WATCH_TTL = 120.0

#: Makes ICE server entries (with TURN credentials) for a tag: a device or a session.
Credentials = Callable[[str], list[dict[str, Any]]]


class BadServerName(ServiceError, ValueError):
    """A configured server name is not ``host[:port]``."""


_HOST_RE = re.compile(r"[a-z0-9._-]{1,253}|\[[0-9a-f:.]{2,45}\]")
_DEFAULT_PORTS = (80, 443)


def server_name_forms(name: str) -> frozenset[str]:
    """The names a camera signs when it dials ``name`` (``host[:port]``).

    The camera signs the host of its rendezvous URL, lower case, with the port
    unless it is the scheme's default (80 for ws://, 443 for wss://; see
    ``camera.gatekeeper.server_name``). The server does not know which scheme a
    camera used (a TLS proxy may sit in front of it), so ``host:443`` and
    ``host:80`` also accept the bare ``host``. A bare IPv6 address (as in a
    listen address) gets its brackets.
    """
    text = name.lower()
    host, port = text, None
    if text.count(":") > 1 and not text.startswith("["):
        host = f"[{text}]"  # a bare IPv6 address, no port
    elif text.startswith("["):
        host, bracket, rest = text.partition("]")
        host += bracket
        if rest:
            if not rest.startswith(":"):
                raise BadServerName(f"server name {name[:80]!r}: need host[:port]")
            port = rest[1:]
    elif ":" in text:
        host, _, port = text.partition(":")
    if not _HOST_RE.fullmatch(host):
        raise BadServerName(f"server name {name[:80]!r}: need host[:port]")
    if port is None:
        return frozenset({host})
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadServerName(f"server name {name[:80]!r}: port {port[:10]!r} is not 1-65535")
    number = int(port)
    forms = {f"{host}:{number}"}
    if number in _DEFAULT_PORTS:
        forms.add(host)
    return frozenset(forms)


def parse_server_names(names: Iterable[str]) -> frozenset[str]:
    """Every form of every name in ``names`` (see :func:`server_name_forms`)."""
    out: set[str] = set()
    for name in names:
        out |= server_name_forms(name)
    if len(out) > MAX_SERVER_NAMES:
        raise BadServerName(f"{len(out)} server names, limit {MAX_SERVER_NAMES}")
    return frozenset(out)


@dataclass(eq=False, slots=True)
class Peer:
    """One WebSocket connection, camera or viewer.

    One lives as long as its connection, so a server holding 100k idle cameras
    holds 100k of these: slots, and the viewer-only state made on first use."""

    role: Role
    remote: str = "?"
    host: str = ""
    """The Host header it connected with. A relaying proxy chooses it, so it is
    never what a registration is checked against (see ``Router.server_names``);
    it only decides which name is tried first and appears in a refusal's log."""
    connected_at: float = 0.0
    id: int = field(default_factory=itertools.count(1).__next__)
    device_id: str | None = None
    """Cameras: the ID registered on this connection."""
    generation: int = 0
    """Cameras on a cluster node: the registration's order among all registrations
    of its camera on every node (``services.cluster``); 0 on a single server."""
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    nonce_used: bool = False
    sessions: set[tuple[str, str]] = field(default_factory=set)
    """Viewers: (device_id, session_id) of the sessions this connection owns."""
    _bucket: TokenBucket | None = field(default=None, init=False, repr=False)
    watches: dict[str, float] = field(default_factory=dict)
    """Viewers: device ID -> when its ``watch`` expires (at most MAX_WATCHES)."""
    seen_at: float = 0.0
    """The adapter's liveness clock: when this connection last sent anything."""
    pinged_at: float = -1.0
    """The adapter's liveness clock: when it was last pinged (-1: not since it spoke)."""

    @property
    def credential_bucket(self) -> TokenBucket:
        """Viewers: TURN credentials handed out (prepare), rate-limited."""
        if self._bucket is None:
            self._bucket = TokenBucket(0.5, 10)
        return self._bucket

    def __repr__(self) -> str:
        return f"<{self.role} #{self.id} {self.remote}>"


@dataclass(frozen=True, slots=True)
class Send:
    peer: Peer
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    peer: Peer
    reason: str


@dataclass(frozen=True, slots=True)
class Extension:
    """Base of actions for an adapter extension (the Redis link of a cluster node,
    ``services.cluster``); the single-process server never sees one."""


Action = Send | Close | Extension


@dataclass
class RouterCounters:
    """Totals since the router started, for the adapter's metrics (plain numbers)."""

    received: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(role, message type) -> messages; type ``invalid`` for one that did not parse."""
    errors: Counter[str] = field(default_factory=Counter)
    """``error`` messages sent, by code."""
    sessions_started: Counter[str] = field(default_factory=Counter)
    """Sessions routed to a camera, by kind (``offer``, ``pair``)."""
    sessions_answered: Counter[str] = field(default_factory=Counter)
    """Sessions the camera answered (``answer``/``paired``), by kind."""
    registrations: int = 0
    registrations_refused: Counter[str] = field(default_factory=Counter)
    """By reason: ``replayed``, ``stale-nonce``, ``bad-key``, ``key-mismatch``,
    ``bad-signature`` (not signed for this server's names), ``timeout`` (no
    register in time)."""
    replaced: int = 0
    """Registrations that replaced an older connection of the same camera."""
    turn_credentials: int = 0
    """TURN credential sets minted (registered cameras, prepare, offer)."""
    turn_credential_failures: int = 0


@dataclass(slots=True)
class _Session:
    device_id: str
    session_id: str
    viewer: Peer
    deadline: float
    kind: str = "offer"
    """``offer`` (ends at the answer's bye) or ``pair`` (ends at ``paired``)."""
    answered: bool = False
    candidates: int = 0
    """Trickled ``candidate`` messages routed for it (at most MAX_CANDIDATES)."""


class Router:
    """Presence of cameras and routing of sessions between cameras and viewers."""

    def __init__(
        self,
        *,
        server_names: Iterable[str] = (),
        server_name: str = "peercam",
        ice_servers: list[dict[str, Any]] | None = None,
        credentials: Credentials | None = None,
        answer_timeout: float = 20.0,
        register_timeout: float = REGISTER_WINDOW,
    ) -> None:
        self.server_names = parse_server_names(server_names)
        """This server's own names: a camera's registration must be signed for one.
        Empty: every registration is refused."""
        self.server_name = server_name
        self.ice_servers = list(ice_servers or [])
        self.credentials = credentials
        self.answer_timeout = answer_timeout
        self.register_timeout = register_timeout
        """Seconds a camera connection may stay unregistered before it is closed."""
        self.unregistered: set[Peer] = set()
        """Camera connections that have not registered (yet)."""
        self.cameras: dict[str, Peer] = {}
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.viewers: set[Peer] = set()
        self.watchers: dict[str, set[Peer]] = {}
        """Device ID -> viewer connections to tell when it registers (``watch``)."""
        self.counters = RouterCounters()

    def _ice_servers(self, tag: str) -> list[dict[str, Any]]:
        """Public servers plus, if TURN is configured, credentials minted for ``tag``."""
        if self.credentials is None:
            return list(self.ice_servers)
        # TURN REST usernames take [A-Za-z0-9_-]: a device ID's check symbol may be '$'.
        safe = "".join(ch for ch in tag if ch.isascii() and (ch.isalnum() or ch in "_-"))[:64]
        try:
            minted = self.credentials(safe)
        except ValueError as exc:
            self.counters.turn_credential_failures += 1
            logger.error("could not mint TURN credentials: %s", exc)
            return list(self.ice_servers)
        self.counters.turn_credentials += 1
        return self.ice_servers + minted

    # -- connection events -------------------------------------------------

    def connected(self, peer: Peer, now: float = 0.0) -> list[Action]:
        peer.connected_at = now
        if peer.role is Role.VIEWER:
            self.viewers.add(peer)
        else:
            self.unregistered.add(peer)
        hello = encode(
            Role.SERVER,
            "hello",
            server=self.server_name,
            nonce=peer.nonce,
            ice_servers=self.ice_servers,  # STUN only: credentials need a routed session
        )
        return [Send(peer, hello)]

    def disconnected(self, peer: Peer) -> list[Action]:
        """The connection is gone: end every session that depended on it."""
        actions: list[Action] = []
        if peer.role is Role.CAMERA:
            self.unregistered.discard(peer)
            if peer.device_id and self.cameras.get(peer.device_id) is peer:
                del self.cameras[peer.device_id]
                logger.info("camera %s offline (%r)", peer.device_id, peer)
                for key, session in list(self.sessions.items()):
                    if key[0] == peer.device_id:
                        actions += self._end(session, "camera went offline", notify_camera=False)
        else:
            self.viewers.discard(peer)
            for device_id in peer.watches:
                self._unwatch(peer, device_id)
            peer.watches.clear()
            for key in list(peer.sessions):
                live = self.sessions.get(key)
                if live is not None:
                    actions += self._end(live, "viewer left", notify_viewer=False)
        return actions

    def received(self, peer: Peer, data: str | bytes, now: float) -> list[Action]:
        """One WebSocket frame from ``peer``. Bad input yields an error, never an exception."""
        try:
            try:
                message = parse(data, peer.role)
            except ProtocolError:
                self.counters.received[(peer.role.value, "invalid")] += 1
                raise
            self.counters.received[(peer.role.value, message.type)] += 1
            if peer.role is Role.CAMERA:
                return self._from_camera(peer, message, now)
            return self._from_viewer(peer, message, now)
        except ProtocolError as exc:
            logger.info("%r sent a bad message: %s", peer, exc.message)
            actions: list[Action] = [Send(peer, self._error(exc.code, exc.message))]
            if exc.code is ErrorCode.BAD_SIGNATURE:
                actions.append(Close(peer, "registration refused"))
            return actions

    def expire(self, now: float) -> list[Action]:
        """Close camera connections that did not register in time; end sessions whose
        camera did not answer in time. Call about once a second."""
        actions: list[Action] = []
        for peer in list(self.unregistered):
            if now - peer.connected_at > self.register_timeout:
                # A camera connection that never registers holds a descriptor for nothing.
                self.unregistered.discard(peer)
                self.counters.registrations_refused["timeout"] += 1
                actions.append(Send(peer, self._error(ErrorCode.TIMEOUT, "no register in time")))
                actions.append(Close(peer, "no register in time"))
        for session in list(self.sessions.values()):
            if not session.answered and now >= session.deadline:
                actions.append(
                    Send(
                        session.viewer,
                        self._error(ErrorCode.TIMEOUT, "the camera did not answer",
                                    session.session_id),
                    )
                )
                actions += self._end(session, "no answer in time", notify_viewer=False)
        return actions

    # -- camera messages -------------------------------------------------------

    def _from_camera(self, peer: Peer, message: Message, now: float) -> list[Action]:
        if message.type == "register":
            return self._register(peer, message, now)
        if peer.device_id is None:
            raise ProtocolError(ErrorCode.NOT_REGISTERED, f"{message.type} before register")
        key = (peer.device_id, message["session_id"])
        session = self.sessions.get(key)
        if session is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION, f"no live session {message['session_id']!r}"
            )
        if message.type == "bye":
            reason = message.get("reason") or "camera ended it"
            return self._end(session, reason, notify_camera=False)
        expected = "answer" if session.kind == "offer" else "paired"
        if message.type != expected or session.answered:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{message.type} is not expected now")
        session.answered = True
        self.counters.sessions_answered[session.kind] += 1
        # Forwarded as signed: the viewer checks the camera's signature, not ours.
        actions: list[Action] = [
            Send(session.viewer, encode(Role.SERVER, message.type, **message.fields))
        ]
        if session.kind == "pair":
            actions += self._end(session, "paired", notify_camera=False, notify_viewer=False)
        return actions

    def _register(self, peer: Peer, message: Message, now: float) -> list[Action]:
        device_id, device_key = message["device_id"], message["device_key"]
        if peer.device_id is not None or peer.nonce_used:
            self.counters.registrations_refused["replayed"] += 1
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "this connection already registered")
        peer.nonce_used = True  # one registration per nonce: no replays on this connection
        if now - peer.connected_at > REGISTER_WINDOW:
            self.counters.registrations_refused["stale-nonce"] += 1
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "the nonce is stale: reconnect")
        try:
            key_id = device_id_of(device_key)
        except ValueError:
            self.counters.registrations_refused["bad-key"] += 1
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "device_key is not a key") from None
        if key_id != device_id:
            # IDs are hashes of keys: an ID can never be bound to another key.
            logger.warning("%r claimed %s with a key for %s", peer, device_id, key_id)
            self.counters.registrations_refused["key-mismatch"] += 1
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "device_key does not match device_id")
        if not self._signed_for_us(peer, device_key, device_id, message["signature"]):
            self.counters.registrations_refused["bad-signature"] += 1
            raise ProtocolError(
                ErrorCode.BAD_SIGNATURE, "signature does not verify for this server's name"
            )
        actions: list[Action] = []
        old = self.cameras.get(device_id)
        if old is not None and old is not peer:
            # The newer connection wins: a camera that reconnects must not wait for
            # the old socket to time out. Both proved the same key.
            logger.warning("camera %s registered again; closing the older %r", device_id, old)
            actions += self._replace(old, device_id)
        peer.device_id = device_id
        self.unregistered.discard(peer)
        self.cameras[device_id] = peer
        self.counters.registrations += 1
        logger.info("camera %s registered (%r)", device_id, peer)
        registered = encode(
            Role.SERVER,
            "registered",
            device_id=device_id,
            ice_servers=self._ice_servers(device_id.replace("-", "")),
        )
        actions.append(Send(peer, registered))
        return actions + self._tell_watchers(device_id, now)

    # -- watches: "tell me when this camera registers" -----------------------------

    def _watch(self, peer: Peer, device_id: str, now: float) -> list[Action]:
        """Advice for a viewer waiting on an offline camera: one ``online`` when it
        registers (at once if it is online), then the watch is gone. Unknown and
        offline IDs are treated alike: a watch reveals no more than ``prepare``."""
        if device_id in self.cameras:
            return [Send(peer, encode(Role.SERVER, "online", device_id=device_id))]
        for watched, expires in list(peer.watches.items()):
            if expires <= now:
                del peer.watches[watched]
                self._unwatch(peer, watched)
        if device_id not in peer.watches and len(peer.watches) >= MAX_WATCHES:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"watch: at most {MAX_WATCHES} cameras per connection")
        peer.watches[device_id] = now + WATCH_TTL
        self.watchers.setdefault(device_id, set()).add(peer)
        return []

    def _unwatch(self, peer: Peer, device_id: str) -> None:
        watchers = self.watchers.get(device_id)
        if watchers is not None:
            watchers.discard(peer)
            if not watchers:
                del self.watchers[device_id]

    def _tell_watchers(self, device_id: str, now: float) -> list[Action]:
        online = encode(Role.SERVER, "online", device_id=device_id)
        return [Send(peer, online) for peer in self.watchers.pop(device_id, set())
                if peer.watches.pop(device_id, 0.0) > now]

    def _replace(self, old: Peer, device_id: str) -> list[Action]:
        """Close ``old``, the connection ``device_id`` registered on before a newer one."""
        self.counters.replaced += 1
        actions: list[Action] = [
            Send(old, self._error(ErrorCode.REPLACED, "a newer connection registered")),
            Close(old, "replaced"),
        ]
        for key, session in list(self.sessions.items()):
            if key[0] == device_id:
                actions += self._end(session, "camera reconnected", notify_camera=False)
        old.device_id = None
        return actions

    def _signed_for_us(self, peer: Peer, device_key: str, device_id: str, signature: str) -> bool:
        """Is ``signature`` a registration for one of our own names, with this nonce?

        Never checked against the Host header: a hostile server relaying a
        camera's connection here chooses that header, and would otherwise make
        a registration signed for its own name count here. The camera does not
        say which name it signed, so each of ours is tried, the Host header's
        first (the usual case costs one check).
        """
        host = peer.host.strip().lower()
        names = sorted(self.server_names, key=lambda name: name != host)
        for name in names:
            if verify(device_key, register_statement(name, peer.nonce, device_id), signature):
                return True
        if not self.server_names:
            logger.warning("%r: registration for %s refused: this server has no name", peer,
                           device_id)
        else:
            # %r: the header is the client's text; repr keeps the log line one line.
            logger.warning(
                "%r: registration for %s refused: not signed for %s (this server's names)"
                " with this connection's nonce; its Host header was %r. If cameras dial"
                " this server by that name, add it with --server-name.",
                peer, device_id, ", ".join(sorted(self.server_names)), peer.host[:100],
            )
        return False

    # -- viewer messages -------------------------------------------------------

    def _from_viewer(self, peer: Peer, message: Message, now: float) -> list[Action]:
        if message.type == "bye":
            for key in peer.sessions:
                if key[1] == message["session_id"]:
                    reason = message.get("reason") or "viewer left"
                    return self._end(self.sessions[key], reason, notify_viewer=False)
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session on this connection")
        if message.type == "candidate":
            return self._candidate(peer, message)
        if message.type == "watch":
            return self._watch(peer, message["device_id"], now)
        device_id, session_id = message["device_id"], message["session_id"]
        camera = self.cameras.get(device_id)
        if camera is None:
            # Same answer for an unknown ID and an offline one: no enumeration.
            raise ProtocolError(ErrorCode.UNAVAILABLE, "that camera is not online")
        if message.type == "prepare":
            if not peer.credential_bucket.allow(now):
                raise ProtocolError(ErrorCode.RATE_LIMITED, "too many credential requests")
            prepared = encode(
                Role.SERVER,
                "prepared",
                session_id=session_id,
                ice_servers=self._ice_servers(session_id),
            )
            return [Send(peer, prepared)]
        key = (device_id, session_id)
        if key in self.sessions:
            raise ProtocolError(ErrorCode.CONFLICT, "that session_id is in use")
        self.sessions[key] = _Session(
            device_id, session_id, peer, deadline=now + self.answer_timeout, kind=message.type
        )
        peer.sessions.add(key)
        self.counters.sessions_started[message.type] += 1
        fields = {k: v for k, v in message.fields.items() if k != "device_id"}
        if message.type == "offer":
            fields["ice_servers"] = self._ice_servers(session_id)
        return [Send(camera, encode(Role.SERVER, message.type, **fields))]

    def _candidate(self, peer: Peer, message: Message) -> list[Action]:
        """A trickled ICE candidate: only from the connection that sent the offer, only
        to that session's camera. Its signature is the camera's business, not ours."""
        key = (message["device_id"], message["session_id"])
        session = self.sessions.get(key)
        camera = self.cameras.get(key[0])
        if key not in peer.sessions or session is None or session.kind != "offer" or (
            camera is None
        ):
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION,
                f"no live offer {message['session_id']!r} on this connection",
            )
        session.candidates += 1
        if session.candidates > MAX_CANDIDATES:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"candidate: at most {MAX_CANDIDATES} per session"
            )
        fields = {k: v for k, v in message.fields.items() if k != "device_id"}
        return [Send(camera, encode(Role.SERVER, "candidate", **fields))]

    def _end(
        self,
        session: _Session,
        reason: str,
        *,
        notify_camera: bool = True,
        notify_viewer: bool = True,
    ) -> list[Action]:
        key = (session.device_id, session.session_id)
        self.sessions.pop(key, None)
        session.viewer.sessions.discard(key)
        actions: list[Action] = []
        bye = encode(Role.SERVER, "bye", session_id=session.session_id, reason=reason)
        camera = self.cameras.get(session.device_id)
        if notify_camera and camera is not None:
            actions.append(Send(camera, bye))
        if notify_viewer:
            actions.append(Send(session.viewer, bye))
        return actions

    def _error(self, code: ErrorCode, text: str, session_id: str | None = None) -> str:
        """An ``error`` message, counted by code."""
        self.counters.errors[code.value] += 1
        return error(code, text, session_id)

    def stats(self) -> dict[str, int]:
        return {
            "cameras": len(self.cameras),
            "viewers": len(self.viewers),
            "sessions": len(self.sessions),
        }
