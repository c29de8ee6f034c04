"""Rendezvous nodes sharing presence and routing: the cluster's decisions, no I/O.

A node is one rendezvous process with its own WebSockets. A camera's presence
is a key in Redis naming the node (and the connection) it registered on; a
viewer's message for a camera on another node goes to that node, whose router
handles it as if the viewer were connected there, and the replies come back
the same way. ``services.cluster_redis`` moves the bytes; this module decides.

Another node is trusted no more than a viewer or a camera: what it sends is
parsed with the same schemas, a viewer frame it relays is routed by the same
rules (the camera checks the signatures, as always), a reply it relays reaches
only a viewer that has a session with a camera on that node, and an eviction
(a newer registration of a camera elsewhere) must carry that camera's own
signed registration. Anything else is refused, counted and logged.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.errors import ServiceError
from services.routing import Action, Close, Extension, Peer, Router, Send
from services.signaling import (
    MAX_MESSAGE_BYTES,
    ErrorCode,
    Message,
    ProtocolError,
    Role,
    encode,
    normalize_device_id,
    parse,
)
from services.signaling import loads as loads_json
from services.signatures import register_statement, verify

logger = logging.getLogger(__name__)

#: Remote sessions (with cameras on other nodes) one viewer connection may hold.
MAX_REMOTE_SESSIONS = 32
#: Viewers of other nodes this node keeps state for (bounded under a hostile node).
MAX_REMOTE_VIEWERS = 100_000
#: The largest node-to-node message: a viewer frame (at most 4 signaling
#: messages' worth, as the WebSocket takes) and its envelope.
MAX_NODE_MESSAGE = 4 * MAX_MESSAGE_BYTES + 1024
#: Server message types a node may relay to a viewer.
_TO_VIEWER_TYPES = frozenset({"answer", "paired", "bye", "error"})

#: Reasons a node message is refused (``ClusterRouter.node_refused``).
REFUSALS = ("malformed", "foreign-viewer", "foreign-session", "foreign-camera",
            "bad-signature", "bad-payload", "too-many")

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_URL_SCHEMES = ("redis", "rediss", "unix")


class BadClusterConfig(ServiceError, ValueError):
    """A cluster setting out of its range."""


class BadNodeMessage(ServiceError, ValueError):
    """A node-to-node message that is not one this node accepts."""


def check_node_id(text: str) -> str:
    if not isinstance(text, str) or not _NODE_ID_RE.fullmatch(text):
        raise BadClusterConfig(f"node id {str(text)[:80]!r}: need 1-64 of A-Z a-z 0-9 _ . -")
    return text


def default_node_id() -> str:
    """This host's name and a random suffix: unique per process start."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``: for logs and /healthz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


@dataclass(frozen=True)
class ClusterSettings:
    """How a node joins the others (``RendezvousConfig.cluster``)."""

    redis_url: str = field(repr=False)  # its password must not reach a log
    """``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or ``unix://``."""
    node_id: str = field(default_factory=default_node_id)
    """This node's name in presence keys and channels; unique among running nodes."""
    lease: float = 15.0
    """Seconds a presence key lives unless renewed (renewed every third of it): a
    dead node's cameras are gone from presence this long after its death."""
    tls_ca: str | None = None
    """For ``rediss://``: a CA file to trust (None: the system's)."""
    prefix: str = "peercam"
    """Prefix of every key and channel (several services on one Redis)."""
    redis_timeout: float = 2.0
    """Seconds any one Redis command or connection attempt may take."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in _URL_SCHEMES:
            raise BadClusterConfig(
                f"redis url {redacted(self.redis_url)[:120]!r}: need redis://, rediss:// "
                "or unix://")
        check_node_id(self.node_id)
        if not _NODE_ID_RE.fullmatch(self.prefix):
            raise BadClusterConfig(f"prefix {self.prefix[:80]!r}: need 1-64 of A-Z a-z 0-9 _ . -")
        if not 1.0 <= self.lease <= 300.0:
            raise BadClusterConfig(f"lease {self.lease!r}: need 1..300 s")
        if not 0.1 <= self.redis_timeout <= 30.0:
            raise BadClusterConfig(f"redis_timeout {self.redis_timeout!r}: need 0.1..30 s")

    def presence_key(self, device_id: str) -> str:
        return f"{self.prefix}:camera:{device_id}"

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}:to:{node_id}"


def holder_node(value: str | None) -> str | None:
    """The node named by a holder (``node/connection``) or a presence value
    (``node/connection@generation``), None if malformed."""
    if value is None:
        return None
    holder, at, generation = value.partition("@")
    if at and not generation.isdigit():
        return None
    node, slash, conn = holder.partition("/")
    if not slash or not conn.isdigit() or not _NODE_ID_RE.fullmatch(node):
        return None
    return node


def presence_value(holder: str, generation: int) -> str:
    """What a presence key holds: the holder and its registration's generation."""
    return f"{holder}@{generation}"


