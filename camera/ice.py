"""Direct paths first, even with TURN configured: a patch to aioice's checks.

aioice (0.13) uses aggressive nomination when controlling: the first pair whose
check succeeds is nominated. A relay pair answers in one round trip to the TURN
server, while a direct pair between two NATs often needs a retransmission
(~500 ms) before the hole is open, so sessions that could have been direct end
up relayed, costing the operator TURN bandwidth and the viewer latency.

Here a relay pair's check is sent *without* USE-CANDIDATE while a direct
(non-relay) pair of the same component is still being checked; when it
succeeds, nomination waits up to ``grace`` seconds for a direct pair to win,
and nominates the relay pair only if none does (RFC 8445 section 8.1.1 leaves
the choice of which valid pair to nominate to the controlling agent).

Only the controlling agent nominates: in peercam that is the viewer, so the CLI
viewer installs this; browsers apply their own (priority-ordered) nomination.
``check_start`` below follows aioice 0.13.0's line by line apart from that; the
version is pinned in pyproject.toml and checked here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aioice
from aioice import stun
from aioice.ice import CandidatePair, Connection

logger = logging.getLogger(__name__)

_State = CandidatePair.State
_ORIGINAL = Connection.check_start
#: Seconds a successful relay pair waits for a direct pair before being nominated.
DEFAULT_GRACE = 1.0
_grace = DEFAULT_GRACE


def _is_relay(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _direct_pending(connection: Connection, pair: CandidatePair) -> bool:
    """Is a direct pair of this component still unchecked or in flight?"""
    return any(
        p.component == pair.component
        and not _is_relay(p)
        and p.state in (_State.FROZEN, _State.WAITING, _State.IN_PROGRESS)
        for p in connection._check_list
    )


async def _direct_won(connection: Connection, pair: CandidatePair) -> bool:
    """Wait until a pair of this component is nominated (True) or no direct pair can
    still win within the grace period (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _grace
    while loop.time() < deadline:
        if pair.component in connection._nominated:
            return True
        if not _direct_pending(connection, pair):
            return False
        await asyncio.sleep(0.02)
    return pair.component in connection._nominated


async def check_start(self: Connection, pair: CandidatePair) -> None:
    """aioice 0.13.0 ``Connection.check_start`` with relay nomination deferred."""
    assert self.remote_password is not None
    self.check_state(pair, _State.IN_PROGRESS)

    defer = self.ice_controlling and _is_relay(pair) and _direct_pending(self, pair)
    nominate = self.ice_controlling and not self.remote_is_lite and not defer
    request = self.build_request(pair, nominate=nominate)
    try:
        response, addr = await pair.protocol.request(
            request, pair.remote_addr, integrity_key=self.remote_password.encode("utf8")
        )
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
        if await _direct_won(self, pair):
            logger.info("ICE: direct pair won; relay pair %s not nominated", pair)
            self.check_state(pair, _State.SUCCEEDED)
            self.check_complete(pair)
            return
        if not await _nominate(self, pair):
            return
    elif self.ice_controlling and pair.component not in self._nominating:
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


def prefer_direct(enabled: bool = True, grace: float = DEFAULT_GRACE) -> None:
    """Install (or remove) the deferred relay nomination, process-wide."""
    global _grace
    if not aioice.__version__.startswith("0.13."):
        raise RuntimeError(f"peercam patches aioice 0.13 internals; found {aioice.__version__}")
    _grace = grace
    patched: Any = check_start if enabled else _ORIGINAL
    Connection.check_start = patched  # type: ignore[method-assign]
