"""Does UDP get out of this network? Decided in one round trip over TCP where it does not.

aiortc uses one TURN URL per peer connection, so a viewer must know before it
gathers whether outbound UDP is blocked (then only TURN over TCP/TLS gets a
path: :func:`camera.webrtc.order_turn`). The plain test, a STUN Binding over
UDP sent twice and given up after 0.75 s, put those 0.75 s into every session
from a network that blocks UDP: three quarters of the first frame through the
NAT lab's UDP-blocked site.

Here the TURN server's TCP port is asked as well, once the UDP test has had a
head start (``tcp_after``) and a second request is out: a Binding answered over
TCP while neither UDP request was answered is evidence that UDP is dropped,
not slow, as the two go to the same deployment. Where UDP works the STUN answer
normally comes within the head start and nothing is sent over TCP; on a slow
path the TCP connection and its Binding take at least two round trips, so a
late UDP answer still wins. Without a TCP TURN URL, or if TCP does not answer
either, the old rule stands: no UDP answer by ``give_up`` means blocked.

:func:`decide` is the rule (events in, a verdict out); :func:`udp_blocked` is its
thin asyncio adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from camera.webrtc import stun_server_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTiming:
    """When the UDP requests go out and when the test stops waiting, in seconds."""

    sends: tuple[float, ...] = (0.0, 0.1, 0.3)
    """Offsets of the UDP Binding requests (a lost request is repeated)."""
    tcp_after: float = 0.1
    """No UDP answer by then: ask the TURN server over TCP too (not before the
    second UDP request, so one lost request cannot make the verdict)."""
    give_up: float = 0.75
    """No UDP answer by then: blocked, whatever TCP said (the old test's bound)."""

    def __post_init__(self) -> None:
        if not self.sends or self.sends[0] != 0.0 or list(self.sends) != sorted(self.sends):
            raise ValueError(f"sends {self.sends!r}: ascending offsets starting at 0")
        if len(self.sends) < 2 or self.tcp_after < self.sends[1]:
            raise ValueError(f"tcp_after {self.tcp_after} comes before the second UDP request "
                             f"({self.sends!r})")
        if self.give_up <= self.sends[-1]:
            raise ValueError(f"give_up {self.give_up} is not after the last request")


def decide(timing: ProbeTiming, *, now: float, udp_answered: bool,
           tcp_answered: bool) -> bool | None:
    """The verdict at ``now`` (seconds since the first UDP request): True blocked,
    False UDP gets out, None not yet."""
    if udp_answered:
        return False
    if tcp_answered and now >= timing.tcp_after:
        return True
    if now >= timing.give_up:
        return True
    return None


@dataclass(frozen=True)
class TcpTurn:
    """Where a TURN server takes TCP: ``turn:…?transport=tcp`` or ``turns:`` (TLS)."""

    host: str
    port: int
    tls: bool


def tcp_turn_server(ice_servers: list[dict[str, Any]]) -> TcpTurn | None:
    """The first TURN server reached over TCP or TLS in the list (RFC 7065 URLs)."""
    from services.stun.natcheck import parse_hostport

    for entry in ice_servers:
        for url in entry["urls"]:
            tls = url.startswith("turns:")
            if not (tls or (url.startswith("turn:") and "transport=tcp" in url)):
                continue
            try:
                host, port = parse_hostport(url.split(":", 1)[1].split("?", 1)[0],
                                            5349 if tls else 3478)
            except ValueError:
                continue
            return TcpTurn(host, port, tls)
    return None


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self, transaction_ids: set[bytes], answered: asyncio.Event,
                 changed: asyncio.Event) -> None:
        self.transaction_ids = transaction_ids
        self.answered = answered
        self.changed = changed

    def datagram_received(self, data: bytes, addr: Any) -> None:
        from services.stun.message import parse

        try:
            reply = parse(data)
        except ValueError:
            return
        if reply.transaction_id in self.transaction_ids:
            self.answered.set()
            self.changed.set()


async def _tcp_binding(server: TcpTurn, answered: asyncio.Event,
                       changed: asyncio.Event) -> None:
    """One STUN Binding over TCP or TLS (RFC 8489 section 6.2.2: messages back to
    back); a certificate that does not verify is no answer."""
    from services.stun.message import HEADER_LENGTH, Message, MessageClass, Method, parse

    request = Message(Method.BINDING, MessageClass.REQUEST)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(
            server.host, server.port, ssl=ssl.create_default_context() if server.tls else None)
        writer.write(request.encode())
        await writer.drain()
        head = await reader.readexactly(HEADER_LENGTH)
        length = struct.unpack("!H", head[2:4])[0]
        reply = parse(head + await reader.readexactly(length))
        if reply.transaction_id == request.transaction_id:
            answered.set()
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        logger.debug("STUN over TCP to %s: %s", server, exc)
    finally:
        changed.set()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def udp_blocked(ice_servers: list[dict[str, Any]],
                      timing: ProbeTiming | None = None) -> bool:
    """True if the list's STUN server does not answer over UDP (see the module).
    Without a STUN server in the list there is nothing to learn: False."""
    from services.stun.message import Message, MessageClass, Method

    timing = timing or ProbeTiming()
    server = stun_server_of(ice_servers)
    if server is None:
        return False
    tcp_server = tcp_turn_server(ice_servers)
    loop = asyncio.get_running_loop()
    udp_answered, tcp_answered, changed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ids: set[bytes] = set()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProbe(ids, udp_answered, changed), remote_addr=server)
    except OSError:
        return True  # no route for UDP at all
    started = loop.time()
    sends = list(timing.sends)
    tcp: asyncio.Task[None] | None = None
    try:
        while True:
            now = loop.time() - started
            verdict = decide(timing, now=now, udp_answered=udp_answered.is_set(),
                             tcp_answered=tcp_answered.is_set())
            if verdict is not None:
                if verdict and tcp_answered.is_set() and now < timing.give_up:
                    logger.info("UDP to %s unanswered after %.0f ms while TURN over TCP "
                                "answered: UDP is blocked here", server, 1000 * now)
                return verdict
            while sends and sends[0] <= now:
                sends.pop(0)
                request = Message(Method.BINDING, MessageClass.REQUEST)
                ids.add(request.transaction_id)
                transport.sendto(request.encode())
            if tcp is None and tcp_server is not None and now >= timing.tcp_after:
                tcp = asyncio.create_task(_tcp_binding(tcp_server, tcp_answered, changed),
                                          name="udpcheck-tcp")
            upcoming = [t for t in (*sends[:1], timing.give_up) if t > now]
            if tcp is None and tcp_server is not None:
                upcoming.append(timing.tcp_after)
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, min(upcoming) - now))
    finally:
        transport.close()
        if tcp is not None and not tcp.done():
            tcp.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tcp

