"""Raw NAT probe: the wire format and the classification. No I/O.

The probe follows RFC 5780 §4.3 and §4.4, without STUN so it cannot depend on
the code under test. The server listens on two addresses A1, A2 and two ports
P1, P2.

Mapping: one client socket sends ``MAP`` to A1:P1, A1:P2 and A2:P1; each answer
(from the socket asked) names the source address the server saw. Same mapped
address everywhere = endpoint-independent; same for A1:P1 and A1:P2 only =
address-dependent; otherwise address-and-port-dependent. The mapped address
equal to the client's own address = no NAT.

Filtering: a fresh client socket sends ``FILTER`` to A1:P1 only; the server
answers from A1:P1 ("same"), from A1:P2 ("port": same address, other port) and
from A2:P2 ("addr": other address and port). Which of those arrive decides it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.natlab.plan import ADM, APDM, BLOCKED, EIM, NO_NAT, Behaviour

Endpoint = tuple[str, int]

SAME = "same"
OTHER_PORT = "port"
OTHER_ADDR = "addr"
FILTER_SOURCES = (SAME, OTHER_PORT, OTHER_ADDR)


def map_request(nonce: str) -> bytes:
    """Client -> server: tell me the address you see."""
    return f"MAP {nonce}".encode()


def filter_request(nonce: str) -> bytes:
    """Client -> server: answer from three endpoints."""
    return f"FILTER {nonce}".encode()


def parse_request(data: bytes) -> tuple[str, str]:
    """``(verb, nonce)`` of a client request; ValueError for anything else."""
    try:
        verb, nonce = data.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"not a probe request: {data[:40]!r}") from None
    if verb not in ("MAP", "FILTER"):
        raise ValueError(f"unknown probe verb {verb!r}")
    return verb, nonce


def seen_reply(nonce: str, source: Endpoint) -> bytes:
    """Server -> client: the source the server saw (IPv6 has no brackets: split on space)."""
    return f"SEEN {nonce} {source[0]} {source[1]}".encode()


def parse_seen(data: bytes, nonce: str) -> Endpoint | None:
    """The endpoint in a SEEN reply for ``nonce``, or None if it is not one."""
    parts = data.decode("ascii", "replace").split(" ")
    if len(parts) != 4 or parts[0] != "SEEN" or parts[1] != nonce or not parts[3].isdigit():
        return None
    return parts[2], int(parts[3])


def from_reply(nonce: str, which: str) -> bytes:
    """Server -> client: one of the filtering answers."""
    return f"FROM {which} {nonce}".encode()


def parse_from(data: bytes, nonce: str) -> str | None:
    """Which filtering answer this is, or None if it is not one for ``nonce``."""
    parts = data.decode("ascii", "replace").split(" ")
    if len(parts) != 3 or parts[0] != "FROM" or parts[2] != nonce:
        return None
    return parts[1] if parts[1] in FILTER_SOURCES else None


@dataclass(frozen=True)
class ProbeResult:
    """What one client saw; the client prints it as JSON for the lab."""

    local: Endpoint | None
    """The client's own address of the mapping socket (after a connect to A1)."""

    mapped: list[Endpoint | None]
    """Mapped address seen by A1:P1, A1:P2, A2:P1 (None: no answer)."""

    filtered: list[str]
    """Which of "same", "port", "addr" reached the filtering socket."""

    tcp: Endpoint | None
    """Mapped address of a TCP connection to A1:P1, None if it failed."""

    def to_json(self) -> dict[str, object]:
        return {
            "local": self.local,
            "mapped": self.mapped,
            "filtered": self.filtered,
            "tcp": self.tcp,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProbeResult:
        def endpoint(value: object) -> Endpoint | None:
            if value is None:
                return None
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError(f"bad endpoint in probe result: {value!r}")
            return str(value[0]), int(value[1])

        mapped = data.get("mapped")
        filtered = data.get("filtered")
        if not isinstance(mapped, list) or not isinstance(filtered, list):
            raise ValueError(f"bad probe result: {data!r}")
        return cls(
            local=endpoint(data.get("local")),
            mapped=[endpoint(item) for item in mapped],
            filtered=[str(item) for item in filtered],
            tcp=endpoint(data.get("tcp")),
        )


def classify_mapping(local: Endpoint | None, mapped: list[Endpoint | None]) -> str:
    """RFC 4787 §4.1 mapping behaviour from the three mapped addresses."""
    if len(mapped) != 3:
        raise ValueError(f"need three mapped addresses, got {len(mapped)}")
    if mapped[0] is None:
        return BLOCKED
    if mapped[1] is None or mapped[2] is None:
        raise ValueError(f"partial mapping answers: {mapped!r}")
    if local is not None and mapped[0] == local:
        return NO_NAT
    if mapped[0] == mapped[1] == mapped[2]:
        return EIM
    if mapped[0] == mapped[1]:
        return ADM
    return APDM


def classify_filtering(filtered: list[str]) -> str:
    """RFC 4787 §5 filtering behaviour from the answers that arrived."""
    if SAME not in filtered:
        return BLOCKED
    if OTHER_ADDR in filtered:
        return EIM
    if OTHER_PORT in filtered:
        return ADM
    return APDM


def classify(result: ProbeResult) -> Behaviour:
    """The behaviour a probe result shows."""
    return Behaviour(
        classify_mapping(result.local, result.mapped), classify_filtering(result.filtered)
    )
