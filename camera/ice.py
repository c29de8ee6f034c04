"""Direct paths first, even with TURN configured, decided fast: a patch to aioice's checks.

aioice (0.13) uses aggressive nomination when controlling: the first pair whose
check succeeds is nominated. A relay pair answers in one round trip to the TURN
server, while a direct pair between two NATs may need a retransmission before
the hole is open, so sessions that could have been direct would end up relayed,
costing the operator TURN bandwidth and the viewer latency. The changes, to
``Connection.check_start`` and ``Connection.check_incoming``:

1. **Deferred relay nomination** (controlling agent: in peercam the viewer; the
   camera is controlled and browsers nominate by their own rules). A relay
   pair's check is sent *without* USE-CANDIDATE while a direct (non-relay) pair
   of the same component is still being checked; when it succeeds, nomination
   waits until no direct pair can still win (:func:`relay_deadline`), at most
   ``DirectFirst.grace`` seconds. Then the highest-priority relay pair that
   answered is nominated (a relay to relay pair, say, crosses the TURN server
   twice), unless a direct pair was nominated meanwhile; RFC 8445 section 8.1.1
   leaves the choice of which valid pair to nominate to the controlling agent.
   Once a pair is nominated no later check nominates another: a check triggered
   by the peer's check arriving over its relay after ICE completed would
   otherwise replace the selected pair on both sides (aioice keeps the last).
2. **Immediate retransmit on an incoming check** (both roles). When the peer's
   check arrives for a pair whose own check is in progress, that check is
   retransmitted at once instead of at its next timer (RFC 5245 section 7.2.1.4;
   RFC 8445 section 7.3.1.4 asks for a new triggered check to the same end).
   The peer's check is what opens our NAT to it, or proves its NAT is open, so
   the retransmit gets through where the first transmission was dropped.
   Without it the camera completed ICE only at its first retransmission, ~500 ms
   after the viewer's nomination arrived, in every NAT-lab cell with the viewer
   behind a filtering cone NAT (restricted, port-restricted): ~600 ms first
   frames instead of ~150.
3. **Fast first retransmissions of direct checks** (both roles): every
   ``DirectFirst.retransmit`` seconds for the first ``DirectFirst.fast_for``
   seconds, on top of aioice's RFC 5389 schedule (0.5 s, then doubling). A
   packet the other NAT dropped because it came before that NAT's own outbound
   packet (a symmetric NAT's fresh port meeting an address-restricted one) is
   then repeated within ``retransmit`` of the hole opening, not 500 ms later.
   RFC 8445 section 14.3 suggests an RTO of at least 500 ms for checks;
   libwebrtc pings not-yet-writable pairs every 48 ms, and here the extra
   packets are at most ten ~100-byte requests per direct pair.

The rule that ends the grace (:func:`relay_deadline`, no I/O) follows from 2 and
3. A direct pair can succeed once both agents have sent on it: then at least one
side's packet reaches the other (for NATs whose filtering keys on what was sent,
the later packet is always admitted), and the receiver answers it and, by 2,
retransmits its own check at once. If the first packets crossed the other way,
the peer's next fast retransmission arrives within ``retransmit`` of our NAT
opening. So once the peer has sent on every pair and ``retransmit`` has passed
since our last direct check went out, plus two round trips, no direct pair can
still win. The peer paces its checks like we do (``pacing`` each) and started no
later than we did: it is the answerer and starts checking as it sends its answer,
with every candidate of our (non-trickled) offer. The round trip is estimated by
the relay pair's own check, which goes through the TURN server and so is longer
than the direct path in all but odd routings; ``margin`` absorbs scheduling
delays. In the NAT lab the grace now ends 60-250 ms after the relay pair
answered instead of 1 s. ``check_start`` below follows aioice 0.13.0's line by
line apart from these changes; the version is pinned in pyproject.toml and
checked here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aioice
from aioice import stun
from aioice.ice import CandidatePair, Connection, candidate_pair_priority

logger = logging.getLogger(__name__)

_State = CandidatePair.State
_ORIGINAL_CHECK_START = Connection.check_start
_ORIGINAL_CHECK_INCOMING = Connection.check_incoming
_PENDING = (_State.FROZEN, _State.WAITING, _State.IN_PROGRESS)


@dataclass(frozen=True)
class DirectFirst:
    """Timers of the direct-first rules, in seconds (parameters, so tests can shrink them)."""

    grace: float = 1.0
    """The longest a successful relay pair waits for a direct pair to win."""
    pacing: float = 0.02
    """Ta: one new check per ``pacing`` (aioice's connect() loop, RFC 8445 section 14.2)."""
    retransmit: float = 0.1
    """Interval of the extra retransmissions of a direct check while it is young."""
    fast_for: float = 1.0
    """How long a direct check gets the extra retransmissions."""
    margin: float = 0.05
    """Slack for event-loop and scheduling delays on either side."""


#: Seconds a successful relay pair waits for a direct pair, at most.
DEFAULT_GRACE = DirectFirst.grace
_timing = DirectFirst()

# Per check-list bookkeeping, dropped with the objects (aioice owns them).
_first_check: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
_sent_at: weakref.WeakKeyDictionary[CandidatePair, float] = weakref.WeakKeyDictionary()
_in_flight: weakref.WeakKeyDictionary[CandidatePair, stun.Message] = weakref.WeakKeyDictionary()
_waiting_relays: weakref.WeakKeyDictionary[Connection, weakref.WeakSet[CandidatePair]] = (
    weakref.WeakKeyDictionary())


def relay_deadline(
    timing: DirectFirst,
    *,
    first_check: float,
    relay_ok: float,
    relay_rtt: float,
    pairs: int,
    direct_sent: Sequence[float | None],
) -> float:
    """When a successful relay pair stops waiting for a direct pair (clock of the inputs).

    ``first_check``: when this agent started its first check; ``relay_ok``: when
    the relay pair's check succeeded; ``relay_rtt``: how long that check took;
    ``pairs``: the check list's length; ``direct_sent``: for each direct pair
    still pending, when its current check was sent (None: not sent yet). The
    caller ends the grace at once when no direct pair is pending at all.
    """
    cap = relay_ok + timing.grace
    if any(sent is None for sent in direct_sent):
        return cap  # asked again once that pair's check is out
    peer_sent_all = first_check + timing.pacing * pairs
    ours = max((sent for sent in direct_sent if sent is not None), default=first_check)
    settled = max(peer_sent_all, ours + timing.retransmit) + 2 * relay_rtt + timing.margin
    return min(cap, settled)


def _is_relay(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _pending_direct(connection: Connection, component: int) -> list[CandidatePair]:
    """Direct pairs of this component still unchecked or in flight."""
    return [
        p for p in connection._check_list
        if p.component == component and not _is_relay(p) and p.state in _PENDING
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
    loop = asyncio.get_running_loop()
    waiting = _waiting_relays.setdefault(connection, weakref.WeakSet())
    waiting.add(pair)
    try:
        while True:
            if pair.component in connection._nominated:
                return True
            pending = _pending_direct(connection, pair.component)
            deadline = relay_ok if not pending else relay_deadline(
                _timing,
                first_check=_first_check.get(connection, relay_ok),
                relay_ok=relay_ok,
                relay_rtt=relay_rtt,
                pairs=len(connection._check_list),
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
    fast = None if _is_relay(pair) else _FastRetransmit(pair, request)
    try:
        return await pair.protocol.request(
            request, pair.remote_addr, integrity_key=connection.remote_password.encode("utf8")
        )
    finally:
        _in_flight.pop(pair, None)
        if fast is not None:
            fast.cancel()


async def check_start(self: Connection, pair: CandidatePair) -> None:
    """aioice 0.13.0 ``Connection.check_start`` with the changes above."""
    assert self.remote_password is not None
    loop = asyncio.get_running_loop()
    self.check_state(pair, _State.IN_PROGRESS)
    _first_check.setdefault(self, loop.time())

    defer = (self.ice_controlling and _is_relay(pair)
             and bool(_pending_direct(self, pair.component)))
    # Once a pair is nominated, a late check (say, triggered by the peer's check
    # arriving over a relay) must not nominate another: aioice would replace
    # the selected pair, on both sides, with whichever was nominated last.
    settled = pair.component in self._nominated
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
          and pair.component not in self._nominated):
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
    request = _in_flight.get(pair) if in_progress and pair is not None else None
    if pair is not None and request is not None:
        protocol.send_stun(request, pair.remote_addr)


def prefer_direct(enabled: bool = True, timing: DirectFirst | None = None) -> None:
    """Install (or remove) the changes above, process-wide."""
    global _timing
    if not aioice.__version__.startswith("0.13."):
        raise RuntimeError(f"peercam patches aioice 0.13 internals; found {aioice.__version__}")
    _timing = timing or DirectFirst()
    start: Any = check_start if enabled else _ORIGINAL_CHECK_START
    incoming: Any = check_incoming if enabled else _ORIGINAL_CHECK_INCOMING
    Connection.check_start = start  # type: ignore[method-assign]
    Connection.check_incoming = incoming  # type: ignore[method-assign]
