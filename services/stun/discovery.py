"""RFC 5780 NAT behaviour discovery as a sans-I/O test plan.

:class:`BehaviourDiscovery` says which probe to send next (:meth:`next_probe`),
is told what came back (:meth:`record`), and finally classifies the NAT
(:meth:`report`). The asyncio driver in :mod:`services.stun.natcheck` moves the
bytes, retransmits and times out.

Mapping tests (RFC 5780 section 4.3) run on one local socket; filtering tests
(section 4.4) on a second one that has only ever talked to the primary address,
because mapping tests II/III send to the alternate address and would open the
NAT's filter for it, making any filtering look endpoint-independent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

from .allocation import Allocation, port_delta
from .message import Address, ChangeRequest, Message, MessageClass, Method

logger = logging.getLogger(__name__)

Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
NatType = Literal[
    "open", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric", "udp-blocked"
]
Verdict = Literal["direct viewing likely", "relay likely", "unknown"]
TestName = Literal[
    "mapping-I", "mapping-II", "mapping-III", "filtering-I", "filtering-II", "filtering-III"
]
SocketRole = Literal["mapping", "filtering"]

# Behind these, ICE hole punching with a typical peer works without TURN.
_DIRECT: frozenset[NatType] = frozenset(
    {"open", "full-cone", "restricted-cone", "port-restricted-cone"}
)


class Probe(NamedTuple):
    """One Binding request to send; an answer counts only from ``expected_source``."""

    test: TestName
    socket: SocketRole
    destination: Address
    change: ChangeRequest
    expected_source: Address

    def request(self) -> Message:
        attributes: dict[str, object] = {}
        if self.change:
            attributes["CHANGE-REQUEST"] = self.change
        return Message(Method.BINDING, MessageClass.REQUEST, attributes=attributes)


@dataclass(frozen=True)
class NatReport:
    """What RFC 5780 behaviour discovery found about the path to one STUN server."""

    server: Address
    """The STUN server's primary address, as probed."""
    local_address: Address | None
    """Our address (the mapping socket) as the kernel routes towards the server."""
    mapped_address: Address | None
    """XOR-MAPPED-ADDRESS of mapping test I: how the server sees us."""
    other_address: Address | None
    """The server's OTHER-ADDRESS; None if it does not do RFC 5780."""
    mapping: Behaviour | None
    """RFC 5780 section 4.3; None when not determinable."""
    filtering: Behaviour | None
    """RFC 5780 section 4.4; None when not determinable."""
    hairpinning: bool | None
    """RFC 5780 section 4.5; None when not tested (no NAT, or no mapping)."""
    nat_type: NatType | None
    """Classic name: cone types need endpoint-independent mapping."""
    allocation: Allocation | None = None
    """Behind a NAT whose mapping depends on the destination: how it picks each new
    flow's port (:mod:`services.stun.allocation`); None when not measured."""
    mapped_ports: tuple[int, ...] = ()
    """The mapped ports of consecutive new flows that ``allocation`` was read from."""
    allocation_step: int | None = None
    """For a sequential allocator: the usual delta between consecutive mappings."""

    @property
    def port_deltas(self) -> tuple[int, ...]:
        return tuple(port_delta(a, b) for a, b in zip(self.mapped_ports, self.mapped_ports[1:],
                                                      strict=False))

    @property
    def verdict(self) -> Verdict:
        if self.nat_type is None:
            return "unknown"
        return "direct viewing likely" if self.nat_type in _DIRECT else "relay likely"

    def as_dict(self) -> dict[str, object]:
        def address(value: Address | None) -> str | None:
            if value is None:
                return None
            host, port = value
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        return {
            "server": address(self.server),
            "local_address": address(self.local_address),
            "mapped_address": address(self.mapped_address),
            "other_address": address(self.other_address),
            "mapping": self.mapping,
            "filtering": self.filtering,
            "hairpinning": self.hairpinning,
            "nat_type": self.nat_type,
            "verdict": self.verdict,
            "allocation": self.allocation,
            "allocation_step": self.allocation_step,
            "mapped_ports": list(self.mapped_ports),
            "port_deltas": list(self.port_deltas),
        }

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"{key.replace('_', ' ')}: {value}" for key, value in self.as_dict().items()]
        return "\n".join(lines) + "\n"


def _mapped(response: Message) -> Address | None:
    value = response.attributes.get("XOR-MAPPED-ADDRESS")
    if value is None:
        # RFC 5780 section 4.2: servers may also answer with MAPPED-ADDRESS.
        value = response.attributes.get("MAPPED-ADDRESS")
    return value if isinstance(value, tuple) else None


