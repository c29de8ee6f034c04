"""Port prediction and birthday punching through symmetric NATs, as plans. No I/O.

Plain ICE (RFC 8445) cannot connect a symmetric NAT to one that filters on the
remote port: the symmetric side's checks leave from a port nobody announced.
Two ways around it, both driven by ``natcheck`` measurements
(:mod:`services.stun.allocation`) that each peer puts in its signed offer or
answer:

* **sequential allocator**: the NAT gives each new flow the last port plus a
  small step. The peer behind it offers the next few ports as extra candidates
  (:func:`predict_ports`); the other side checks exactly those candidates.
* **random allocator**: the birthday technique. The side behind the random
  symmetric NAT opens N sockets and sends from each to the other side's one
  public mapping (N new random mappings); the other side, whose mapping does
  not depend on the destination, sends from its one socket to M distinct
  random ports of the symmetric side's public address, opening its own filter
  for them. One of the M ports equal to one of the N mappings is a path:
  ``1 - (1 - N/P)^M`` over P usable ports (256 × 256: ~63%, 256 × 1024: ~98%,
  256 × 2048, the default: ~99.97%).
* **sequential against sequential**: both NATs count up, but each side's counter
  has moved on since its server-reflexive candidate by flows nobody can see from
  the other end (the session's TURN allocation, its ICE checks): drifts ``d`` and
  ``d'``. Each side sweeps the other's next ``W = 2M`` ports from its own socket,
  one new flow each, the controlling side in order (1, 2, …, W), the controlled
  side odd offsets first (1, 3, …, 2M-1, then 2, 4, …). Its ``l``-th packet
  leaves from the port the other side's sweep aims at with its ``(d' + l)``-th,
  and that packet leaves from the one ours aims at, exactly when ``l = d + d' + 1``:
  one pair of packets meets for every total drift up to ``M - 1``
  (:func:`plan_punch`, proved over every drift in the tests).

:func:`plan_punch` turns both sides' profiles into a :class:`PunchPlan`: which
local sockets to open and every packet to send, when. A plan always stays
inside its :class:`PunchBudget` (packets, seconds, pacing) and never sends to
an address the peer did not offer in the signed session: the sequential plan
targets only offered candidates, and the birthday probe only ports of a public
address the peer offered as its server-reflexive candidate. With
``PunchConfig(enabled=False)`` every plan is empty.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from camera.errors import PeercamError
from services.stun.discovery import NatReport

Address = tuple[str, int]
Allocation = Literal["sequential", "random", "preserving", "unknown"]
Strategy = Literal["off", "none", "sequential", "sequential-sweep", "birthday-open",
                   "birthday-probe"]

FIRST_PORT = 1024
"""NATs allocate outside the well-known ports; predictions stay in 1024-65535."""
USABLE_PORTS = 65536 - FIRST_PORT
MAX_PACKETS_PER_SECOND = 200.0
"""RFC 8445 section 14.2: ICE checks are paced at Ta >= 5 ms; punching is no faster."""


class BadPunchPlan(PeercamError, ValueError):
    """A punching budget or profile that cannot make a safe plan (names the value)."""


@dataclass(frozen=True)
class PunchBudget:
    """The most one punching attempt may cost."""

    max_packets: int = 2048
    """Packets this side sends in one attempt (each a small STUN Binding request)."""
    max_seconds: float = 12.0
    """The attempt's last packet leaves at most this long after its first."""
    packets_per_second: float = MAX_PACKETS_PER_SECOND
    """Pacing: packets leave evenly spaced at this rate, never in a burst."""

    def __post_init__(self) -> None:
        if self.max_packets < 1:
            raise BadPunchPlan(f"max_packets must be at least 1, not {self.max_packets!r}")
        if not self.max_seconds > 0:
            raise BadPunchPlan(f"max_seconds must be positive, not {self.max_seconds!r}")
        if not 0 < self.packets_per_second <= MAX_PACKETS_PER_SECOND:
            raise BadPunchPlan(
                f"packets_per_second must be in (0, {MAX_PACKETS_PER_SECOND:g}], "
                f"not {self.packets_per_second!r}"
            )

    @property
    def packet_limit(self) -> int:
        """Packets that fit both limits at the paced rate (the first leaves at 0 s)."""
        paced = math.floor(self.max_seconds * self.packets_per_second + 1e-9) + 1
        return min(self.max_packets, paced)


