"""asyncio adapter for the STUN Binding server: sockets around :class:`BindingResponder`.

UDP and TCP (RFC 8489 section 6.2.2: on a stream, each message is framed by its
own length field) on one address, or on two addresses times two ports for
RFC 5780 behaviour discovery.

CLI wiring (``camera/cli/servers.py`` and ``camera/cli/network.py``):

- ``peercam stun --listen IP[,IP2] --port 3478 [--alt-port 3479]`` →
  ``server = await run_stun_server(ip, ip2_or_None, port, alt_port)``, then wait
  for a signal and ``await server.close()``.
- ``peercam natcheck --stun HOST[:PORT] --json`` →
  ``report = await services.stun.natcheck.natcheck(parse_hostport(text))``, then
  ``json.dumps(report.as_dict())`` or ``report.summary()``.

Also runnable alone: ``python -m services.stun.server --listen 127.0.0.1,127.0.0.2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import logging
import signal
import socket
import struct
from typing import Any

from .errors import BadServerConfig
from .message import HEADER_LENGTH, MAGIC_COOKIE
from .responder import BindingResponder, ResponderConfig, SocketIndex, Transport

logger = logging.getLogger(__name__)

DEFAULT_PORT = 3478  # RFC 8489 section 18.8
TCP_IDLE_TIMEOUT = 30.0
MAX_TCP_CONNECTIONS = 256
# Picking free ports for port 0 on two addresses can race with other programs.
_BIND_ATTEMPTS = 10


class _UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, index: SocketIndex) -> None:
        self.server = server
        self.index = index

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.server._received(data, (addr[0], addr[1]), self.index, "udp", None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished client: nothing to do.
        logger.debug("UDP socket %s: %s", self.index, exc)


class StunServer:
    """A started STUN server; build it with :func:`run_stun_server`."""

    def __init__(
        self,
        config: ResponderConfig | None = None,
        *,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        self.config = config or ResponderConfig()
        # Replaced by start() once the sockets (and their ports) exist; packets
        # arriving while the sockets are being bound are dropped.
        self.responder = BindingResponder({(0, 0): ("0.0.0.0", 0)}, self.config)
        self._started = False
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self._udp: dict[SocketIndex, asyncio.DatagramTransport] = {}
        self._tcp: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def addresses(self) -> dict[SocketIndex, tuple[str, int]]:
        """The transport address of each socket, ``(ip_index, port_index)`` → (host, port)."""
        return dict(self.responder.addresses)

    def _received(
        self,
        data: bytes,
        source: tuple[str, int],
        index: SocketIndex,
        transport: Transport,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        if not self._started:
            return
        reply = self.responder.handle(
            data, source, index, asyncio.get_running_loop().time(), transport
        )
        if reply is None:
            return
        if writer is not None:
            writer.write(reply.data)
            return
        out = self._udp.get(reply.via)
        if out is not None and not out.is_closing():
            out.sendto(reply.data, source)

    async def _serve_tcp(
        self, index: SocketIndex, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._handlers) >= self.max_tcp_connections:
            writer.close()
            return
        self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        source = (peer[0], peer[1])
        try:
            while True:
                # RFC 8489 section 6.2.2: messages are framed by the header's
                # length field; a malformed one leaves no way to resync.
                head = await asyncio.wait_for(
                    reader.readexactly(HEADER_LENGTH), self.tcp_idle_timeout
                )
                message_type, length, cookie = struct.unpack("!HHI", head[:8])
                if message_type & 0xC000 or cookie != MAGIC_COOKIE:
                    self.responder.stats.malformed += 1
                    logger.debug("TCP %s: not STUN framing, closing", source)
                    break
                body = await asyncio.wait_for(reader.readexactly(length), self.tcp_idle_timeout)
                self._received(head + body, source, index, "tcp", writer)
                # A client that never reads must not pin the connection.
                await asyncio.wait_for(writer.drain(), self.tcp_idle_timeout)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
            logger.debug("TCP %s closed: %r", source, exc)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _bind(
        self, ips: list[str], ports: list[int], tcp: bool
    ) -> dict[SocketIndex, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        addresses: dict[SocketIndex, tuple[str, int]] = {}
        chosen = list(ports)
        for i, ip in enumerate(ips):
            for j in range(len(ports)):
                udp, _ = await loop.create_datagram_endpoint(
                    functools.partial(_UdpEndpoint, self, (i, j)),
                    local_addr=(ip, chosen[j]),
                )
                self._udp[(i, j)] = udp
                bound = udp.get_extra_info("sockname")
                # Port 0 on the primary picks the port every address then uses.
                chosen[j] = bound[1]
                addresses[(i, j)] = (ip, bound[1])
                if tcp:
                    server = await asyncio.start_server(
                        functools.partial(self._serve_tcp, (i, j)),
                        host=ip,
                        port=chosen[j],
                        family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    )
                    self._tcp.append(server)
        return addresses

    async def start(self, ips: list[str], ports: list[int], tcp: bool = True) -> None:
        """Bind a socket per (ip, port) pair: 1 address x 1 port, or 2 x 2 (RFC 5780)."""
        attempts = _BIND_ATTEMPTS if 0 in ports else 1
        for attempt in range(attempts):
            try:
                addresses = await self._bind(ips, ports, tcp)
            except OSError as exc:
                await self._close_sockets()
                if attempt == attempts - 1:
                    raise
                logger.debug("ports %s taken on another address (%s), retrying", ports, exc)
            else:
                self.responder = BindingResponder(addresses, self.config)
                self._started = True
                logger.info("STUN server listening on %s", sorted(set(addresses.values())))
                return

    async def _close_sockets(self) -> None:
        for udp in self._udp.values():
            udp.close()
        self._udp.clear()
        for server in self._tcp:
            server.close()
        for server in self._tcp:
            await server.wait_closed()
        self._tcp.clear()

    async def close(self) -> None:
        """Stop listening and end every TCP connection. Safe to call twice."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            # Stop accepting first, then end the connections, then wait for the
            # listeners (Python >= 3.12 waits there for connections to finish).
            for server in self._tcp:
                server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self._close_sockets()
        finally:
            self._closed.set()
        logger.info("STUN server closed: %s", self.responder.stats)