def wall_generation() -> int:
    """Microseconds of the wall clock: registrations of one camera on different nodes
    are ordered by when each node accepted it (the nodes' clocks kept in sync)."""
    return time.time_ns() // 1000


# -- node-to-node messages ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewerFrame:
    """A viewer's frame, for the node that holds the camera it names."""

    sender: str
    ref: int
    """The viewer's connection number on the sending node."""
    data: str


@dataclass(frozen=True, slots=True)
class ToViewer:
    """A server message for a viewer connected to the receiving node."""

    sender: str
    ref: int
    data: str


@dataclass(frozen=True, slots=True)
class ViewerLeft:
    """A viewer of the sending node disconnected: end its sessions here."""

    sender: str
    ref: int


@dataclass(frozen=True, slots=True)
class Evict:
    """The camera registered again on the sending node: close the connection that
    ``holder`` names. Carries the camera's signed registration as proof."""

    sender: str
    device_id: str
    holder: str
    device_key: str
    nonce: str
    signature: str


NodeMessage = ViewerFrame | ToViewer | ViewerLeft | Evict

_KINDS: dict[str, tuple[type[Any], dict[str, type]]] = {
    "viewer": (ViewerFrame, {"sender": str, "ref": int, "data": str}),
    "to-viewer": (ToViewer, {"sender": str, "ref": int, "data": str}),
    "viewer-left": (ViewerLeft, {"sender": str, "ref": int}),
    "evict": (Evict, {"sender": str, "device_id": str, "holder": str, "device_key": str,
                      "nonce": str, "signature": str}),
}
_KIND_OF = {cls: kind for kind, (cls, _fields) in _KINDS.items()}


def encode_node(message: NodeMessage) -> str:
    obj: dict[str, Any] = {"v": 1, "kind": _KIND_OF[type(message)]}
    for name in _KINDS[obj["kind"]][1]:
        obj[name] = getattr(message, name)
    return json.dumps(obj, separators=(",", ":"))


