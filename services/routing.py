"""Who is online and which session goes where: the rendezvous state machine, no I/O.

The aiohttp adapter (``services.rendezvous``) calls these methods with what
arrived and performs the returned actions. Keeping the routing here lets the
tests drive hostile sequences (answers for foreign sessions, duplicate IDs,
vanishing peers) without sockets.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from services.signaling import ErrorCode, Message, ProtocolError, Role, encode, error, parse

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Peer:
    """One WebSocket connection, camera or viewer."""

    role: Role
    remote: str = "?"
    id: int = field(default_factory=itertools.count(1).__next__)
    device_id: str | None = None
    """Cameras: the ID registered on this connection."""
    sessions: set[tuple[str, str]] = field(default_factory=set)
    """Viewers: (device_id, session_id) of the sessions this connection owns."""
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(24))

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


Action = Send | Close


@dataclass(slots=True)
class _Session:
    device_id: str
    session_id: str
    viewer: Peer
    deadline: float
    answered: bool = False


class Router:
    """Presence of cameras and routing of sessions between cameras and viewers."""

    def __init__(
        self,
        *,
        server_name: str = "peercam",
        ice_servers: list[dict[str, Any]] | None = None,
        answer_timeout: float = 20.0,
    ) -> None:
        self.server_name = server_name
        self.ice_servers = list(ice_servers or [])
        self.answer_timeout = answer_timeout
        self.cameras: dict[str, Peer] = {}
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.viewers: set[Peer] = set()

    # -- connection events -------------------------------------------------

    def connected(self, peer: Peer) -> list[Action]:
        if peer.role is Role.VIEWER:
            self.viewers.add(peer)
        hello = encode(
            Role.SERVER,
            "hello",
            server=self.server_name,
            nonce=peer.nonce,
            ice_servers=self.ice_servers,
        )
        return [Send(peer, hello)]

    def disconnected(self, peer: Peer) -> list[Action]:
        """The connection is gone: end every session that depended on it."""
        actions: list[Action] = []
        if peer.role is Role.CAMERA:
            if peer.device_id and self.cameras.get(peer.device_id) is peer:
                del self.cameras[peer.device_id]
                logger.info("camera %s offline (%r)", peer.device_id, peer)
                for key, session in list(self.sessions.items()):
                    if key[0] == peer.device_id:
                        actions += self._end(session, "camera went offline", notify_camera=False)
        else:
            self.viewers.discard(peer)
            for key in list(peer.sessions):
                live = self.sessions.get(key)
                if live is not None:
                    actions += self._end(live, "viewer left", notify_viewer=False)
        return actions

    def received(self, peer: Peer, data: str | bytes, now: float) -> list[Action]:
        """One WebSocket frame from ``peer``. Bad input yields an error, never an exception."""
        try:
            message = parse(data, peer.role)
            if peer.role is Role.CAMERA:
                return self._from_camera(peer, message)
            return self._from_viewer(peer, message, now)
        except ProtocolError as exc:
            logger.info("%r sent a bad message: %s", peer, exc.message)
            return [Send(peer, error(exc.code, exc.message))]

    def expire(self, now: float) -> list[Action]:
        """End sessions whose camera did not answer in time. Call about once a second."""
        actions: list[Action] = []
        for session in list(self.sessions.values()):
            if not session.answered and now >= session.deadline:
                actions.append(
                    Send(
                        session.viewer,
                        error(ErrorCode.TIMEOUT, "the camera did not answer", session.session_id),
                    )
                )
                actions += self._end(session, "no answer in time", notify_viewer=False)
        return actions

    # -- messages ------------------------------------------------------------

    def _from_camera(self, peer: Peer, message: Message) -> list[Action]:
        if message.type == "register":
            return self._register(peer, message["device_id"])
        if peer.device_id is None:
            raise ProtocolError(ErrorCode.NOT_REGISTERED, f"{message.type} before register")
        key = (peer.device_id, message["session_id"])
        session = self.sessions.get(key)
        if session is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION, f"no live session {message['session_id']!r}"
            )
        if message.type == "answer":
            if session.answered:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "session already answered")
            session.answered = True
            text = encode(
                Role.SERVER, "answer", session_id=session.session_id, sdp=message["sdp"]
            )
            return [Send(session.viewer, text)]
        # bye
        return self._end(session, message.get("reason") or "camera ended it", notify_camera=False)

    def _register(self, peer: Peer, device_id: str) -> list[Action]:
        actions: list[Action] = []
        if peer.device_id is not None and peer.device_id != device_id:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "this connection registered another ID")
        old = self.cameras.get(device_id)
        if old is not None and old is not peer:
            # The newer connection wins: a camera that reconnects must not wait for
            # the old socket to time out. (The trust issue binds this to the key.)
            logger.warning("camera %s re-registered; closing %r", device_id, old)
            actions.append(Send(old, error(ErrorCode.REPLACED, "a newer connection registered")))
            actions.append(Close(old, "replaced"))
            for key, session in list(self.sessions.items()):
                if key[0] == device_id:
                    actions += self._end(session, "camera reconnected", notify_camera=False)
            old.device_id = None
        peer.device_id = device_id
        self.cameras[device_id] = peer
        logger.info("camera %s registered (%r)", device_id, peer)
        actions.append(Send(peer, encode(Role.SERVER, "registered", device_id=device_id)))
        return actions

    def _from_viewer(self, peer: Peer, message: Message, now: float) -> list[Action]:
        if message.type == "offer":
            device_id, session_id = message["device_id"], message["session_id"]
            camera = self.cameras.get(device_id)
            if camera is None:
                # Same answer for an unknown ID and an offline one: no enumeration.
                raise ProtocolError(ErrorCode.UNAVAILABLE, "that camera is not online")
            key = (device_id, session_id)
            if key in self.sessions:
                raise ProtocolError(ErrorCode.CONFLICT, "that session_id is in use")
            self.sessions[key] = _Session(
                device_id, session_id, peer, deadline=now + self.answer_timeout
            )
            peer.sessions.add(key)
            text = encode(Role.SERVER, "offer", session_id=session_id, sdp=message["sdp"])
            return [Send(camera, text)]
        # bye: the viewer names only the session; find it among its own.
        for key in peer.sessions:
            if key[1] == message["session_id"]:
                reason = message.get("reason") or "viewer left"
                return self._end(self.sessions[key], reason, notify_viewer=False)
        raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session on this connection")

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

    def stats(self) -> dict[str, int]:
        return {
            "cameras": len(self.cameras),
            "viewers": len(self.viewers),
            "sessions": len(self.sessions),
        }

