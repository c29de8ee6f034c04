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
* **simultaneous open** (``tcptype so``, server reflexive): behind a NAT neither
  side can be connected to, but a NAT that keeps a flow's port for every
  destination (endpoint-independent mapping: most home routers) lets in the
  other side's SYN once its own host's SYN to that address went out. Each side
  binds one port, learns what its NAT maps it to with a STUN Binding over TCP
  from that port (``so_candidates``), and offers that address; a check of a pair
  of two such candidates connects from the bound port to the peer's mapped
  address while the peer does the same the other way (both agents check their
  pairs), and the two SYNs cross: TCP's simultaneous open (RFC 793 section 3.4).
  Attempts repeat for at most ``SO_CONNECT_FOR`` s per check, one SYN every
  ``SO_RETRY`` s at most.

Framing is RFC 4571's (a 16-bit length before each STUN, DTLS or SRTP packet).
Media over TCP waits for nothing it lost: a frame the kernel cannot take now
(``SEND_BUFFER_LIMIT`` queued) is dropped as a congested UDP link would, so a
slow path costs pictures, not seconds of delay (and a peer that never reads
cannot make the camera queue answers for it).

Each protocol object stands where aioice puts a ``StunProtocol``: it has a
``local_candidate``, ``request``, ``send_stun``, ``send_data`` and ``close``, and
reports to its ``Connection`` what arrives, keyed by the peer's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
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
"""Bytes queued in user space for one connection beyond which what we send is
dropped (media of a slow path; answers to a peer that does not read)."""
TYPE_PREFERENCE = 90
"""Host candidates over TCP rank below every UDP candidate but the relayed one
(host 126, peer reflexive 110, server reflexive 100, relayed 0): UDP first, a
direct TCP path before any relay. libwebrtc uses the same value."""
REFLEXIVE_TYPE_PREFERENCE = 80
"""A server-reflexive candidate over TCP (simultaneous open): below a host one."""
DIRECTION_PREFERENCE = {"active": 6, "passive": 4, "so": 6}
"""RFC 6544 section 4.2: the direction part of the local preference (host active and
passive; server reflexive so)."""
SO_CONNECT_FOR = 10.0
"""Seconds one check of a simultaneous-open pair keeps trying to connect."""
SO_RETRY = 1.0
"""Seconds between two connection attempts of one simultaneous-open check."""
STUN_TIMEOUT = 2.0
"""Seconds to learn a simultaneous-open candidate's mapped address (STUN over TCP)."""
SO_GATHER_GRACE = 0.2
"""Seconds gathering waits for that, beyond the UDP candidates: a STUN server whose
TCP port does not answer must not hold up every session's offer or answer."""


def tcp_priority(component: int, tcptype: str, address: str, reflexive: bool = False) -> int:
    """RFC 6544 section 4.2: type preference, then direction, then IPv6 over IPv4."""
    other = 8191 if ipaddress.ip_address(address).version == 6 else 4095
    local = (DIRECTION_PREFERENCE[tcptype] << 13) | other
    kind = REFLEXIVE_TYPE_PREFERENCE if reflexive else TYPE_PREFERENCE
    return (kind << 24) | (local << 8) | (256 - component)


PAIRS_WITH = {"active": "passive", "so": "so"}
"""RFC 6544 section 6.2: which remote tcptype a local one checks. A local passive
candidate pairs with nothing: the checks of its pairs come in over the
connections the peer opens."""