@dataclass(frozen=True)
class PunchConfig:
    """Operator settings: whether to punch at all, and how hard."""

    enabled: bool = True
    budget: PunchBudget = field(default_factory=PunchBudget)
    predicted_ports: int = 8
    """Sequential allocator: how many next ports to offer (other flows take some:
    the session's TURN allocation and its first checks; each one more is a pair the
    viewer checks, 20 ms of its check pacing)."""
    birthday_sockets: int = 256
    """Random allocator, the symmetric side: sockets opened, one packet each per round."""
    birthday_probes: int = 2048
    """Random allocator, the other side: distinct ports probed, one packet each (the
    whole budget: 256 x 2048 over ~64k ports is a path ~99.97 % of the time, where
    1024 would miss about once in 60)."""
    sweep_ports: int = 128
    """Sequential against sequential: the next ports of the peer each side sweeps, and
    the window this side invites the peer to sweep (said in its signed session). 128
    meet for any drift of the two counters up to 63 flows in all (a session's own
    checks and allocation take about a dozen on each side), at 128 packets."""

    def __post_init__(self) -> None:
        for name in ("predicted_ports", "birthday_sockets", "birthday_probes",
                     "sweep_ports"):
            value = getattr(self, name)
            if not 1 <= value <= USABLE_PORTS:
                raise BadPunchPlan(f"{name} must be in 1-{USABLE_PORTS}, not {value!r}")


@dataclass(frozen=True)
class NatProfile:
    """One peer's NAT as natcheck measured it, as carried in the signed session."""

    symmetric: bool
    """Mapping depends on the destination (RFC 4787 address(-and-port)-dependent)."""
    allocation: Allocation | None = None
    """Behind a symmetric NAT: how it picks ports; None when not measured."""
    step: int | None = None
    """Sequential allocator: the delta between consecutive mappings."""
    last_port: int | None = None
    """Sequential allocator: the mapped port of the newest flow natcheck made."""
    window: int | None = None
    """Sequential allocator: how many of its next ports, after each of its
    server-reflexive candidates, the peer invites the other side to sweep."""


@dataclass(frozen=True)
class Send:
    """One packet of a plan: from local socket ``socket`` to ``destination`` at ``at``."""

    at: float
    """Seconds after the attempt starts."""
    socket: int
    """Index of the local socket (0 is the ICE agent's own)."""
    destination: Address


@dataclass(frozen=True)
class PunchPlan:
    """What one side does in one punching attempt."""

    strategy: Strategy
    sockets: int
    """Local sockets the attempt needs (0 when it sends nothing)."""
    sends: tuple[Send, ...]
    hit_probability: float
    """The chance this attempt opens a path, if the peer does its part."""

    @property
    def packets(self) -> int:
        return len(self.sends)

    @property
    def duration(self) -> float:
        """Seconds from the first packet to the last."""
        return self.sends[-1].at - self.sends[0].at if self.sends else 0.0

    @property
    def destinations(self) -> frozenset[Address]:
        return frozenset(send.destination for send in self.sends)


