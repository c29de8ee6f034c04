"""aioice 0.13's ``Connection.check_start`` and ``check_incoming``, with peercam's rules.

``sort_check_list`` too: a controlled agent checks the peer's server-reflexive
candidates first (:func:`camera.ice.check_rank`); and ``add_remote_candidate``: a
candidate trickled while connecting has its best pair checked at once (rule 5).

The rules and their reasons are in :mod:`camera.ice` (both ICE roles: immediate
and fast retransmits) and :mod:`camera.client.ice` (the controlling agent, the
viewer: deferred relay nomination). This module is their I/O against aioice's
internals: :func:`check_start` follows aioice 0.13.0's line by line apart from
those rules, and everything it reads or calls on a ``Connection`` or
``CandidatePair`` is checked by :func:`check_members` before :func:`patch`
replaces the two methods, once per process (:mod:`camera.compat`).

Without a relay policy (:func:`set_relay_policy`; the camera never sets one, it
answers and so is the controlled agent) a controlling agent nominates exactly as
stock aioice does.

``connect`` and ``close`` are wrapped too (both roles): a connection that
completed on a relay pair keeps checking its direct pairs in the background
(:class:`camera.ice.Upgrade`) until one answers and is selected, the rounds or
the packet budget are spent, or the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aioice
import aioice.ice
from aioice import Candidate, stun
from aioice.candidate import candidate_priority
from aioice.ice import CandidatePair, Connection, StunProtocol, candidate_pair_priority

from camera.compat import icetcp
from camera.compat.guard import AIOICE, HooksConflict, Member, instance_attribute, require
from camera.ice import (
    REFLEXIVE_TYPES,
    DirectFirst,
    Upgrade,
    check_rank,
    packets_per_check,
    round_fits,
)
from camera.punch import (
    PREDICTED_FOUNDATION,
    NatProfile,
    PunchConfig,
    PunchGovernor,
    PunchPlan,
    plan_punch,
)

logger = logging.getLogger("camera.ice")  # the lab benchmarks read these lines by this name

_State = CandidatePair.State


class RelayDeadline(Protocol):
    """When a successful relay pair stops waiting for a direct pair (see camera.client.ice)."""

    def __call__(
        self,
        timing: DirectFirst,
        *,
        first_check: float,
        relay_ok: float,
        relay_rtt: float,
        pairs: int,
        direct_sent: Sequence[float | None],
    ) -> float: ...


# What the replacement methods use of aioice, checked before they go in.
_CONNECTION_MEMBERS = (
    Member("check_start", "coroutine", ("self", "pair")),
    Member("check_incoming", "method", ("self", "message", "addr", "protocol")),
    Member("check_state", "method", ("self", "pair", "state")),
    Member("check_complete", "method", ("self", "pair")),
    Member("build_request", "method", ("self", "pair", "nominate")),
    Member("switch_role", "method", ("self", "ice_controlling")),
    Member("check_start_task", "method", ("self", "pair")),
    Member("connect", "coroutine", ("self",)),
    Member("close", "coroutine", ("self",)),
    Member("sort_check_list", "method", ("self",)),
    Member("add_remote_candidate", "coroutine", ("self", "remote_candidate")),
    Member("get_component_candidates", "coroutine", ("self", "component", "addresses")),
    Member("request_received", "method", ("self", "message", "addr", "protocol")),
    Member("data_received", "method", ("self", "data", "component")),
    Member("protocol_lost", "method", ("self", "protocol")),
)
_PAIR_MEMBERS = (
    Member("State", "attribute"),
    Member("remote_addr", "attribute"),
    Member("component", "attribute"),
    Member("local_candidate", "attribute"),
)
_STATES = ("FROZEN", "WAITING", "IN_PROGRESS", "SUCCEEDED", "FAILED")
_MODULE_MEMBERS = (
    Member("get_host_addresses", "function", ("use_ipv4", "use_ipv6")),
    Member("candidate_pair_priority", "function", ("local", "remote", "ice_controlling")),
    Member("relayed_candidate", "coroutine", (
        "component", "hide_related_address", "protocol_factory", "turn_server",
        "turn_username", "turn_password", "turn_ssl", "turn_transport")),
)


def check_members(
    module: Any = aioice, connection_class: Any = Connection, pair_class: Any = CandidatePair,
    ice_module: Any = aioice.ice,
) -> None:
    """Every aioice member the patch and the host-address filter use, before use."""
    for member in _CONNECTION_MEMBERS:
        require(AIOICE, module, connection_class, member)
    for member in _PAIR_MEMBERS:
        require(AIOICE, module, pair_class, member)
    for state in _STATES:
        require(AIOICE, module, pair_class.State, Member(state, "attribute"))
    for member in _MODULE_MEMBERS:
        require(AIOICE, module, ice_module, member)
    require(AIOICE, module, stun, Member("TransactionError", "attribute"))
    # The punching sockets are aioice's own protocol objects, added to a connection.
    require(AIOICE, module, ice_module, Member("StunProtocol", "attribute"))
    for member in (Member("send_stun", "method", ("self", "message", "addr")),
                   Member("close", "coroutine", ("self",)),
                   Member("datagram_received", "method", ("self", "data", "addr"))):
        require(AIOICE, module, ice_module.StunProtocol, member)
    # Per-connection state lives in instance attributes set by __init__: look at one.
    probe = connection_class(ice_controlling=True, components=1)
    instance_attribute(AIOICE, module, probe, "_check_list", list)
    instance_attribute(AIOICE, module, probe, "_nominated", dict)
    instance_attribute(AIOICE, module, probe, "_nominating", set)
    instance_attribute(AIOICE, module, probe, "remote_is_lite", bool)
    instance_attribute(AIOICE, module, probe, "_protocols", list)
    instance_attribute(AIOICE, module, probe, "_remote_candidates", list)
    instance_attribute(AIOICE, module, probe, "_components", set)
    instance_attribute(AIOICE, module, probe, "_check_list_done", bool)
    instance_attribute(AIOICE, module, probe, "ice_controlling", bool)
    instance_attribute(AIOICE, module, probe, "_early_checks_done", bool)


_PENDING = (_State.FROZEN, _State.WAITING, _State.IN_PROGRESS)
_ORIGINAL_CHECK_START = Connection.check_start
_ORIGINAL_CHECK_INCOMING = Connection.check_incoming
_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_ORIGINAL_CONNECT = Connection.connect
_ORIGINAL_CLOSE = Connection.close
_ORIGINAL_CHECK_COMPLETE = Connection.check_complete
_ORIGINAL_SORT_CHECK_LIST = Connection.sort_check_list
_ORIGINAL_ADD_REMOTE_CANDIDATE = Connection.add_remote_candidate
_ORIGINAL_RELAYED_CANDIDATE = aioice.ice.relayed_candidate
_ORIGINAL_GET_COMPONENT_CANDIDATES = Connection.get_component_candidates

_timing = DirectFirst()
_upgrade = Upgrade()
_tcp = True
"""Gather TCP candidates (camera.compat.icetcp) beside aioice's UDP ones."""
_relay_deadline: RelayDeadline | None = None