async def run_stun_server(
    primary: str,
    alternate: str | None,
    port: int = DEFAULT_PORT,
    alt_port: int = DEFAULT_PORT + 1,
    *,
    tcp: bool = True,
    config: ResponderConfig | None = None,
) -> StunServer:
    """Start a STUN server on ``primary:port`` (UDP, and TCP unless ``tcp=False``).

    With ``alternate``, also listen on ``primary:alt_port``, ``alternate:port`` and
    ``alternate:alt_port`` and do RFC 5780 behaviour discovery. Port 0 picks free
    ports (the same numbers on both addresses), for tests.
    """
    if alternate is not None:
        if alternate == primary:
            raise BadServerConfig(f"alternate address {alternate} must differ from the primary")
        if port == alt_port and port != 0:
            raise BadServerConfig(f"alternate port {alt_port} must differ from the port {port}")
        for ip in (primary, alternate):
            # RFC 5780 section 6.1: OTHER-ADDRESS and RESPONSE-ORIGIN name real addresses.
            if ipaddress.ip_address(ip).is_unspecified:
                raise BadServerConfig(f"RFC 5780 needs two concrete addresses, not {ip}")
    ips = [primary] if alternate is None else [primary, alternate]
    ports = [port] if alternate is None else [port, alt_port]
    server = StunServer(config)
    await server.start(ips, ports, tcp)
    return server


def main(argv: list[str] | None = None) -> None:
    """``python -m services.stun.server --listen IP[,IP2] --port 3478``: run until ^C."""
    parser = argparse.ArgumentParser(description="STUN Binding server (RFC 8489, RFC 5780)")
    parser.add_argument("--listen", default="0.0.0.0", help="IP or IP,ALTERNATE_IP")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--alt-port", type=int, default=DEFAULT_PORT + 1)
    parser.add_argument("--no-tcp", action="store_true")
    args = parser.parse_args(argv)
    ips = [part.strip() for part in args.listen.split(",") if part.strip()]
    if not 1 <= len(ips) <= 2:
        parser.error(f"--listen takes one or two addresses, got {args.listen!r}")
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = await run_stun_server(
            ips[0],
            ips[1] if len(ips) == 2 else None,
            args.port,
            args.alt_port,
            tcp=not args.no_tcp,
        )
        try:
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