@dataclass
class PunchGovernor:
    """Punching across all of one process's sessions together.

    Each attempt is bounded on its own (:class:`PunchBudget`), but the address a plan
    aims at is the one the peer offered as its own public address, and a paired viewer
    (or a camera, for the viewer's probes) may offer any address it likes. Each relayed
    session makes an attempt, so without this many sessions would add up. A token
    bucket of packets, full at start: an attempt takes all of its packets at once or
    waits (the background search asks again at its next round). Sustained, one process
    punches at most ``refill_per_second`` packets a second, whatever its sessions do.
    """

    capacity: int = 4 * PunchBudget.max_packets
    """Packets available at once: four full attempts (sessions that start together)."""
    refill_per_second: float = PunchBudget.max_packets / 15.0
    """One full attempt's worth every 15 s (about 137 packets/s, under one attempt's
    own pacing)."""
    _tokens: float = field(init=False, repr=False)
    _at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.capacity < PunchBudget.max_packets:
            raise BadPunchPlan(f"capacity must hold one attempt ({PunchBudget.max_packets} "
                               f"packets), not {self.capacity!r}")
        if not self.refill_per_second > 0:
            raise BadPunchPlan(
                f"refill_per_second must be positive, not {self.refill_per_second!r}")
        self._tokens = float(self.capacity)

    def available(self, now: float) -> float:
        """Packets an attempt starting at ``now`` may take."""
        if self._at is not None:
            self._tokens = min(float(self.capacity),
                               self._tokens + max(0.0, now - self._at) * self.refill_per_second)
        self._at = now
        return self._tokens

    def admit(self, plan: PunchPlan, now: float) -> bool:
        """Take ``plan``'s packets if they are all there (True), else nothing (False)."""
        if plan.packets > self.available(now):
            return False
        self._tokens -= plan.packets
        return True


def profile_from_report(report: NatReport) -> NatProfile:
    """What a peer says about its NAT in the session, from its ``natcheck`` report."""
    symmetric = report.mapping not in (None, "endpoint-independent")
    if not symmetric:
        return NatProfile(symmetric=False)
    last = report.mapped_ports[-1] if report.mapped_ports else None
    return NatProfile(True, report.allocation, report.allocation_step, last)


def predicted_candidates(profile: NatProfile, public_ip: str,
                         config: PunchConfig) -> tuple[Address, ...]:
    """The extra candidates a peer behind a sequential symmetric NAT offers: its
    public address with the ports its next flows will likely get."""
    if not (config.enabled and profile.symmetric and profile.allocation == "sequential"):
        return ()
    if profile.step is None or profile.last_port is None:
        return ()
    return tuple((public_ip, port)
                 for port in predict_ports(profile.last_port, profile.step,
                                           config.predicted_ports))


def _nothing(strategy: Strategy) -> PunchPlan:
    return PunchPlan(strategy, 0, (), 0.0)


def predict_ports(last_port: int, step: int, count: int) -> tuple[int, ...]:
    """The ports a sequential NAT will likely give the next ``count`` flows after the
    one that got ``last_port``: last + step, last + 2 step, … wrapped into 1024-65535."""
    if not 0 < last_port < 65536:
        raise BadPunchPlan(f"last_port must be in 1-65535, not {last_port!r}")
    if step == 0 or abs(step) > 4096:
        raise BadPunchPlan(f"step must be non-zero and at most 4096 either way, not {step!r}")
    if not 1 <= count <= USABLE_PORTS:
        raise BadPunchPlan(f"count must be in 1-{USABLE_PORTS}, not {count!r}")
    ports: list[int] = []
    for k in range(1, count + 1):
        port = FIRST_PORT + (last_port + k * step - FIRST_PORT) % USABLE_PORTS
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def birthday_probability(sockets: int, probes: int, ports: int = USABLE_PORTS) -> float:
    """Chance that ``probes`` distinct random ports include one of ``sockets`` random
    mappings, over ``ports`` equally likely ports."""
    if sockets <= 0 or probes <= 0:
        return 0.0
    if sockets + probes > ports:
        return 1.0
    # Hypergeometric: no probe lands on a mapping.
    miss = 1.0
    for i in range(probes):
        miss *= (ports - sockets - i) / (ports - i)
    return 1.0 - miss


def _paced(budget: PunchBudget, route: Sequence[tuple[int, Address]]) -> tuple[Send, ...]:
    gap = 1.0 / budget.packets_per_second
    return tuple(Send(i * gap, socket, dest) for i, (socket, dest) in enumerate(route))


def sweep_order(window: int, controlling: bool) -> tuple[int, ...]:
    """The offsets (1-based, in steps of the peer's NAT) one side of a sequential
    sweep aims at, in the order it sends: the controlling side in order, the
    controlled side odd offsets first, then even ones (see the module's docstring)."""
    if controlling:
        return tuple(range(1, window + 1))
    return (*range(1, window + 1, 2), *range(2, window + 1, 2))


