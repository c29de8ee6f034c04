"""The STUN Binding server's logic, sans-I/O: request bytes and source in, reply out.

The server owns up to four sockets, ``(ip_index, port_index)`` with index 0 the
primary and 1 the alternate (RFC 5780 section 6: two IP addresses times two
ports). :meth:`BindingResponder.handle` says what to send back and from which of
them; the asyncio adapter in :mod:`services.stun.server` only moves bytes.

Anti-abuse (STUN servers are classic reflection targets):
- every packet from a source IP costs a token of its bucket, before parsing;
  a global bucket caps the total answer rate;
- only Binding requests are answered; indications and responses are dropped,
  as are other methods (RFC 8489 section 6.3.1 leaves unknown methods to the
  usage; answering them would just be more reflection);
- responses carry only what is needed: XOR-MAPPED-ADDRESS, OTHER-ADDRESS and
  RESPONSE-ORIGIN when there are two addresses, FINGERPRINT; no SOFTWARE
  unless configured. A 20-byte request gets a 40-byte (one address) or 64-byte
  (two addresses) IPv4 answer: the size never depends on the request.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, NamedTuple

from services.ratelimit import TokenBucket

from .message import (
    Address,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    parse,
)

logger = logging.getLogger(__name__)

Transport = Literal["udp", "tcp"]
SocketIndex = tuple[int, int]
"""(ip_index, port_index): 0 = primary, 1 = alternate."""

CHANGE_REQUEST_TYPE = 0x0003


@dataclass(frozen=True)
class ResponderConfig:
    """Abuse limits and optional extras of the Binding server."""

    rate: float = 20.0
    """Packets per second allowed from one source IP (sustained)."""
    burst: float = 40.0
    """Packets one source IP may send at once before the rate applies."""
    global_rate: float = 5000.0
    """Answers per second over all sources: a cap when many sources (or spoofed ones) flood."""
    max_sources: int = 65536
    """Rate-limit table size; least recently seen sources are forgotten first."""
    software: str | None = None
    """SOFTWARE attribute for responses; None (default) keeps responses minimal."""


@dataclass
class ResponderStats:
    """Counters, for logs and /metrics."""

    received: int = 0
    answered: int = 0
    errors_sent: int = 0
    malformed: int = 0
    rate_limited: int = 0
    ignored: int = 0


class Reply(NamedTuple):
    data: bytes
    via: SocketIndex
    """The socket to send ``data`` from."""


class BindingResponder:
    """Answers STUN Binding requests (RFC 8489 section 6.3, RFC 5780 section 6).

    ``addresses[(i, j)]`` is the transport address of socket ``(i, j)``; with one
    address only ``(0, 0)`` exists and RFC 5780 attributes are left out.
    """

    def __init__(
        self, addresses: dict[SocketIndex, Address], config: ResponderConfig | None = None
    ) -> None:
        if (0, 0) not in addresses:
            raise ValueError(f"need the primary socket (0, 0), got {sorted(addresses)}")
        self.addresses = dict(addresses)
        self.config = config or ResponderConfig()
        self.stats = ResponderStats()
        self.behaviour_discovery = len(addresses) == 4
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global = TokenBucket(self.config.global_rate, self.config.global_rate)

    def _allow(self, source_ip: str, now: float) -> bool:
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            bucket = TokenBucket(self.config.rate, self.config.burst)
            self._buckets[source_ip] = bucket
            while len(self._buckets) > self.config.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source_ip)
        return bucket.allow(now) and self._global.allow(now)

    def handle(
        self,
        data: bytes,
        source: Address,
        received_on: SocketIndex,
        now: float,
        transport: Transport = "udp",
    ) -> Reply | None:
        """The reply to ``data`` from ``source`` received on socket ``received_on``."""
        self.stats.received += 1
        if not self._allow(source[0], now):
            self.stats.rate_limited += 1
            return None
        try:
            request = parse(data)
        except ValueError as exc:
            self.stats.malformed += 1
            logger.debug("dropping malformed packet from %s: %s", source, exc)
            return None
        if request.message_class != MessageClass.REQUEST or request.method != Method.BINDING:
            # RFC 8489 section 6.3: indications and responses get no answer;
            # a Binding indication is a keepalive.
            self.stats.ignored += 1
            logger.debug(
                "ignoring %s method 0x%03x from %s",
                request.message_class.name,
                request.method,
                source,
            )
            return None

        change = request.attributes.get("CHANGE-REQUEST", ChangeRequest.NONE)
        unknown = list(request.unknown_required)
        if change and (not self.behaviour_discovery or transport != "udp"):
            # RFC 5780 section 6.1: a server without an alternate address treats
            # CHANGE-REQUEST as an unknown comprehension-required attribute. Over
            # TCP the answer cannot come from another address either.
            unknown.append(CHANGE_REQUEST_TYPE)
        if unknown:
            # RFC 8489 section 6.3.1: unknown comprehension-required attributes
            # in a request are answered with 420 listing them. Each costs the
            # sender >= 4 bytes and us 2, so this cannot amplify.
            self.stats.errors_sent += 1
            error = Message(
                Method.BINDING,
                MessageClass.ERROR_RESPONSE,
                request.transaction_id,
                {"ERROR-CODE": (420, "Unknown Attribute"), "UNKNOWN-ATTRIBUTES": tuple(unknown)},
            )
            return Reply(error.encode(), received_on)

        ip_index, port_index = received_on
        if change & ChangeRequest.CHANGE_IP:
            ip_index = 1 - ip_index
        if change & ChangeRequest.CHANGE_PORT:
            port_index = 1 - port_index
        via = (ip_index, port_index)

        # RFC 8489 section 14.2 (XOR-MAPPED-ADDRESS, the source as we saw it).
        attributes: dict[str, object] = {"XOR-MAPPED-ADDRESS": source}
        if self.behaviour_discovery:
            # RFC 5780 section 6.1: OTHER-ADDRESS differs from the address the
            # request arrived on in both IP and port; RESPONSE-ORIGIN is where
            # this response is sent from.
            r_ip, r_port = received_on
            attributes["OTHER-ADDRESS"] = self.addresses[(1 - r_ip, 1 - r_port)]
            attributes["RESPONSE-ORIGIN"] = self.addresses[via]
        if self.config.software is not None:
            attributes["SOFTWARE"] = self.config.software
        response = Message(
            Method.BINDING, MessageClass.SUCCESS_RESPONSE, request.transaction_id, attributes
        )
        self.stats.answered += 1
        return Reply(response.encode(), via)