def decode_node(raw: str | bytes) -> NodeMessage:
    """Parse one node-to-node message strictly; :class:`BadNodeMessage` says why not."""
    if len(raw) > MAX_NODE_MESSAGE:
        raise BadNodeMessage(f"{len(raw)} bytes (limit {MAX_NODE_MESSAGE})")
    try:
        obj = loads_json(raw)
    except ValueError as exc:  # not JSON, nested too deep, or not Unicode
        raise BadNodeMessage(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise BadNodeMessage("not a version 1 node message")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise BadNodeMessage(f"unknown kind {str(kind)[:40]!r}")
    cls, fields = _KINDS[kind]
    extra = set(obj) - set(fields) - {"v", "kind"}
    if extra:
        raise BadNodeMessage(f"{kind}: unknown field(s) {sorted(extra)[:5]}")
    values: dict[str, Any] = {}
    for name, kind_type in fields.items():
        value = obj.get(name)
        if kind_type is int:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
                raise BadNodeMessage(f"{kind}: {name} is not a connection number")
        elif not isinstance(value, str) or len(value) > MAX_NODE_MESSAGE:
            raise BadNodeMessage(f"{kind}: {name} is not a string")
        values[name] = value
    if not _NODE_ID_RE.fullmatch(values["sender"]):
        raise BadNodeMessage(f"{kind}: sender {values['sender'][:80]!r} is not a node id")
    if cls is Evict:
        try:
            values["device_id"] = normalize_device_id(values["device_id"])
        except ValueError:
            raise BadNodeMessage(f"evict: device_id {values['device_id'][:80]!r}") from None
        if holder_node(values["holder"]) is None:
            raise BadNodeMessage(f"evict: holder {values['holder'][:80]!r}")
    message: NodeMessage = cls(**values)
    return message


# -- actions for the Redis adapter ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Locate(Extension):
    """Find the node holding ``device_id``, then call ``ClusterRouter.located``."""

    peer: Peer
    device_id: str
    data: str


@dataclass(frozen=True, slots=True)
class Publish(Extension):
    """Send ``message`` to ``node``; if no node receives it, call ``publish_failed``."""

    node: str
    message: NodeMessage


@dataclass(frozen=True, slots=True)
class Claim(Extension):
    """Set the presence of ``proof.device_id`` to ``value`` (this connection and its
    registration's generation) unless it names a newer registration; evict the
    connection it named before, if that was on another node. A newer one there:
    call ``ClusterRouter.lost_presence`` (this registration is the older)."""

    proof: Evict
    value: str


@dataclass(frozen=True, slots=True)
class Release(Extension):
    """Delete the presence of ``device_id`` if it is still ``value``."""

    device_id: str
    value: str


@dataclass(eq=False, slots=True)
class RemoteViewer(Peer):
    """A viewer connected to another node, as this node's router sees it."""

    node: str = ""
    ref: int = 0

    def __repr__(self) -> str:
        return f"<viewer #{self.ref} of node {self.node}>"


@dataclass(slots=True)
class _RemoteSession:
    """A session of a viewer here with a camera on another node."""

    node: str
    kind: str
    deadline: float
    answered: bool = False


class ClusterRouter(Router):
    """A :class:`Router` for one node of several sharing presence through Redis."""

    def __init__(self, node_id: str, generation_clock: Callable[[], int] = wall_generation,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_id = check_node_id(node_id)
        self._generation_clock = generation_clock
        """Where a registration's generation comes from (see ``_next_generation``)."""
        self._last_generation = 0
        self.local_viewers: dict[int, Peer] = {}
        self.remote: dict[Peer, dict[tuple[str, str], _RemoteSession]] = {}
        """Viewers here -> their sessions with cameras on other nodes."""
        self.proxies: dict[tuple[str, int], RemoteViewer] = {}
        """Viewers of other nodes with sessions with cameras here."""
        self.node_refused: Counter[str] = Counter()
        """Node-to-node messages refused, by reason: ``malformed``, ``foreign-viewer``,
        ``foreign-session``, ``foreign-camera``, ``bad-signature``, ``bad-payload``,
        ``too-many``."""
        self.node_received: Counter[str] = Counter()

    def holder(self, peer: Peer) -> str:
        """The connection ``peer`` as other nodes name it (``node/connection``)."""
        return f"{self.node_id}/{peer.id}"

    def presence_value(self, peer: Peer) -> str:
        """The presence value of a camera registered on ``peer`` here."""
        return presence_value(self.holder(peer), peer.generation)

    def _next_generation(self) -> int:
        """A registration's place among every registration of its camera on any node:
        the wall clock in microseconds, strictly increasing on this node. Redis keeps
        the presence of the highest (``services.cluster_redis``): the newer wins
        whichever node's write reaches Redis last."""
        self._last_generation = max(self._generation_clock(), self._last_generation + 1)
        return self._last_generation

    # -- hooks into the single-node router -------------------------------------------

    def connected(self, peer: Peer, now: float = 0.0) -> list[Action]:
        if peer.role is Role.VIEWER:
            self.local_viewers[peer.id] = peer
        return super().connected(peer, now)

    def disconnected(self, peer: Peer) -> list[Action]:
        actions: list[Action] = []
        if peer.role is Role.CAMERA and peer.device_id is not None and (
                self.cameras.get(peer.device_id) is peer):
            actions.append(Release(peer.device_id, self.presence_value(peer)))
        elif peer.role is Role.VIEWER and not isinstance(peer, RemoteViewer):
            self.local_viewers.pop(peer.id, None)
            nodes = {s.node for s in self.remote.pop(peer, {}).values()}
            actions += [Publish(node, ViewerLeft(self.node_id, peer.id)) for node in sorted(nodes)]
        return self._outbound(super().disconnected(peer) + actions)

    def received(self, peer: Peer, data: str | bytes, now: float) -> list[Action]:
        return self._outbound(super().received(peer, data, now))

    def expire(self, now: float) -> list[Action]:
        actions = super().expire(now)
        for viewer, sessions in list(self.remote.items()):
            for key, session in list(sessions.items()):
                if not session.answered and now >= session.deadline:
                    del sessions[key]
                    actions.append(Send(viewer, self._error(
                        ErrorCode.TIMEOUT, "the camera did not answer", key[1])))
        for where, proxy in list(self.proxies.items()):
            if not proxy.sessions:
                del self.proxies[where]
        return self._outbound(actions)

    def _register(self, peer: Peer, message: Message, now: float) -> list[Action]:
        actions = super()._register(peer, message, now)
        if peer.device_id is not None:
            peer.generation = self._next_generation()
            actions.append(Claim(Evict(self.node_id, peer.device_id, self.holder(peer),
                                       message["device_key"], peer.nonce,
                                       message["signature"]), self.presence_value(peer)))
        return actions

    def _from_viewer(self, peer: Peer, message: Message, now: float) -> list[Action]:
        if isinstance(peer, RemoteViewer):
            if message.type == "prepare":
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "prepare is the viewer's node's")
            return super()._from_viewer(peer, message, now)  # cameras here only
        sessions = self.remote.get(peer, {})
        if message.type in ("bye", "candidate"):
            for key, session in list(sessions.items()):
                if key[1] == message["session_id"] and (
                        message.type == "bye" or key[0] == message["device_id"]):
                    if message.type == "bye":
                        del sessions[key]
                    text = encode(Role.VIEWER, message.type, **message.fields)
                    return [Publish(session.node, ViewerFrame(self.node_id, peer.id, text))]
            return super()._from_viewer(peer, message, now)
        device_id = message["device_id"]
        if device_id in self.cameras:
            return super()._from_viewer(peer, message, now)
        return [Locate(peer, device_id, encode(Role.VIEWER, message.type, **message.fields))]

    # -- answers from the adapter --------------------------------------------------------

    def located(self, peer: Peer, data: str, node: str | None, now: float) -> list[Action]:
        """``node`` holds the camera ``data`` (a viewer's offer, pair or prepare) names;
        None: no node does, or Redis could not say."""
        if peer not in self.viewers:
            return []  # the viewer left while we looked
        try:
            message = parse(data, Role.VIEWER)
            device_id, session_id = message["device_id"], message["session_id"]
            if device_id in self.cameras:  # it registered here meanwhile
                return self._outbound(Router._from_viewer(self, peer, message, now))
            if node is None or node == self.node_id:
                raise ProtocolError(ErrorCode.UNAVAILABLE, "that camera is not online")
            if message.type == "prepare":
                if not peer.credential_bucket.allow(now):
                    raise ProtocolError(ErrorCode.RATE_LIMITED, "too many credential requests")
                return [Send(peer, encode(Role.SERVER, "prepared", session_id=session_id,
                                          ice_servers=self._ice_servers(session_id)))]
            sessions = self.remote.setdefault(peer, {})
            if (device_id, session_id) in sessions:
                raise ProtocolError(ErrorCode.CONFLICT, "that session_id is in use")
            if len(sessions) >= MAX_REMOTE_SESSIONS:
                raise ProtocolError(ErrorCode.RATE_LIMITED,
                                    f"at most {MAX_REMOTE_SESSIONS} sessions per connection")
            # The camera's node answers within its own answer timeout; a little more here.
            sessions[(device_id, session_id)] = _RemoteSession(
                node, message.type, deadline=now + self.answer_timeout + 2.0)
            return [Publish(node, ViewerFrame(self.node_id, peer.id, data))]
        except ProtocolError as exc:
            return [Send(peer, self._error(exc.code, exc.message))]

    def publish_failed(self, publish: Publish) -> list[Action]:
        """No node received ``publish`` (it is gone, or Redis is down)."""
        message = publish.message
        if not isinstance(message, ViewerFrame) or message.sender != self.node_id:
            return []
        viewer = self.local_viewers.get(message.ref)
        if viewer is None:
            return []
        try:
            frame = parse(message.data, Role.VIEWER)
        except ProtocolError:
            return []
        if frame.type not in ("offer", "pair"):
            return []
        self.remote.get(viewer, {}).pop((frame["device_id"], frame["session_id"]), None)
        return [Send(viewer, self._error(ErrorCode.UNAVAILABLE, "that camera is not online"))]

    def from_node(self, raw: str | bytes, now: float) -> list[Action]:
        """One message from another node. Refused ones are logged and counted; this
        never raises for what a node sends."""
        try:
            message = decode_node(raw)
        except BadNodeMessage as exc:
            return self._refuse("malformed", str(exc))
        if message.sender == self.node_id:
            return self._refuse("malformed", "a message in this node's own name")
        self.node_received[_KIND_OF[type(message)]] += 1
        if isinstance(message, ViewerFrame):
            return self._viewer_frame(message, now)
        if isinstance(message, ToViewer):
            return self._to_viewer(message)
        if isinstance(message, ViewerLeft):
            proxy = self.proxies.pop((message.sender, message.ref), None)
            if proxy is None:
                return []  # it had no sessions left here: nothing to do
            return self._outbound(Router.disconnected(self, proxy))
        return self._evict(message)

    def _viewer_frame(self, message: ViewerFrame, now: float) -> list[Action]:
        key = (message.sender, message.ref)
        proxy = self.proxies.get(key)
        if proxy is None:
            if len(self.proxies) >= MAX_REMOTE_VIEWERS:
                return self._refuse("too-many", f"{len(self.proxies)} remote viewers")
            proxy = RemoteViewer(Role.VIEWER, remote=f"node {message.sender}",
                                 connected_at=now, node=message.sender, ref=message.ref)
            self.proxies[key] = proxy
        return self.received(proxy, message.data, now)

    def _to_viewer(self, message: ToViewer) -> list[Action]:
        viewer = self.local_viewers.get(message.ref)
        sessions = self.remote.get(viewer, {}) if viewer is not None else {}
        mine = {key: s for key, s in sessions.items() if s.node == message.sender}
        if viewer is None or not mine:
            return self._refuse("foreign-viewer",
                                f"node {message.sender} has no session with viewer #{message.ref}")
        try:
            reply = parse(message.data, Role.SERVER)
        except ProtocolError as exc:
            return self._refuse("bad-payload", exc.message)
        if reply.type not in _TO_VIEWER_TYPES:
            return self._refuse("bad-payload", f"{reply.type} is not for a viewer")
        session_id = reply.get("session_id")
        if session_id is not None:
            keys = [key for key in mine if key[1] == session_id]
            if not keys:
                return self._refuse("foreign-session",
                                    f"node {message.sender} has no session {session_id!r}")
            session = mine[keys[0]]
            if reply.type == "answer":
                session.answered = True
            elif reply.type in ("bye", "paired", "error"):
                del sessions[keys[0]]
        elif reply.type != "error":
            return self._refuse("bad-payload", f"{reply.type} without a session_id")
        return [Send(viewer, encode(Role.SERVER, reply.type, **reply.fields))]

    def _evict(self, message: Evict) -> list[Action]:
        camera = self.cameras.get(message.device_id)
        if camera is None or self.holder(camera) != message.holder:
            return self._refuse("foreign-camera",
                                f"camera {message.device_id} is not on {message.holder}")
        names = sorted(self.server_names)
        statement = (register_statement(name, message.nonce, message.device_id)
                     for name in names)
        if not any(verify(message.device_key, s, message.signature) for s in statement):
            return self._refuse("bad-signature",
                                f"eviction of {message.device_id} without its registration")
        logger.warning("camera %s registered again on node %s; closing the older %r",
                       message.device_id, message.sender, camera)
        del self.cameras[message.device_id]
        return self._outbound(self._replace(camera, message.device_id))

    def _refuse(self, reason: str, detail: str) -> list[Action]:
        self.node_refused[reason] += 1
        logger.warning("refused a node message (%s): %s", reason, detail[:200])
        return []

    # -- Redis's view --------------------------------------------------------------------

    def presence(self) -> dict[str, str]:
        """Presence values of the cameras registered here (renewed by the adapter)."""
        return {device_id: self.presence_value(peer) for device_id, peer in self.cameras.items()}

    def lost_presence(self, device_id: str, value: str) -> list[Action]:
        """Redis holds a newer registration than the one registered here as ``value``
        (a presence value): the camera registered again elsewhere, and its eviction
        did not arrive (or had not yet)."""
        camera = self.cameras.get(device_id)
        if camera is None or self.presence_value(camera) != value:
            return []
        logger.warning("camera %s is registered on another node now; closing %r",
                       device_id, camera)
        del self.cameras[device_id]
        return self._outbound(self._replace(camera, device_id))

    def nodes_in_use(self) -> set[str]:
        """Nodes this node has sessions or viewers with."""
        nodes = {s.node for sessions in self.remote.values() for s in sessions.values()}
        return nodes | {node for node, _ref in self.proxies}

    def nodes_gone(self, nodes: set[str]) -> list[Action]:
        """``nodes`` died (their keys expired): end what depended on them."""
        actions: list[Action] = []
        for viewer, sessions in list(self.remote.items()):
            for key, session in list(sessions.items()):
                if session.node in nodes:
                    del sessions[key]
                    actions.append(Send(viewer, encode(
                        Role.SERVER, "bye", session_id=key[1],
                        reason="the camera's server went away")))
        for where, proxy in list(self.proxies.items()):
            if where[0] in nodes:
                del self.proxies[where]
                actions += Router.disconnected(self, proxy)
        return self._outbound(actions)

    def _outbound(self, actions: list[Action]) -> list[Action]:
        """Messages for viewers of other nodes become node messages."""
        out: list[Action] = []
        for action in actions:
            peer = getattr(action, "peer", None)
            if not isinstance(peer, RemoteViewer):
                out.append(action)
            elif isinstance(action, Send):
                out.append(Publish(peer.node, ToViewer(self.node_id, peer.ref, action.text)))
            elif isinstance(action, Close):
                self.proxies.pop((peer.node, peer.ref), None)
        return out

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "remote_viewers": len(self.proxies),
                "remote_sessions": sum(len(s) for s in self.remote.values())}