def plan_punch(
    local: NatProfile,
    remote: NatProfile,
    remote_candidates: Collection[Address],
    remote_public: Sequence[str],
    config: PunchConfig,
    rng: random.Random,
    *,
    controlling: bool = False,
    remote_anchors: Sequence[Address] = (),
) -> PunchPlan:
    """This side's part of a punching attempt towards a peer.

    ``remote_candidates``: every candidate the peer offered in the signed
    session (host, server-reflexive, predicted). ``remote_public``: the peer's
    server-reflexive addresses among them, the only ones a birthday probe may
    try other ports of. Returns an empty plan ("none") where neither technique
    applies: neither side symmetric (plain ICE does it), both symmetric with one
    random (the random side's mapping differs for each of the other side's ports,
    and the other side's for each of its destinations: an even chance of a hit
    would take about 45,000 packets from the random side, the budget's 2,048 buy
    about 3 %), or nothing measured.
    ``remote_anchors``: the peer's own server-reflexive candidates (not predicted
    ones), from which a sequential sweep counts; ``controlling``: this side's ICE
    role, which decides its sweep order (the two sides' orders must differ).
    """
    if not config.enabled:
        return _nothing("off")
    budget = config.budget
    offered = frozenset(remote_candidates)
    public = tuple(dict.fromkeys(ip for ip in remote_public if any(c[0] == ip for c in offered)))
    limit = budget.packet_limit

    if (local.symmetric and local.allocation == "sequential"
            and remote.symmetric and remote.allocation == "sequential"):
        # Both count up: sweep the window the peer invited, from its first anchor
        # (one anchor only: flows to a second would interleave with the order).
        if remote.step is None or not remote.window:
            return _nothing("none")
        anchor = next((a for a in remote_anchors if a[0] in public and a in offered), None)
        if anchor is None:
            return _nothing("none")
        window = min(remote.window, config.sweep_ports)
        ports = predict_ports(anchor[1], remote.step, window)
        route = [(0, (anchor[0], ports[k - 1])) for k in sweep_order(len(ports), controlling)]
        return PunchPlan("sequential-sweep", 1, _paced(budget, route[:limit]), 1.0)

    if remote.symmetric and remote.allocation == "sequential":
        # The peer offered its predicted ports as candidates: check those, no others.
        if remote.step is None or remote.last_port is None:
            return _nothing("none")
        predicted = predict_ports(remote.last_port, remote.step, config.predicted_ports)
        targets = [
            (ip, port) for ip in public for port in predicted if (ip, port) in offered
        ][:limit]
        if not targets:
            return _nothing("none")
        return PunchPlan("sequential", 1, _paced(budget, [(0, t) for t in targets]), 1.0)

    if local.symmetric and local.allocation == "sequential":
        # We offered our predicted ports; plain ICE checks from our side do the rest.
        return _nothing("none")

    if local.symmetric and local.allocation == "random" and not remote.symmetric:
        # Open N sockets (new random mappings), each sends to the peer's public mappings.
        targets = [c for c in sorted(offered) if c[0] in public]
        if not targets:
            return _nothing("none")
        sockets = max(1, min(config.birthday_sockets, limit // len(targets)))
        route = [(s + 1, t) for s in range(sockets) for t in targets]
        probes = config.birthday_probes
        return PunchPlan("birthday-open", sockets + 1, _paced(budget, route[:limit]),
                         birthday_probability(sockets, probes))

    if remote.symmetric and remote.allocation == "random" and not local.symmetric:
        # Probe M distinct random ports of the peer's public address from our socket.
        if not public:
            return _nothing("none")
        per_address = max(1, limit // len(public))
        probes = min(config.birthday_probes, per_address)
        route = []
        for ip in public:
            for port in rng.sample(range(FIRST_PORT, 65536), probes):
                route.append((0, (ip, port)))
        return PunchPlan("birthday-probe", 1, _paced(budget, route[:limit]),
                         birthday_probability(config.birthday_sockets, probes))

    return _nothing("none")


PREDICTED_FOUNDATION = "pred"
"""Foundations of predicted candidates start so (``pred1``, ``pred2``, …)."""

_SRFLX_LINE = re.compile(
    r"^a=candidate:(?P<foundation>\S+) (?P<component>\d+) (?P<transport>udp) "
    r"(?P<priority>\d+) (?P<address>[0-9.]+) (?P<port>\d+) typ srflx(?P<rest>.*)$",
    re.IGNORECASE)


def with_predicted_candidates(sdp: str, step: int, count: int) -> str:
    """``sdp`` with, after each IPv4 server-reflexive UDP candidate, ``count`` more at
    the ports a sequential NAT will likely give this peer's next flows
    (:func:`predict_ports` from the candidate's own port, the newest mapping when
    it was gathered for this session).

    The peer checks them like any candidate: behind a NAT that filters on the
    remote port, its checks to the right one open its filter for the port our own
    check to it leaves from, which plain ICE never announced. Each comes just below
    the candidate it was predicted from in priority, so a working announced path
    still wins. Called on the SDP before it is signed: the predictions are part of
    the signed session like every other candidate.
    """
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        match = _SRFLX_LINE.match(line)
        if match is None:
            continue
        priority = int(match["priority"])
        for k, port in enumerate(predict_ports(int(match["port"]), step, count), 1):
            if port == int(match["port"]):
                continue
            out.append(f"a=candidate:{PREDICTED_FOUNDATION}{k} {match['component']} "
                       f"{match['transport']} {max(1, priority - k)} {match['address']} "
                       f"{port} typ srflx{match['rest']}")
    return "\r\n".join(out)


NAT_ATTRIBUTE = "x-peercam-nat"
"""Session-level SDP attribute: the sender's NAT, as its natcheck measured it, so the
other side knows its part of a punching attempt (``symmetric random``, ``symmetric
sequential``, ``cone``). Inside the signed SDP like everything else; other WebRTC
implementations ignore attributes they do not know."""


ALLOCATIONS: dict[str, Allocation] = {
    "sequential": "sequential", "random": "random", "preserving": "preserving",
    "unknown": "unknown"}


def with_nat_attribute(sdp: str, profile: NatProfile, sweep_ports: int | None = None) -> str:
    """``sdp`` saying ``profile`` at session level (before the first media section).
    Behind a sequential NAT whose step is known, with ``sweep_ports``, it also says
    the step and invites the peer to sweep that many of our next ports
    (``symmetric sequential STEP WINDOW``)."""
    if (profile.symmetric and profile.allocation == "sequential"
            and profile.step is not None and sweep_ports):
        value = f"symmetric sequential {profile.step} {sweep_ports}"
    elif profile.symmetric:
        value = f"symmetric {profile.allocation or 'unknown'}"
    else:
        value = "cone"
    lines = sdp.split("\r\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    return "\r\n".join([*lines[:at], f"a={NAT_ATTRIBUTE}:{value}", *lines[at:]])


def nat_attribute(sdp: str) -> NatProfile | None:
    """The peer's NAT as its SDP says it (:func:`with_nat_attribute`); None if it does not."""
    prefix = f"a={NAT_ATTRIBUTE}:"
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            return None
        if line.startswith(prefix):
            words = line[len(prefix):].split()
            if words == ["cone"]:
                return NatProfile(symmetric=False)
            if len(words) == 4 and words[:2] == ["symmetric", "sequential"]:
                return _sweep_profile(words[2], words[3])
            allocation = ALLOCATIONS.get(words[1]) if len(words) == 2 else None
            if allocation is not None and words[0] == "symmetric":
                return NatProfile(True, allocation)
            return None
    return None


MAX_SWEEP_WINDOW = 1024
"""The most ports a peer may invite a sweep to (the budget caps what is sent anyway)."""


def _sweep_profile(step: str, window: str) -> NatProfile | None:
    """``symmetric sequential STEP WINDOW`` read back; None unless both are sane."""
    if not (re.fullmatch(r"-?[0-9]{1,4}", step) and re.fullmatch(r"[0-9]{1,4}", window)):
        return None
    step_, window_ = int(step), int(window)
    if step_ == 0 or abs(step_) > 4096 or not 1 <= window_ <= MAX_SWEEP_WINDOW:
        return None
    return NatProfile(True, "sequential", step=step_, window=window_)
