"""ICE over TCP (RFC 6544) for aioice 0.13: host candidates of tcptype active and passive.

aioice gathers and checks UDP candidates only. Where a network lets no UDP out (many
offices, guest and hotel networks: only TCP to the web's ports), the only path it
finds is TURN over TCP, through the relay. When the other end listens on an address
that can be reached (a camera on a public address, an IPv6 one, a port forward), a
direct TCP connection carries the same media without the relay. Browsers offer
``tcptype active`` candidates (they connect, they do not listen); peercam's own
peers gather both:

* **passive**: a listening socket on each host address, offered with its port. An
  accepted connection carries ICE checks and, once the controlling agent selects
  its pair, the media. Bounded: at most ``MAX_CONNECTIONS`` accepted connections
  at a time per listener; one that has not carried a check this session's
  password authenticates within ``FIRST_CHECK_WITHIN`` s is closed, and until
  one has, whatever else it carries is dropped, not handed to DTLS.
* **active**: offered with port 9 (RFC 6544: it connects, it is never connected
  to). A check of a pair with the peer's passive candidate connects first
  (``CONNECT_TIMEOUT``), then sends the request once (TCP retransmits itself).

Framing is RFC 4571's (a 16-bit length before each STUN, DTLS or SRTP packet).
Media over TCP waits for nothing it lost: a frame the kernel cannot take now
(``SEND_BUFFER_LIMIT`` queued) is dropped as a congested UDP link would, so a
slow path costs pictures, not seconds of delay.

Each protocol object stands where aioice puts a ``StunProtocol``: it has a
``local_candidate``, ``request``, ``send_stun``, ``send_data`` and ``close``, and
reports to its ``Connection`` what arrives, keyed by the peer's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from typing import Any

from aioice import Candidate, stun
from aioice.candidate import candidate_foundation
from aioice.ice import Connection

logger = logging.getLogger("camera.ice")

ACTIVE_PORT = 9
"""The port an active candidate is offered with (RFC 6544 section 4.5: the discard port)."""
MAX_FRAME = 0xFFFF
"""RFC 4571's 16-bit length: the largest packet a frame carries."""
MAX_CONNECTIONS = 8
"""Accepted connections a passive candidate keeps at a time (others are refused)."""
FIRST_CHECK_WITHIN = 10.0
"""Seconds an accepted connection has to carry an authenticated check, or it is closed."""
CONNECT_TIMEOUT = 5.0
"""Seconds an active check waits for its TCP connection."""
CHECK_TIMEOUT = 5.0
"""Seconds a check sent over TCP waits for its answer (it is sent once)."""
SEND_BUFFER_LIMIT = 256 * 1024
"""Bytes queued in user space for one connection beyond which media is dropped."""
TYPE_PREFERENCE = 90
"""Host candidates over TCP rank below every UDP candidate but the relayed one
(host 126, peer reflexive 110, server reflexive 100, relayed 0): UDP first, a
direct TCP path before any relay. libwebrtc uses the same value."""
DIRECTION_PREFERENCE = {"active": 6, "passive": 4}
"""RFC 6544 section 4.2: the direction part of the local preference."""


def tcp_priority(component: int, tcptype: str, address: str) -> int:
    """RFC 6544 section 4.2: type preference, then direction, then IPv6 over IPv4."""
    other = 8191 if ipaddress.ip_address(address).version == 6 else 4095
    local = (DIRECTION_PREFERENCE[tcptype] << 13) | other
    return (TYPE_PREFERENCE << 24) | (local << 8) | (256 - component)


class TcpCandidate(Candidate):
    """A local TCP candidate: only an active one pairs, and only with a passive one
    (RFC 6544 section 6.2: pairs with a local passive candidate are pruned; the
    checks of such a pair come in over the connections the peer opens)."""

    def can_pair_with(self, other: Candidate) -> bool:
        return (self.tcptype == "active" and other.transport.lower() == "tcp"
                and other.tcptype == "passive" and self.component == other.component
                and ipaddress.ip_address(self.host).version
                == ipaddress.ip_address(other._network_host).version)


def local_candidate(component: int, tcptype: str, host: str, port: int) -> TcpCandidate:
    return TcpCandidate(
        foundation=candidate_foundation("host", "tcp", host), component=component,
        transport="tcp", priority=tcp_priority(component, tcptype, host), host=host,
        port=port, type="host", tcptype=tcptype)