class BehaviourDiscovery:
    """The RFC 5780 test plan for one STUN server and one local address."""

    def __init__(self, server: Address, local: Address) -> None:
        self.server = server
        self.local = local
        self.other: Address | None = None
        self._results: dict[TestName, Address | None] = {}
        self._hairpinning: bool | None = None

    def _probe(
        self, test: TestName, role: SocketRole, destination: Address, change: ChangeRequest
    ) -> Probe:
        # RFC 5780 section 4.4: the answer to a CHANGE-REQUEST comes from the
        # changed IP and/or port of the address the request was sent to.
        assert self.other is not None or change == ChangeRequest.NONE
        host, port = destination
        if change & ChangeRequest.CHANGE_IP and self.other is not None:
            host = self.other[0]
        if change & ChangeRequest.CHANGE_PORT and self.other is not None:
            port = self.other[1]
        return Probe(test, role, destination, change, (host, port))

    def next_probe(self) -> Probe | None:
        """The next probe to send, or None when the plan is done."""
        results = self._results
        if "mapping-I" not in results:
            return self._probe("mapping-I", "mapping", self.server, ChangeRequest.NONE)
        if results["mapping-I"] is None or self.other is None:
            return None  # UDP blocked, or the server cannot do RFC 5780
        other_ip, other_port = self.other
        if "mapping-II" not in results:
            # Section 4.3 test II: alternate IP, primary port.
            destination = (other_ip, self.server[1])
            return self._probe("mapping-II", "mapping", destination, ChangeRequest.NONE)
        m2 = results["mapping-II"]
        if m2 is not None and m2 != results["mapping-I"] and "mapping-III" not in results:
            # Section 4.3 test III: alternate IP and port.
            return self._probe("mapping-III", "mapping", self.other, ChangeRequest.NONE)
        if "filtering-I" not in results:
            return self._probe("filtering-I", "filtering", self.server, ChangeRequest.NONE)
        if results["filtering-I"] is None:
            return None
        if "filtering-II" not in results:
            # Section 4.4 test II: answer from the alternate IP and port.
            change = ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT
            return self._probe("filtering-II", "filtering", self.server, change)
        if results["filtering-II"] is None and "filtering-III" not in results:
            # Section 4.4 test III: answer from the primary IP, alternate port.
            return self._probe("filtering-III", "filtering", self.server, ChangeRequest.CHANGE_PORT)
        return None

    def record(self, probe: Probe, response: Message | None, source: Address | None) -> None:
        """What came back for ``probe``: a success response and its source, or None."""
        mapped: Address | None = None
        if response is not None and response.message_class == MessageClass.SUCCESS_RESPONSE:
            if source != probe.expected_source:
                # A server that ignores CHANGE-REQUEST would fake an open filter.
                logger.warning(
                    "%s: answer came from %s, expected %s; counted as no answer",
                    probe.test,
                    source,
                    probe.expected_source,
                )
            else:
                mapped = _mapped(response)
                if probe.test == "mapping-I":
                    other = response.attributes.get("OTHER-ADDRESS")
                    self.other = other if isinstance(other, tuple) else None
        elif response is not None:
            logger.warning(
                "%s: error response %s", probe.test, response.attributes.get("ERROR-CODE")
            )
        logger.debug("%s → %s", probe.test, mapped)
        self._results[probe.test] = mapped

    @property
    def hairpin_target(self) -> Address | None:
        """RFC 5780 section 4.5: where to send the hairpin probe (behind a NAT only)."""
        mapped = self._results.get("mapping-I")
        if mapped is None or mapped == self.local:
            return None
        return mapped

    def record_hairpin(self, received: bool) -> None:
        self._hairpinning = received

    def _mapping(self) -> Behaviour | None:
        m1, m2, m3 = (self._results.get(t) for t in ("mapping-I", "mapping-II", "mapping-III"))
        if m1 is None or m2 is None:
            return None
        if m2 == m1:
            return "endpoint-independent"
        if m3 is None:
            return None
        return "address-dependent" if m3 == m2 else "address-and-port-dependent"

    def _filtering(self) -> Behaviour | None:
        if self._results.get("filtering-I") is None or "filtering-II" not in self._results:
            return None
        if self._results["filtering-II"] is not None:
            return "endpoint-independent"
        if "filtering-III" not in self._results:
            return None
        if self._results["filtering-III"] is not None:
            return "address-dependent"
        return "address-and-port-dependent"

    def report(self) -> NatReport:
        mapped = self._results.get("mapping-I")
        mapping = self._mapping()
        filtering = self._filtering()
        return NatReport(
            server=self.server,
            local_address=self.local,
            mapped_address=mapped,
            other_address=self.other,
            mapping=mapping,
            filtering=filtering,
            hairpinning=self._hairpinning,
            nat_type=classify(self.local, mapped, mapping, filtering),
        )


def classify(
    local: Address | None,
    mapped: Address | None,
    mapping: Behaviour | None,
    filtering: Behaviour | None,
) -> NatType | None:
    """The classic NAT name for RFC 5780 results; None when they do not say."""
    if mapped is None:
        return "udp-blocked"
    if mapped == local:
        return "open"
    if mapping is None:
        return None
    if mapping != "endpoint-independent":
        return "symmetric"
    if filtering == "endpoint-independent":
        return "full-cone"
    if filtering == "address-dependent":
        return "restricted-cone"
    if filtering == "address-and-port-dependent":
        return "port-restricted-cone"
    return None