# Per check-list bookkeeping, dropped with the objects (aioice owns them).
_first_check: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
_sent_at: weakref.WeakKeyDictionary[CandidatePair, float] = weakref.WeakKeyDictionary()
_in_flight: weakref.WeakKeyDictionary[CandidatePair, stun.Message] = weakref.WeakKeyDictionary()
_waiting_relays: weakref.WeakKeyDictionary[Connection, weakref.WeakSet[CandidatePair]] = (
    weakref.WeakKeyDictionary())
# When a check from the peer last started our search again (see _peer_searches).
_peer_rearmed: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
PEER_REARM_EVERY = 60.0
"""Seconds: the most often a peer's checks may start a connection's search again."""
PEER_QUIET_AFTER = 10.0
"""Seconds after our search ended before a peer's check may start it again."""
_search_ended: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
# The background search for a direct path of a connection that completed on a relay.
_upgraders: weakref.WeakKeyDictionary[Connection, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary())
# Set when a connecting check list completes (every component nominated): connect()
# returns then, not at its pacing loop's next tick (up to 20 ms later, before DTLS
# can start); aioice's own connect() ends in the background (see _connect).
_completed: weakref.WeakKeyDictionary[Connection, asyncio.Event] = weakref.WeakKeyDictionary()
_finishing: weakref.WeakKeyDictionary[Connection, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary())
# Set once a check to one of the peer's server-reflexive or relayed candidates has
# been sent: our NAT is open to it (camera.ice, rule 6: the answer may go).
_reflexive_sent: weakref.WeakKeyDictionary[Connection, asyncio.Event] = (
    weakref.WeakKeyDictionary())


def reflexive_checked(connection: Connection) -> asyncio.Event:
    """Set once this connection has sent a check to a server-reflexive or relayed
    candidate of the peer (the first transmission, answered or not)."""
    event = _reflexive_sent.get(connection)
    if event is None:
        event = _reflexive_sent[connection] = asyncio.Event()
    return event


def patch(timing: DirectFirst, upgrade: Upgrade | None = None) -> None:
    """Replace aioice's seven methods (and its relayed-candidate gathering) with the
    ones below (process-wide)."""
    set_timing(timing)
    set_upgrade(upgrade if upgrade is not None else Upgrade())
    start: Any = check_start
    incoming: Any = check_incoming
    connect: Any = _connect
    close: Any = _close
    complete: Any = _check_complete
    sort: Any = _sort_check_list
    add_remote: Any = _add_remote_candidate
    gather: Any = _get_component_candidates
    Connection.get_component_candidates = gather  # type: ignore[method-assign]
    Connection.check_start = start  # type: ignore[method-assign]
    Connection.check_incoming = incoming  # type: ignore[method-assign]
    Connection.connect = connect  # type: ignore[method-assign]
    Connection.close = close  # type: ignore[method-assign]
    Connection.check_complete = complete  # type: ignore[method-assign]
    Connection.sort_check_list = sort  # type: ignore[method-assign]
    Connection.add_remote_candidate = add_remote  # type: ignore[method-assign]
    relayed: Any = _relayed_candidate
    aioice.ice.relayed_candidate = relayed


