"""``natcheck``: what NAT is between us and a STUN server (RFC 5780), over asyncio.

The plan and the classification are in :mod:`services.stun.discovery`; this
module owns the sockets, the retransmissions and the timeouts. Probes are lost
on real networks, and in the filtering tests a missing answer *is* the result,
so every probe is retransmitted RFC 8489 section 6.2.1 style (RTO doubling),
with the timers scaled down and passed in.

CLI wiring: ``peercam natcheck --stun HOST[:PORT] [--stun HOST2] --json`` →
``report = await natcheck_servers([...])``; print ``json.dumps(report.as_dict())``
or ``report.summary()``. One silent server proves nothing about this network (it
may be down, or the port wrong): :func:`natcheck_servers` says "no answer from
STUN server X" unless a second server stays silent too, which is what
"udp-blocked" then means. Also runnable alone, e.g. inside a network namespace:
``python -m services.stun.natcheck HOST:PORT --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import socket
import sys
from typing import Any, cast

from .allocation import classify_allocation
from .discovery import BehaviourDiscovery, NatReport
from .errors import StunError
from .message import Address, Message, MessageClass, Method, parse

logger = logging.getLogger(__name__)

DEFAULT_PORT = 3478
DEFAULT_RTO = 0.2
"""First retransmission timeout; RFC 8489 says 0.5 s or more on the Internet."""
DEFAULT_RETRIES = 2
"""Retransmissions after the first send: waits of 0.2, 0.4, 0.8 s (1.4 s per lost probe)."""
ALLOCATION_SAMPLES = 6
"""New flows (one socket each, one after the other) whose mappings show the
allocation pattern behind a symmetric NAT."""


class StunUnreachable(StunError, OSError):
    """The STUN server's name does not resolve, or there is no route to it."""


class NoAnswer(StunError, TimeoutError):
    """One STUN server did not answer: it may be down, or UDP may be blocked."""


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → (host, port)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError(f"bad port {port_text!r} in {text!r}")
    return host, int(port_text)