class TcpCandidate(Candidate):
    """A local TCP candidate, paired by its tcptype (``PAIRS_WITH``)."""

    def can_pair_with(self, other: Candidate) -> bool:
        wanted = PAIRS_WITH.get(str(self.tcptype))
        return (wanted is not None and other.transport.lower() == "tcp"
                and other.tcptype == wanted and self.component == other.component
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

    def send(self, frame: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing() or len(frame) > MAX_FRAME:
            return False
        if transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            # Congested (or a peer that does not read): drop, as a full UDP queue would.
            return False
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
            if not stream.send(bytes(request)):
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
            stream.send(bytes(message))

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        stream = self._streams.get((addr[0], addr[1]))
        if stream is not None:
            stream.send(data)

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


class _ConnectingTcp(TcpProtocol):
    """A candidate whose checks open their connection: one connection attempt per
    peer address at a time, shared by the checks that wait for it."""

    def __init__(self, receiver: Connection, candidate: TcpCandidate) -> None:
        super().__init__(receiver, candidate)
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
        raise NotImplementedError

    async def close(self) -> None:
        for connecting in list(self._connecting.values()):
            connecting.cancel()
        await super().close()


class ActiveTcp(_ConnectingTcp):
    """A ``tcptype active`` candidate: connects to the peer's passive candidates."""

    def __init__(self, receiver: Connection, host: str, component: int) -> None:
        super().__init__(receiver, local_candidate(component, "active", host, ACTIVE_PORT))

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
        server = await loop.create_server(lambda: _Stream(protocol), host=host, port=0,
                                          backlog=MAX_CONNECTIONS)
        protocol.server = server
        protocol.local_candidate.port = server.sockets[0].getsockname()[1]
        return protocol

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


def _reusable_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that others bound there too may share: the
    STUN query and each connection attempt of one simultaneous-open candidate."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _resolved(server: tuple[str, int], family: int) -> tuple[str, int]:
    """The server's address in ``family``: as it is when it is one already (a lookup
    goes through a thread, which costs a busy machine milliseconds per session)."""
    try:
        ipaddress.ip_address(server[0])
    except ValueError:
        found = await asyncio.get_running_loop().getaddrinfo(
            server[0], server[1], family=family, type=socket.SOCK_STREAM)
        return (str(found[0][4][0]), int(found[0][4][1]))
    return server


async def mapped_address(host: str, server: tuple[str, int]) -> tuple[int, tuple[str, int]]:
    """Bind a port on ``host``, ask ``server`` over TCP what address it sees (a STUN
    Binding, RFC 8489 section 6.2.2); the bound port and that address."""
    loop = asyncio.get_running_loop()
    sock = _reusable_socket(host, 0)
    port = sock.getsockname()[1]
    try:
        async with asyncio.timeout(STUN_TIMEOUT):
            await loop.sock_connect(sock, await _resolved(server, sock.family))
            request = stun.Message(message_method=stun.Method.BINDING,
                                   message_class=stun.Class.REQUEST)
            await loop.sock_sendall(sock, bytes(request))
            data = b""
            while len(data) < 20 or len(data) < 20 + struct.unpack_from("!H", data, 2)[0]:
                chunk = await loop.sock_recv(sock, 2048)
                if not chunk:
                    raise ConnectionError("the STUN server closed the connection")
                data += chunk
        response = stun.parse_message(data[:20 + struct.unpack_from("!H", data, 2)[0]])
        if response.transaction_id != request.transaction_id:
            raise ValueError("an answer to another request")
        mapped = response.attributes["XOR-MAPPED-ADDRESS"]
        return port, (str(mapped[0]), int(mapped[1]))
    finally:
        sock.close()


class SimultaneousTcp(_ConnectingTcp):
    """A ``tcptype so`` server-reflexive candidate (see the module doc)."""

    def __init__(self, receiver: Connection, host: str, port: int,
                 mapped: tuple[str, int], component: int) -> None:
        candidate = TcpCandidate(
            foundation=candidate_foundation("srflx", "tcp", host), component=component,
            transport="tcp", priority=tcp_priority(component, "so", host, reflexive=True),
            host=mapped[0], port=mapped[1], type="srflx", related_address=host,
            related_port=port, tcptype="so")
        super().__init__(receiver, candidate)
        self._base = (host, port)

    async def _connect(self, addr: tuple[str, int]) -> _Stream:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SO_CONNECT_FOR
        attempts = 0
        while not self._closed:
            attempts += 1
            started = loop.time()
            try:
                sock = _reusable_socket(*self._base)
            except OSError as exc:
                logger.info("ICE-TCP: cannot bind %s:%d again: %s", *self._base, exc)
                break
            try:
                async with asyncio.timeout(max(0.05, deadline - loop.time())):
                    await loop.sock_connect(sock, addr)
                _transport, stream = await loop.create_connection(lambda: _Stream(self),
                                                                  sock=sock)
                logger.info("ICE-TCP: simultaneous open with %s:%d after %d attempt(s)",
                            *addr, attempts)
                return stream
            except (OSError, TimeoutError) as exc:
                sock.close()
                logger.debug("ICE-TCP: no simultaneous open with %s:%d yet: %s", *addr, exc)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(max(0.0, started + SO_RETRY - loop.time()))
        raise stun.TransactionTimeout()


async def so_candidates(receiver: Connection, component: int, addresses: list[str],
                        server: tuple[str, int]) -> list[TcpProtocol]:
    """A simultaneous-open candidate per IPv4 address, where ``server`` answers a STUN
    Binding over TCP in time (IPv6 has no NAT to open)."""
    async def one(address: str) -> TcpProtocol | None:
        try:
            port, mapped = await mapped_address(address, server)
        except (OSError, TimeoutError, ValueError, KeyError) as exc:
            logger.info("ICE-TCP: no mapped address for %s from %s:%d over TCP: %s",
                        address, *server, exc)
            return None
        return SimultaneousTcp(receiver, address, port, mapped, component)

    found = await asyncio.gather(*(one(a) for a in addresses if ":" not in a))
    return [protocol for protocol in found if protocol is not None]


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