def unpatch() -> None:
    """Put aioice's own methods back."""
    Connection.check_start = _ORIGINAL_CHECK_START  # type: ignore[method-assign]
    Connection.check_incoming = _ORIGINAL_CHECK_INCOMING  # type: ignore[method-assign]
    Connection.connect = _ORIGINAL_CONNECT  # type: ignore[method-assign]
    Connection.close = _ORIGINAL_CLOSE  # type: ignore[method-assign]
    Connection.check_complete = _ORIGINAL_CHECK_COMPLETE  # type: ignore[method-assign]
    Connection.sort_check_list = _ORIGINAL_SORT_CHECK_LIST  # type: ignore[method-assign]
    Connection.add_remote_candidate = (  # type: ignore[method-assign]
        _ORIGINAL_ADD_REMOTE_CANDIDATE)
    Connection.get_component_candidates = (  # type: ignore[method-assign]
        _ORIGINAL_GET_COMPONENT_CANDIDATES)
    aioice.ice.relayed_candidate = _ORIGINAL_RELAYED_CANDIDATE


RELAY_ATTEMPTS = 4
"""TURN allocations a gathering asks for before it goes on without a relay candidate."""
RELAY_RETRY_DELAY = 0.5
"""Seconds before the second attempt, twice that before the third, three times before
the fourth: 3 s in all, inside aioice's 5 s for gathering. (coturn frees a user's
quota share on a one-second timer after an allocation ends.)"""