def is_tcp(protocol: Any) -> bool:
    """One of this module's protocol objects (a local TCP candidate's)."""
    return isinstance(protocol, TcpProtocol)


class _Stream(asyncio.Protocol):
    """One TCP connection: RFC 4571 frames in and out."""

    def __init__(self, owner: TcpProtocol) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.authenticated = False
        self._buffer = bytearray()
        self._expiry: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        name = transport.get_extra_info("peername")
        self.peer = (name[0], name[1])
        self.owner._stream_made(self)

    def expire_unless_checked(self, after: float) -> None:
        self._expiry = asyncio.get_running_loop().call_later(after, self._expire)

    def _expire(self) -> None:
        if not self.authenticated and self.transport is not None:
            logger.info("ICE-TCP: closing %s:%d: no authenticated check within %.0f s",
                        *self.peer, FIRST_CHECK_WITHIN)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = struct.unpack_from("!H", self._buffer)
            if len(self._buffer) < 2 + length:
                return
            frame = bytes(self._buffer[2:2 + length])
            del self._buffer[:2 + length]
            if length:
                self.owner._frame_received(frame, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self.transport = None
        self.owner._stream_lost(self)

    def send(self, frame: bytes, media: bool) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing() or len(frame) > MAX_FRAME:
            return False
        if media and transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            return False  # congested: drop, as a full UDP queue would
        transport.write(struct.pack("!H", len(frame)) + frame)
        return True


class TcpProtocol:
    """What aioice keeps per local candidate, for one TCP candidate (see module doc)."""

    def __init__(self, receiver: Connection, candidate: TcpCandidate) -> None:
        self.receiver = receiver
        self.local_candidate: Candidate = candidate
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._pending: dict[bytes, tuple[asyncio.Future[tuple[stun.Message, tuple[str, int]]],
                                          bytes | None]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"tcp-{self.local_candidate.tcptype}({self.local_candidate.host})"

    # -- what aioice calls ------------------------------------------------------------

    async def request(
        self, request: stun.Message, addr: tuple[str, int],
        integrity_key: bytes | None = None, retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        """One STUN transaction over the connection to ``addr`` (sent once)."""
        del retransmissions  # TCP retransmits; RFC 6544 section 7.1: no STUN retransmits
        if integrity_key is not None:
            request.add_message_integrity(integrity_key)
        stream = await self._stream_to(addr)
        future: asyncio.Future[tuple[stun.Message, tuple[str, int]]] = (
            asyncio.get_running_loop().create_future())
        self._pending[request.transaction_id] = (future, integrity_key)
        try:
            if not stream.send(bytes(request), media=False):
                raise stun.TransactionTimeout()
            async with asyncio.timeout(CHECK_TIMEOUT):
                return await future
        except TimeoutError:
            raise stun.TransactionTimeout() from None
        finally:
            self._pending.pop(request.transaction_id, None)

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        stream = self._streams.get((addr[0], addr[1]))
        if stream is not None:
            stream.send(bytes(message), media=False)

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        stream = self._streams.get((addr[0], addr[1]))
        if stream is not None:
            stream.send(data, media=True)

    async def close(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            if stream.transport is not None:
                stream.transport.close()
        self._streams.clear()
        for future, _key in self._pending.values():
            if not future.done():
                future.set_exception(stun.TransactionTimeout())

    # -- streams ------------------------------------------------------------------------

    async def _stream_to(self, addr: tuple[str, int]) -> _Stream:
        stream = self._streams.get((addr[0], addr[1]))
        if stream is None:
            raise stun.TransactionTimeout()  # a passive candidate never connects
        return stream

    def _stream_made(self, stream: _Stream) -> None:
        if self._closed:
            assert stream.transport is not None
            stream.transport.close()
            return
        self._streams[stream.peer] = stream

    def _stream_lost(self, stream: _Stream) -> None:
        if self._streams.get(stream.peer) is stream:
            del self._streams[stream.peer]
            for pair in self.receiver._nominated.values():
                if pair.protocol is self and pair.remote_addr == stream.peer:  # type: ignore[comparison-overlap]
                    self.receiver.protocol_lost(self)  # type: ignore[arg-type]
                    return

    def _frame_received(self, frame: bytes, stream: _Stream) -> None:
        addr = stream.peer
        try:
            message = stun.parse_message(frame)
        except ValueError:
            # Media (DTLS, SRTP) only from a connection that carried a check signed
            # with this session's password (the peer's DTLS may come before its
            # nomination reaches us).
            if stream.authenticated:
                self.receiver.data_received(frame, self.local_candidate.component)
            return
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            waiting = self._pending.get(message.transaction_id)
            if waiting is None:
                return
            future, key = waiting
            # An answer not signed with the request's key is ignored (RFC 8489 9.2.5).
            if key is not None and not message.check_message_integrity(key):
                return
            if not future.done():
                if message.message_class == stun.Class.RESPONSE:
                    stream.authenticated = True
                    future.set_result((message, addr))
                else:
                    future.set_exception(stun.TransactionFailed(message))
        elif message.message_class == stun.Class.REQUEST:
            if (not stream.authenticated and "MESSAGE-INTEGRITY" in message.attributes
                    and message.check_message_integrity(
                        self.receiver.local_password.encode("utf8"))):
                stream.authenticated = True
            self.receiver.request_received(message, addr, self)  # type: ignore[arg-type]


class ActiveTcp(TcpProtocol):
    """A ``tcptype active`` candidate: connects to the peer's passive candidates."""

    def __init__(self, receiver: Connection, host: str, component: int) -> None:
        super().__init__(receiver, local_candidate(component, "active", host, ACTIVE_PORT))
        self._connecting: dict[tuple[str, int], asyncio.Future[_Stream]] = {}

    async def _stream_to(self, addr: tuple[str, int]) -> _Stream:
        key = (addr[0], addr[1])
        stream = self._streams.get(key)
        if stream is not None and stream.transport is not None:
            return stream
        if self._closed:
            raise stun.TransactionTimeout()
        connecting = self._connecting.get(key)
        if connecting is None:
            connecting = asyncio.ensure_future(self._connect(key))
            self._connecting[key] = connecting
            connecting.add_done_callback(lambda _f: self._connecting.pop(key, None))
        return await asyncio.shield(connecting)

    async def _connect(self, addr: tuple[str, int]) -> _Stream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _transport, stream = await loop.create_connection(
                    lambda: _Stream(self), host=addr[0], port=addr[1],
                    local_addr=(self.local_candidate.host, 0))
        except (OSError, TimeoutError) as exc:
            logger.debug("ICE-TCP: no connection to %s:%d: %s", *addr, exc)
            raise stun.TransactionTimeout() from None
        return stream


class PassiveTcp(TcpProtocol):
    """A ``tcptype passive`` candidate: a listening socket; checks arrive on the
    connections the peer opens, and are answered there."""

    def __init__(self, receiver: Connection, candidate: TcpCandidate,
                 server: asyncio.Server | None = None) -> None:
        super().__init__(receiver, candidate)
        self.server = server

    @classmethod
    async def listen(cls, receiver: Connection, host: str, component: int) -> PassiveTcp:
        loop = asyncio.get_running_loop()
        protocol = cls(receiver, local_candidate(component, "passive", host, 0))
        server = await loop.create_server(lambda: protocol._accept(), host=host, port=0,
                                          backlog=MAX_CONNECTIONS)
        protocol.server = server
        protocol.local_candidate.port = server.sockets[0].getsockname()[1]
        return protocol

    def _accept(self) -> _Stream:
        return _Stream(self)

    def _stream_made(self, stream: _Stream) -> None:
        if self._closed or len(self._streams) >= MAX_CONNECTIONS:
            assert stream.transport is not None
            logger.info("ICE-TCP: refusing a connection from %s:%d (%d open)", *stream.peer,
                        len(self._streams))
            stream.transport.close()
            return
        self._streams[stream.peer] = stream
        stream.expire_unless_checked(FIRST_CHECK_WITHIN)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await super().close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)


async def gather(receiver: Connection, component: int, addresses: list[str],
                 passive: bool = True) -> list[TcpProtocol]:
    """The TCP host candidates' protocols for these addresses: active on each, and
    passive where a listening socket could be opened (and ``passive`` is on)."""
    protocols: list[TcpProtocol] = []
    for address in addresses:
        protocols.append(ActiveTcp(receiver, address, component))
        if not passive:
            continue
        try:
            protocols.append(await PassiveTcp.listen(receiver, address, component))
        except OSError as exc:
            logger.info("ICE-TCP: could not listen on %s: %s", address, exc)
    return protocols