class _Prober(asyncio.DatagramProtocol):
    """One local UDP socket: matches responses to transactions, spots hairpin requests."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[bytes, asyncio.Future[tuple[Message, Address]]] = {}
        self.expected_requests: dict[bytes, asyncio.Future[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            message = parse(data)
        except ValueError as exc:
            logger.debug("ignoring malformed packet from %s: %s", addr, exc)
            return
        source = (str(addr[0]), int(addr[1]))
        if message.message_class == MessageClass.REQUEST:
            waiter = self.expected_requests.get(message.transaction_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        future = self.pending.get(message.transaction_id)
        if future is not None and not future.done():
            future.set_result((message, source))

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable: the retransmission timer decides, not one error.
        logger.debug("ICMP error: %s", exc)

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    async def transact(
        self, request: Message, destination: Address, rto: float, retries: int
    ) -> tuple[Message, Address] | tuple[None, None]:
        """Send ``request`` until answered, 1 + ``retries`` times with RTO doubling."""
        assert self.transport is not None
        future: asyncio.Future[tuple[Message, Address]] = asyncio.get_running_loop().create_future()
        self.pending[request.transaction_id] = future
        data = request.encode()
        try:
            for _ in range(1 + retries):
                self.transport.sendto(data, destination)
                done, _pending = await asyncio.wait({future}, timeout=rto)
                if done:
                    return future.result()
                rto *= 2
            return None, None
        finally:
            del self.pending[request.transaction_id]
            future.cancel()


async def _open(local_host: str) -> _Prober:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(_Prober, local_addr=(local_host, 0))
    return protocol


def _route_source(local_host: str, server: Address) -> str:
    """The source IP the kernel picks towards ``server`` (connect() on UDP sends nothing)."""
    if not ipaddress.ip_address(local_host).is_unspecified:
        return local_host
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        host: str = probe.getsockname()[0]
        return host


async def _hairpin(
    target: Address,
    receiver: _Prober,
    local_host: str,
    rto: float,
    retries: int,
    server: Address | None = None,
) -> bool:
    """RFC 5780 section 4.5: from a second socket, send to the first one's mapped
    address (``target``); hairpinning works if the first socket receives it.

    With ``server``, the second socket first learns its own mapped address there,
    and the first socket sends to it too, each round, as ICE checks do: behind a
    home router that filters on the remote address and port, itself behind a
    hairpinning carrier NAT, a hairpinned packet arrives from a public address the
    home router lets in only after its own host has sent there."""
    sender = await _open(local_host)
    loop = asyncio.get_running_loop()
    request = Message(Method.BINDING, MessageClass.REQUEST)
    arrived: asyncio.Future[None] = loop.create_future()
    receiver.expected_requests[request.transaction_id] = arrived
    back = Message(Method.BINDING, MessageClass.REQUEST)
    sender.expected_requests[back.transaction_id] = arrived
    sender_mapped: Address | None = None
    try:
        assert sender.transport is not None and receiver.transport is not None
        if server is not None:
            response, _source = await sender.transact(
                Message(Method.BINDING, MessageClass.REQUEST), server, rto, retries
            )
            value = response.attributes.get("XOR-MAPPED-ADDRESS") if response else None
            sender_mapped = value if isinstance(value, tuple) else None
        data, back_data = request.encode(), back.encode()
        for _ in range(1 + retries):
            if sender_mapped is not None:
                receiver.transport.sendto(back_data, sender_mapped)
            sender.transport.sendto(data, target)
            done, _pending = await asyncio.wait({arrived}, timeout=rto)
            if done:
                return True
            rto *= 2
        return False
    finally:
        del receiver.expected_requests[request.transaction_id]
        arrived.cancel()
        assert sender.transport is not None
        sender.transport.close()


async def _measure_allocation(
    report: NatReport, destination: Address, local_host: str, samples: int, rto: float,
    retries: int,
) -> NatReport:
    """Consecutive new flows to ``destination``, one socket each, all kept open until
    the end so that no local port is reused; their mapped ports, classified."""
    probers: list[_Prober] = []
    mapped: list[int] = []
    local: list[int] = []
    try:
        for _ in range(samples):
            prober = await _open(local_host)
            probers.append(prober)
            response, _source = await prober.transact(
                Message(Method.BINDING, MessageClass.REQUEST), destination, rto, retries
            )
            address = response.attributes.get("XOR-MAPPED-ADDRESS") if response else None
            if not isinstance(address, tuple):
                break  # a lost flow would read as a gap: stop at the first silence
            mapped.append(int(address[1]))
            local.append(prober.local_port)
    finally:
        for prober in probers:
            if prober.transport is not None:
                prober.transport.close()
    found = classify_allocation(mapped, local)
    logger.debug("allocation %s: mapped ports %s", found.pattern, mapped)
    return dataclasses.replace(report, allocation=found.pattern, mapped_ports=tuple(mapped),
                               allocation_step=found.step)


async def natcheck(
    server: Address,
    *,
    local_host: str = "0.0.0.0",
    timeout: float = DEFAULT_RTO,
    retries: int = DEFAULT_RETRIES,
    hairpin: bool = True,
    samples: int = ALLOCATION_SAMPLES,
) -> NatReport:
    """Run RFC 5780 mapping, filtering and hairpinning tests against ``server``;
    behind a NAT whose mapping depends on the destination, also map ``samples``
    new flows one after the other and classify the port allocation.

    ``timeout`` is the first retransmission timeout of each probe, doubled on
    every one of the ``retries`` retransmissions. A server without RFC 5780
    support (no OTHER-ADDRESS) still yields the mapped address and "open" or
    None for ``nat_type``.
    """
    loop = asyncio.get_running_loop()
    host, port = server
    if ":" in host and local_host == "0.0.0.0":
        local_host = "::"
    family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StunUnreachable(f"STUN server {host!r}: cannot resolve ({reason})") from None
    if not infos:
        raise StunUnreachable(f"no {family.name} address for STUN server {host!r}")
    destination: Address = (str(infos[0][4][0]), int(infos[0][4][1]))

    probers = {"mapping": await _open(local_host)}
    try:
        probers["filtering"] = await _open(local_host)
        try:
            via = _route_source(local_host, destination)
        except OSError as exc:
            raise StunUnreachable(
                f"STUN server {host}:{port}: no route ({exc.strerror or exc})"
            ) from None
        local = (via, probers["mapping"].local_port)
        plan = BehaviourDiscovery(destination, local)
        while (probe := plan.next_probe()) is not None:
            response, source = await probers[probe.socket].transact(
                probe.request(), probe.destination, timeout, retries
            )
            plan.record(probe, response, source)
        target = plan.hairpin_target
        if hairpin and target is not None:
            plan.record_hairpin(
                await _hairpin(target, probers["mapping"], local_host, timeout, retries,
                               destination)
            )
        report = plan.report()
        if samples >= 2 and report.mapping not in (None, "endpoint-independent"):
            report = await _measure_allocation(report, destination, local_host, samples,
                                               timeout, retries)
        return report
    finally:
        for prober in probers.values():
            if prober.transport is not None:
                prober.transport.close()


async def natcheck_servers(
    servers: list[Address],
    *,
    local_host: str = "0.0.0.0",
    timeout: float = DEFAULT_RTO,
    retries: int = DEFAULT_RETRIES,
) -> NatReport:
    """:func:`natcheck` against the first server that answers.

    Raises :class:`NoAnswer` if the only server given stays silent: that is a
    server down or a wrong port as often as a network blocking UDP. With two or
    more servers, all silent, the report says "udp-blocked".
    """
    if not servers:
        raise ValueError("natcheck needs at least one STUN server")
    report: NatReport | None = None
    for server in servers:
        report = await natcheck(server, local_host=local_host, timeout=timeout, retries=retries)
        if report.nat_type != "udp-blocked":
            return report
    assert report is not None
    if len(servers) == 1:
        host, port = servers[0]
        raise NoAnswer(
            f"no answer from STUN server {host}:{port} (is it running, on that port? "
            f"name a second server with another --stun to tell whether UDP is blocked here)"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m services.stun.natcheck HOST[:PORT] [--json]``."""
    parser = argparse.ArgumentParser(description="RFC 5780 NAT behaviour discovery")
    parser.add_argument("server", help="STUN server HOST[:PORT] (RFC 5780 capable)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--local", default="0.0.0.0", help="local address to bind")
    parser.add_argument("--timeout", type=float, default=DEFAULT_RTO, help="first RTO, s")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        server = parse_hostport(args.server)
    except ValueError as exc:
        parser.error(str(exc))
    report = asyncio.run(
        natcheck(server, local_host=args.local, timeout=args.timeout, retries=args.retries)
    )
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.summary())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