async def _relayed_candidate(
    *, component: int, hide_related_address: bool, protocol_factory: Any,
    turn_server: tuple[str, int], turn_username: str | None, turn_password: str | None,
    turn_ssl: bool, turn_transport: str,
) -> Any:
    """aioice's ``relayed_candidate``, asked again when the allocation fails fast (the
    server refused it: a stale nonce, an overloaded or restarting server, its
    user database busy). aioice asks once, and a session between two NATs that
    need the relay cannot start without it. aioice's gathering timeout (5 s)
    still bounds all attempts together: it cancels what is left."""
    for attempt in range(RELAY_ATTEMPTS):
        try:
            return await _ORIGINAL_RELAYED_CANDIDATE(
                component=component, hide_related_address=hide_related_address,
                protocol_factory=protocol_factory, turn_server=turn_server,
                turn_username=turn_username, turn_password=turn_password, turn_ssl=turn_ssl,
                turn_transport=turn_transport)
        except (stun.TransactionError, OSError) as exc:
            if attempt == RELAY_ATTEMPTS - 1:
                raise
            logger.info("TURN allocation at %s failed (%s): asking again", turn_server, exc)
            await asyncio.sleep(RELAY_RETRY_DELAY * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


async def _get_component_candidates(
    self: Connection, component: int, addresses: list[str], timeout: int = 5,
) -> list[Candidate]:
    """aioice's gathering (UDP host, server-reflexive, relayed) and, at the same time,
    the TCP candidates on the same addresses (:mod:`camera.compat.icetcp`: host
    active and passive, server-reflexive simultaneous open) unless turned off.
    None with the relay-only policy: aioice passes no address then."""
    if not (_tcp and addresses):
        return await _ORIGINAL_GET_COMPONENT_CANDIDATES(self, component, addresses, timeout)
    server = _tcp_stun_server(self)
    reflexive = (asyncio.ensure_future(icetcp.so_candidates(self, component, addresses, server))
                 if server is not None else None)
    try:
        candidates: list[Candidate] = await _ORIGINAL_GET_COMPONENT_CANDIDATES(
            self, component, addresses, timeout)
    except BaseException:
        if reflexive is not None:
            reflexive.cancel()
        raise
    protocols: list[Any] = await icetcp.gather(self, component, addresses)
    if reflexive is not None and server is not None:
        done, _pending = await asyncio.wait({reflexive}, timeout=icetcp.SO_GATHER_GRACE)
        if reflexive in done:
            protocols += reflexive.result()
        else:
            reflexive.cancel()
            logger.info("ICE-TCP: no mapped address over TCP from %s:%d within %.1f s of "
                        "the UDP candidates: no simultaneous-open candidate", *server,
                        icetcp.SO_GATHER_GRACE)
    self._protocols += protocols
    candidates += [protocol.local_candidate for protocol in protocols]
    return candidates


def _tcp_stun_server(connection: Connection) -> tuple[str, int] | None:
    """Where to learn a simultaneous-open candidate's mapped address over TCP: the
    STUN server (peercam's answers over TCP too), else a TURN server reached
    without TLS (coturn answers a Binding on its TCP port)."""
    stun_server = getattr(connection, "stun_server", None)
    if stun_server is not None:
        return (str(stun_server[0]), int(stun_server[1]))
    turn_server = getattr(connection, "turn_server", None)
    if turn_server is not None and not getattr(connection, "turn_ssl", False):
        return (str(turn_server[0]), int(turn_server[1]))
    return None


def set_tcp(enabled: bool) -> None:
    """Gather TCP candidates in the connections made from now on (or not)."""
    global _tcp
    _tcp = enabled


def set_upgrade(upgrade: Upgrade) -> None:
    global _upgrade
    _upgrade = upgrade


def upgrade() -> Upgrade:
    return _upgrade


def set_timing(timing: DirectFirst) -> None:
    global _timing
    _timing = timing


def timing() -> DirectFirst:
    return _timing


def set_relay_policy(deadline: RelayDeadline | None) -> None:
    """The controlling agent's relay deferral (rule 1); once per process, or None to drop it."""
    global _relay_deadline
    if deadline is not None and _relay_deadline is not None and deadline is not _relay_deadline:
        raise HooksConflict(
            f"another relay nomination policy is installed ({_relay_deadline!r}); "
            f"refusing {deadline!r}"
        )
    _relay_deadline = deadline


def relay_policy() -> RelayDeadline | None:
    return _relay_deadline


# -- reading aioice state for the rest of peercam -------------------------------------


def nominated_pair(connection: Connection, component: int = 1) -> CandidatePair | None:
    """The pair ICE selected for ``component``, if any."""
    nominated: dict[int, CandidatePair] = instance_attribute(
        AIOICE, aioice, connection, "_nominated", dict)
    return nominated.get(component)


def restrict_host_addresses(addresses: list[str] | None) -> None:
    """Make aioice gather host candidates on these addresses only (None: its own lookup)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _ORIGINAL_GET_HOST_ADDRESSES
        return
    require(AIOICE, aioice, aioice.ice, _MODULE_MEMBERS[0])
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


# -- the replacement methods -----------------------------------------------------------


def _is_relay(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _predicted(pair: CandidatePair) -> bool:
    """A pair with a candidate the peer offered as a predicted port (camera.punch)."""
    return str(pair.remote_candidate.foundation).startswith(PREDICTED_FOUNDATION)


def _is_tcp(pair: CandidatePair) -> bool:
    return str(pair.local_candidate.transport).lower() == "tcp"


def _rank(pair: CandidatePair) -> int:
    """Which paths come first, whatever the priorities: direct over UDP (0), direct
    over TCP (1: it waits for what it loses), relayed (2)."""
    return 2 if _is_relay(pair) else 1 if _is_tcp(pair) else 0


def _pending_better(connection: Connection, pair: CandidatePair) -> list[CandidatePair]:
    """Pairs of ``pair``'s component on a better kind of path (:func:`_rank`) still
    unchecked or in flight."""
    rank = _rank(pair)
    return [
        p for p in connection._check_list
        if p.component == pair.component and _rank(p) < rank and p.state in _PENDING
    ]


def _priority(connection: Connection, pair: CandidatePair) -> int:
    return candidate_pair_priority(pair.local_candidate, pair.remote_candidate,
                                   connection.ice_controlling)


async def _another_pair_won(
    connection: Connection, pair: CandidatePair, relay_ok: float, relay_rtt: float
) -> bool:
    """Wait until another pair of this component is nominated (True), or until this
    relay pair should be (False): no direct pair can still win and no relay pair of
    higher priority (RFC 8445 section 6.1.2.3) is waiting too; a relay to relay
    pair, say, goes through the TURN server twice."""
    deadline_of = _relay_deadline
    assert deadline_of is not None  # only deferred with a policy
    loop = asyncio.get_running_loop()
    waiting = _waiting_relays.setdefault(connection, weakref.WeakSet())
    waiting.add(pair)
    try:
        while True:
            if pair.component in connection._nominated:
                return True
            pending = _pending_better(connection, pair)
            deadline = relay_ok if not pending else deadline_of(
                _timing,
                first_check=_first_check.get(connection, relay_ok),
                relay_ok=relay_ok,
                relay_rtt=relay_rtt,
                # The peer paces its own check list, which has none of the ports
                # we were offered as predictions (camera.punch): those are ours.
                pairs=sum(1 for p in connection._check_list if not _predicted(p)),
                direct_sent=[_sent_at.get(p) if p.state == _State.IN_PROGRESS else None
                             for p in pending],
            )
            now = loop.time()
            if now >= deadline and pair.component not in connection._nominating and not any(
                other.component == pair.component
                and _priority(connection, other) > _priority(connection, pair)
                for other in waiting
            ):
                return False
            # Until the deadline, or a check's worth when waiting for another pair.
            delay = deadline - now if deadline > now else _timing.pacing
            await asyncio.sleep(min(2 * _timing.pacing, delay))
    finally:
        waiting.discard(pair)


class _FastRetransmit:
    """Resends one check's request every ``retransmit`` s for its first ``fast_for`` s."""

    def __init__(self, pair: CandidatePair, request: stun.Message) -> None:
        self._loop = asyncio.get_running_loop()
        self._pair = pair
        self._request = request
        self._until = self._loop.time() + _timing.fast_for
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(
            _timing.retransmit, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._pair.protocol.send_stun(self._request, self._pair.remote_addr)
        if self._loop.time() + _timing.retransmit < self._until:
            self._handle = self._loop.call_later(_timing.retransmit, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _transaction(
    connection: Connection, pair: CandidatePair, request: stun.Message
) -> tuple[stun.Message, tuple[str, int]]:
    """One check's STUN transaction, open to immediate (2) and fast (3) retransmits."""
    assert connection.remote_password is not None
    _sent_at[pair] = asyncio.get_running_loop().time()
    _in_flight[pair] = request
    fast = None if _is_relay(pair) or _is_tcp(pair) else _FastRetransmit(pair, request)
    if pair.remote_candidate.type in REFLEXIVE_TYPES:
        # The request's first transmission leaves as the transaction starts, below.
        reflexive_checked(connection).set()
    try:
        return await pair.protocol.request(
            request, pair.remote_addr, integrity_key=connection.remote_password.encode("utf8")
        )
    finally:
        _in_flight.pop(pair, None)
        if fast is not None:
            fast.cancel()


async def check_start(self: Connection, pair: CandidatePair) -> None:
    """aioice 0.13.0 ``Connection.check_start`` with peercam's rules."""
    assert self.remote_password is not None
    loop = asyncio.get_running_loop()
    self.check_state(pair, _State.IN_PROGRESS)
    _first_check.setdefault(self, loop.time())

    policy = _relay_deadline is not None
    defer = (policy and self.ice_controlling and _rank(pair) > 0
             and bool(_pending_better(self, pair)))
    # Once a pair is nominated, a late check (say, triggered by the peer's check
    # arriving over a relay) must not nominate another: aioice would replace
    # the selected pair, on both sides, with whichever was nominated last.
    settled = policy and pair.component in self._nominated
    nominate = self.ice_controlling and not self.remote_is_lite and not defer and not settled
    request = self.build_request(pair, nominate=nominate)
    try:
        response, addr = await _transaction(self, pair, request)
    except stun.TransactionError as exc:
        # Role conflict or failure (RFC 8445 sections 7.2.5.1 and 7.2.5.2).
        if exc.response and exc.response.error_code == 487:
            if "ICE-CONTROLLING" in request.attributes:
                self.switch_role(ice_controlling=False)
            elif "ICE-CONTROLLED" in request.attributes:
                self.switch_role(ice_controlling=True)
            return await check_start(self, pair)
        self.check_state(pair, _State.FAILED)
        self.check_complete(pair)
        return

    # Check that the remote address matches (RFC 8445 section 7.2.5.2.1).
    if addr != pair.remote_addr:
        self.check_state(pair, _State.FAILED)
        self.check_complete(pair)
        return

    # Success (RFC 8445 section 7.2.5.3).
    if nominate or pair.remote_nominated:
        pair.nominated = True
    elif self.ice_controlling and defer:
        succeeded = loop.time()
        rtt = succeeded - _sent_at.get(pair, succeeded)
        if await _another_pair_won(self, pair, succeeded, rtt):
            logger.info("ICE: relay pair %s not nominated: %s was", pair,
                        self._nominated[pair.component])
            self.check_state(pair, _State.SUCCEEDED)
            self.check_complete(pair)
            return
        logger.info("ICE: nominating relay pair %s after %.0f ms: no direct pair can win",
                    pair, 1000 * (loop.time() - succeeded))
        if not await _nominate(self, pair):
            return
    elif (self.ice_controlling and pair.component not in self._nominating
          and not (policy and pair.component in self._nominated)):
        if not await _nominate(self, pair):
            return
    self.check_state(pair, _State.SUCCEEDED)
    self.check_complete(pair)


async def _nominate(self: Connection, pair: CandidatePair) -> bool:
    """Regular nomination (RFC 8445 section 8.1.1): repeat the check with USE-CANDIDATE."""
    assert self.remote_password is not None
    self._nominating.add(pair.component)
    request = self.build_request(pair, nominate=True)
    try:
        await pair.protocol.request(
            request, pair.remote_addr, integrity_key=self.remote_password.encode("utf8")
        )
    except stun.TransactionError:
        self._nominating.discard(pair.component)
        self.check_state(pair, _State.FAILED)
        self.check_complete(pair)
        return False
    pair.nominated = True
    return True


def check_incoming(
    self: Connection, message: stun.Message, addr: tuple[str, int], protocol: Any
) -> None:
    """aioice's ``check_incoming``, then (2): retransmit our own check of that pair now."""
    pair = next((p for p in self._check_list
                 if p.protocol is protocol and p.remote_addr == (addr[0], addr[1])), None)
    in_progress = pair is not None and pair.state == _State.IN_PROGRESS
    _ORIGINAL_CHECK_INCOMING(self, message, addr, protocol)
    if pair is None and icetcp.is_tcp(protocol):
        # aioice learns every peer-reflexive candidate as UDP: this one came over a
        # connection the peer opened, so it is the peer's active TCP candidate.
        pair = next((p for p in self._check_list if p.protocol is protocol
                     and p.remote_addr == (addr[0], addr[1])), None)
        if pair is not None and pair.remote_candidate.type == "prflx":
            pair.remote_candidate.transport = "tcp"
            pair.remote_candidate.tcptype = "active"
        pair = None
    request = _in_flight.get(pair) if in_progress and pair is not None else None
    if pair is not None and request is not None:
        protocol.send_stun(request, pair.remote_addr)
    _peer_searches(self, addr, protocol)


def _peer_searches(
    connection: Connection, addr: tuple[str, int], protocol: Any
) -> None:
    """A check from the peer on a direct path while our media is on a relay and our
    own search has ended: the peer is searching again (its network changed), so we
    search too, or nobody would nominate the path it finds. Only well after our
    own search ended (two searches that end about together must not restart each
    other for ever) and at most once per ``PEER_REARM_EVERY`` seconds per
    connection, so a peer cannot keep us probing."""
    local = getattr(protocol, "local_candidate", None)
    selected = connection._nominated.get(1)
    if (local is None or local.type == "relay" or selected is None
            or not _is_relay(selected)):
        return
    if any(c.type == "relay" and (c.host, c.port) == (addr[0], addr[1])
           for c in connection._remote_candidates):
        return  # through the peer's relay: not a direct path
    task = _upgraders.get(connection)
    if task is not None and not task.done():
        return
    now = asyncio.get_running_loop().time()
    ended = _search_ended.get(connection)
    if ended is None or now - ended < PEER_QUIET_AFTER:
        return
    last = _peer_rearmed.get(connection)
    if last is not None and now - last < PEER_REARM_EVERY:
        return
    _peer_rearmed[connection] = now
    rearm(connection)



# -- relayed now, direct later (camera.ice.Upgrade) -----------------------------------------


def _check_complete(self: Connection, pair: CandidatePair) -> None:
    """aioice's ``check_complete``; a connecting check list that it completed (every
    component nominated) lets ``connect`` return at once. Only the completion
    itself: a list that had failed before stays failed for aioice, whatever is
    nominated later, and so it does here."""
    was_done = self._check_list_done
    _ORIGINAL_CHECK_COMPLETE(self, pair)
    completed = _completed.get(self)
    if (completed is not None and not was_done and self._check_list_done
            and self._nominated and set(self._nominated) >= self._components):
        completed.set()


def _sort_check_list(self: Connection) -> None:
    """aioice's order (pair priority), then :func:`camera.ice.check_rank`'s (stable):
    a controlled agent checks the peer's server-reflexive candidates first."""
    _ORIGINAL_SORT_CHECK_LIST(self)
    controlling = self.ice_controlling
    self._check_list.sort(key=lambda pair: check_rank(
        controlling, pair.local_candidate.type, pair.remote_candidate.type))


async def _add_remote_candidate(self: Connection, remote_candidate: Candidate | None) -> None:
    """aioice's ``add_remote_candidate``; then, while connecting, the new candidate's
    best pair is checked now, not at a later pacing tick after every pair still
    waiting (:mod:`camera.ice`, rule 5)."""
    await _ORIGINAL_ADD_REMOTE_CANDIDATE(self, remote_candidate)
    if (remote_candidate is None or not _timing.trickled_at_once
            or not self._early_checks_done or self._check_list_done
            or self.remote_password is None):
        return
    # The list is in check order (_sort_check_list); aioice pairs a copy of the candidate.
    address = (remote_candidate.host, remote_candidate.port)
    pair = next((p for p in self._check_list if p.state == _State.FROZEN
                 and (p.remote_candidate.host, p.remote_candidate.port) == address
                 and p.remote_candidate.component == remote_candidate.component), None)
    if pair is not None:
        self.check_start_task(pair)


def _finished(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("ICE: aioice's connect ended with %r after the check list completed",
                       task.exception())


async def _connect(self: Connection) -> None:
    """aioice's ``connect``, returning as soon as the check list completes; then, if it
    selected a relay pair, the search for a direct one.

    aioice paces its checks in a loop that sleeps 20 ms between them and looks at the
    check list's state only when it wakes, so a pair nominated just after a tick (the
    usual case: the peer's nomination arrives at any time) kept the media waiting up
    to 20 ms for DTLS to start. What aioice's ``connect`` still does once the list is
    complete (cancel the checks left, start the consent checks) ends within that tick,
    in the background; a connection closed first cancels it."""
    completed = _completed[self] = asyncio.Event()
    original = asyncio.ensure_future(_ORIGINAL_CONNECT(self))
    waiter = asyncio.ensure_future(completed.wait())
    try:
        await asyncio.wait((original, waiter), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        original.cancel()
        raise
    finally:
        waiter.cancel()
        _completed.pop(self, None)
    if original.done():
        original.result()  # aioice's verdict, its exception included
    else:
        _finishing[self] = original
        original.add_done_callback(_finished)
    pair = self._nominated.get(1)
    if _upgrade.enabled and _upgrade.rounds and pair is not None and _is_relay(pair):
        _upgraders[self] = asyncio.create_task(_look_for_direct(self, pair),
                                               name="ice-upgrade")


def rearm(connection: Connection) -> bool:
    """The network changed: a connection whose media is on a relay pair searches
    for a direct one again, from the first round and with a fresh packet budget
    (a search still going starts over; one that ended, within its bounds, is
    retried only here). True if a search started."""
    pair = connection._nominated.get(1)
    if not (_upgrade.enabled and _upgrade.rounds) or pair is None or not _is_relay(pair):
        return False
    old = _upgraders.pop(connection, None)
    if old is not None and not old.done():
        old.cancel()
    _upgraders[connection] = asyncio.create_task(_look_for_direct(connection, pair),
                                                 name="ice-upgrade")
    logger.info("ICE: looking for a direct path again (on relay pair %s)", pair)
    return True


async def _close(self: Connection) -> None:
    """The search ends with the connection, before aioice closes its sockets."""
    finishing = _finishing.pop(self, None)
    if finishing is not None and not finishing.done():
        finishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await finishing
    task = _upgraders.pop(self, None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _ORIGINAL_CLOSE(self)


def _direct_pairs(connection: Connection, component: int) -> list[CandidatePair]:
    """Every pair of one of our own (not relayed) sockets with a remote candidate the
    peer offered in this session, or that checked in from a new address (peer
    reflexive), not relayed either, of the same address family. aioice dropped the
    pairs it never checked when it nominated: they come back into the check list,
    so a check arriving on one finds it."""
    pairs = []
    for protocol in connection._protocols:
        local = getattr(protocol, "local_candidate", None)
        if local is None or local.component != component or local.type == "relay":
            continue
        # A punching socket's only pairs are the ones a hit made; a passive TCP
        # candidate's, the ones the peer's connections made.
        made_by_peer = _is_punch_socket(protocol) or local.tcptype == "passive"
        for remote in connection._remote_candidates:
            if (remote.component != component or remote.type == "relay"
                    or (":" in remote.host) != (":" in local.host)
                    or str(remote.transport).lower() != str(local.transport).lower()):
                continue
            pair = next((p for p in connection._check_list if p.protocol is protocol
                         and p.remote_candidate is remote), None)
            if pair is None and (made_by_peer or not local.can_pair_with(remote)):
                continue
            if pair is None:
                pair = CandidatePair(protocol, remote)
                pair.state = _State.FAILED
                connection._check_list.append(pair)
            pairs.append(pair)
    return pairs


def _busy(pair: CandidatePair) -> bool:
    """A check of this pair is out: aioice's own (triggered) or a round's. aioice
    cancels its checks when it completes and leaves their pairs IN_PROGRESS."""
    task = getattr(pair, "task", None)
    return pair in _in_flight or (task is not None and not task.done())


async def _probe(connection: Connection, pair: CandidatePair) -> None:
    """One round's check of a direct pair: a Binding request without USE-CANDIDATE,
    a few retransmissions. It succeeds or fails; nomination is the caller's."""
    if _busy(pair) or connection.remote_password is None:
        return
    request = connection.build_request(pair, nominate=False)
    fast = None if _is_tcp(pair) else _FastRetransmit(pair, request)
    _in_flight[pair] = request  # a check arriving on the pair retransmits it at once (2)
    connection.check_state(pair, _State.IN_PROGRESS)
    try:
        _response, addr = await pair.protocol.request(
            request, pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=_upgrade.retransmissions)
    except stun.TransactionError:
        connection.check_state(pair, _State.FAILED)
        return
    finally:
        if fast is not None:
            fast.cancel()
        _in_flight.pop(pair, None)
    connection.check_state(pair, _State.SUCCEEDED if addr == pair.remote_addr
                           else _State.FAILED)


async def _look_for_direct(connection: Connection, relay: CandidatePair) -> None:
    """Check the direct pairs again at each of the rounds; the controlling agent
    nominates the best one that answers (its own round's check, or a check the
    peer's round triggered), and then both ends send on it. Bounded in time (the
    last round) and in packets (``Upgrade.max_packets``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    component = relay.component
    sent = 0
    probes: set[asyncio.Task[None]] = set()
    rounds = list(_upgrade.rounds)
    punch = _punches.get(connection)
    try:
        while True:
            selected = connection._nominated.get(component)
            if selected is None:
                return  # closed or failed: nothing to upgrade
            if not _is_relay(selected):
                logger.info("ICE: media moved from relay pair %s to direct pair %s after "
                            "%.1f s", relay, selected, loop.time() - started)
                return
            won = [p for p in _direct_pairs(connection, component)
                   if p.state == _State.SUCCEEDED]
            nominated_by_peer = [p for p in won if p.remote_nominated and not p.nominated]
            if nominated_by_peer and not connection.ice_controlling:
                # The peer's USE-CANDIDATE came while our own check of the pair was
                # still out: aioice records it and leaves the selection to us.
                nominated_by_peer[0].nominated = True
                connection.check_complete(nominated_by_peer[0])
                continue
            if won and connection.ice_controlling:
                best = max(won, key=lambda p: _priority(connection, p))
                if await _nominate(connection, best):
                    connection.check_complete(best)  # aioice selects the nominated pair
                # Nominated already: no late check of aioice's may nominate again.
                connection._nominating.add(component)
                continue
            if punch is not None and rounds and loop.time() >= started + rounds[0]:
                # One punching attempt per search, with its first round, or with a
                # later one when the process's punching budget is spent for now.
                plan = _plan(connection, punch, component)
                if not plan.sends:
                    punch = None
                elif _governor.admit(plan, loop.time()):
                    task = asyncio.create_task(_punch(connection, punch, component, plan))
                    probes.add(task)
                    task.add_done_callback(probes.discard)
                    punch = None
                elif len(rounds) == 1:
                    logger.info("ICE: punching (%s) not attempted: this process's punching "
                                "budget stayed spent through the search", plan.strategy)
                    punch = None
            if rounds and loop.time() >= started + rounds[0]:
                rounds.pop(0)
                pairs = [p for p in _direct_pairs(connection, component) if not _busy(p)]
                if not round_fits(_upgrade, _timing, sent, len(pairs)):
                    logger.info("ICE: no direct path found within the packet budget "
                                "(%d requests sent); staying on relay pair %s", sent, relay)
                    return
                sent += len(pairs) * packets_per_check(_upgrade, _timing)
                for pair in pairs:
                    task = asyncio.create_task(_probe(connection, pair))
                    probes.add(task)
                    task.add_done_callback(probes.discard)
                    await asyncio.sleep(_timing.pacing)
            elif not rounds and not probes:
                logger.info("ICE: no direct path after %.0f s of background checks; staying "
                            "on relay pair %s", loop.time() - started, relay)
                return
            await asyncio.sleep(2 * _timing.pacing)
    finally:
        _search_ended[connection] = loop.time()
        for task in probes:
            task.cancel()
        _close_punch_sockets(connection)


# -- punching through symmetric NATs (camera.punch plans) -----------------------------

PUNCH_FOUNDATION = "punch"
"""Foundation of the extra sockets a birthday attempt opens (never offered to the peer)."""
PROBE_DELAY = 1.5
"""Seconds the probing side waits after the first round before its probes: the
opening side's mappings (its packets take about 1.3 s at the pacing) exist by then."""


@dataclass
class _Punch:
    """What a connection's searches may punch with: both NATs, as the signed session says."""

    local: NatProfile
    remote: NatProfile
    config: PunchConfig
    sockets: list[StunProtocol] = field(default_factory=list)


_punches: weakref.WeakKeyDictionary[Connection, _Punch] = weakref.WeakKeyDictionary()
_governor = PunchGovernor()
"""Every session's punching in this process together (see PunchGovernor)."""


def arm_punch(connection: Connection, local: NatProfile, remote: NatProfile,
              config: PunchConfig) -> None:
    """Let this connection's background searches make one punching attempt each
    (:func:`camera.punch.plan_punch`: birthday opening or probing, as the two
    NATs call for; nothing where neither applies), with their first round."""
    _punches[connection] = _Punch(local, remote, config)


def _is_punch_socket(protocol: Any) -> bool:
    local = getattr(protocol, "local_candidate", None)
    return local is not None and local.foundation == PUNCH_FOUNDATION


def _plan(connection: Connection, punch: _Punch, component: int) -> PunchPlan:
    remotes = [c for c in connection._remote_candidates
               if c.component == component and c.type != "relay" and ":" not in c.host]
    anchors = [(c.host, c.port) for c in remotes if c.type == "srflx"
               and not c.foundation.startswith(PREDICTED_FOUNDATION)]
    return plan_punch(punch.local, punch.remote, {(c.host, c.port) for c in remotes},
                      [c.host for c in remotes if c.type == "srflx"], punch.config,
                      random.SystemRandom(), controlling=bool(connection.ice_controlling),
                      remote_anchors=anchors)


async def _punch(connection: Connection, punch: _Punch, component: int,
                 plan: PunchPlan) -> None:
    """One attempt: open the plan's extra sockets (each a host "candidate" of ours that
    is never offered), then send its packets, paced, as ICE checks of this session.
    A hit is an authenticated check arriving on one of them (or on ours from a new
    port of the peer): aioice learns the peer-reflexive pair and checks it back, and
    the search nominates it like any direct pair. Stops early once the media left
    the relay or the connection closed."""
    own = next((p for p in connection._protocols if not _is_punch_socket(p)
                and not icetcp.is_tcp(p) and getattr(p, "local_candidate", None) is not None
                and p.local_candidate.component == component
                and p.local_candidate.type == "host" and ":" not in p.local_candidate.host),
               None)
    if not plan.sends or own is None or connection.remote_password is None:
        return
    loop = asyncio.get_running_loop()
    sockets: list[StunProtocol] = [own]
    for _ in range(plan.sockets - 1):
        _transport, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(connection), local_addr=(own.local_candidate.host, 0))
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            PUNCH_FOUNDATION, component, "udp", candidate_priority(component, "host"),
            host, port, "host")
        connection._protocols.append(protocol)
        punch.sockets.append(protocol)
        sockets.append(protocol)
    if plan.strategy == "birthday-probe":
        await asyncio.sleep(PROBE_DELAY)
    logger.info("ICE: punching (%s): %d packets (%d new sockets) to %d address(es) over "
                "%.1f s, a path %.2f%% likely", plan.strategy, plan.packets, len(sockets) - 1,
                len(plan.destinations), plan.duration, 100 * plan.hit_probability)
    key = connection.remote_password.encode("utf8")
    started = loop.time()
    sent = 0
    for send in plan.sends:
        wait = started + send.at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        selected = connection._nominated.get(component)
        if selected is None or not _is_relay(selected):
            break  # closed, or the media moved: the rest is not needed
        protocol = sockets[send.socket]
        request = connection.build_request(
            CandidatePair(protocol, Candidate("x", component, "udp", 1, *send.destination,
                                              "prflx")), nominate=False)
        request.add_message_integrity(key)
        request.add_fingerprint()
        protocol.send_stun(request, send.destination)
        sent += 1
    logger.info("ICE: punching (%s) sent %d of %d packets", plan.strategy, sent, plan.packets)


def _close_punch_sockets(connection: Connection) -> None:
    """The search is over: close the punching sockets the media does not use."""
    punch = _punches.get(connection)
    if punch is None or not punch.sockets:
        return
    in_use = {pair.protocol for pair in connection._nominated.values()}
    keep = [p for p in punch.sockets if p in in_use]
    for protocol in punch.sockets:
        if protocol in keep:
            continue
        with contextlib.suppress(ValueError):
            connection._protocols.remove(protocol)
        protocol.transport.close()
    punch.sockets = keep
