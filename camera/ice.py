"""Direct paths first, even with TURN configured, decided fast: the rules and their timers.

aioice (0.13) uses aggressive nomination when controlling: the first pair whose
check succeeds is nominated. A relay pair answers in one round trip to the TURN
server, while a direct pair between two NATs may need a retransmission before
the hole is open, so sessions that could have been direct would end up relayed,
costing the operator TURN bandwidth and the viewer latency. The changes, to
``Connection.check_start`` and ``Connection.check_incoming`` (made in
:mod:`camera.compat.ice`, the one module that touches aioice's internals):

1. **Deferred relay nomination** (controlling agent: in peercam the viewer; the
   camera is controlled and browsers nominate by their own rules), so this rule
   belongs to the viewer: :mod:`camera.client.ice` installs it. A relay
   pair's check is sent *without* USE-CANDIDATE while a direct (non-relay) pair
   of the same component is still being checked; when it succeeds, nomination
   waits until no direct pair can still win (``relay_deadline``), at most
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

The rule that ends the grace (:func:`camera.client.ice.relay_deadline`, no I/O)
follows from 2 and 3. A direct pair can succeed once both agents have sent on it: then at least one
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
answered instead of 1 s. :func:`camera.compat.ice.check_start` follows aioice
0.13.0's line by line apart from these changes; the version is pinned in
pyproject.toml and checked, with every member the patch uses, by :mod:`camera.compat`.

Rules 4 to 6 (what the controlled camera checks first, a trickled candidate checked
as it arrives, when the camera's answer leaves) are at :func:`check_rank` and
:func:`answer_waits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
    trickled_at_once: bool = True
    """Rule 5: a trickled remote candidate's best pair is checked as it arrives."""
    answer_hold: float = 0.1
    """Rule 6: the longest the controlled agent's answer waits for its check to one of
    the peer's server-reflexive (or relayed) candidates; 0 never waits."""
    answer_hold_after_host: float = 0.03
    """Rule 6: ... and at most this long after the peer's first host candidate (its
    server-reflexive one follows within a STUN round trip, or never: UDP blocked)."""


#: Seconds a successful relay pair waits for a direct pair, at most.
DEFAULT_GRACE = DirectFirst.grace


@dataclass(frozen=True)
class Upgrade:
    """Background checks for a direct path while the media goes through a relay.

    ICE selects a relay pair when no direct pair answered in time: the NATs allow
    nothing direct, or something did not yet (a path that came up late, a NAT
    mapping that was missing, a filter that opened after the checks gave up).
    Both ends then check every direct pair again at ``rounds`` (seconds after ICE
    completed); when one answers, the controlling agent (the viewer) nominates it
    and both move the media there. DTLS and SRTP do not care which pair carries
    them, so the session, its keys and the decoder's state go on: no new session,
    no keyframe. The rounds stop at the first direct pair selected, after the
    last round, or when ``max_packets`` would be exceeded, whichever is first.
    """

    rounds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
    retransmissions: int = 2
    """Retransmissions of a round's check after its first send (aioice's 0.5 s RTO,
    doubling), on top of the fast ones of a young direct check (``DirectFirst``)."""
    max_packets: int = 1500
    """Requests one connection may send in all its rounds together."""
    enabled: bool = True


def packets_per_check(upgrade: Upgrade, timing: DirectFirst) -> int:
    """The most requests one round's check of one pair sends."""
    fast = max(0, int(round(timing.fast_for / timing.retransmit)) - 1)
    return 1 + upgrade.retransmissions + fast


def round_fits(upgrade: Upgrade, timing: DirectFirst, sent: int, pairs: int) -> bool:
    """Whether a round over ``pairs`` direct pairs stays within the packet budget."""
    return sent + pairs * packets_per_check(upgrade, timing) <= upgrade.max_packets


def check_rank(controlling: bool, local_type: str, remote_type: str) -> int:
    """Where a candidate pair goes in the check order, before its priority (0 first).

    4. **Reflexive first when controlled** (the camera). The controlled agent's
       checks select nothing (the controlling viewer nominates); what they do is
       open our NAT for the viewer's checks. Its first check, sent as it answers,
       went to the viewer's host candidate, which only a viewer on our LAN can
       reach, and the one to the viewer's server-reflexive candidate 20 ms
       (``pacing``) later; a viewer's check to our server-reflexive candidate that
       arrived in between was dropped by our NAT. Checking the viewer's
       server-reflexive candidates from our host candidates first opens the hole
       as the answer leaves, so the viewer's very first check through it succeeds
       (the web viewer checks our server-reflexive candidate first, see
       docs/protocol.md). On a LAN the viewer's own host check arrives and is
       answered (and our check retransmitted at once, rule 2) whatever our order.
    """
    if not controlling and local_type == "host" and remote_type == "srflx":
        return 0
    return 1


REFLEXIVE_TYPES = frozenset({"srflx", "relay"})
"""Candidate types whose arrival ends an answer's wait (rule 6)."""


def answer_waits(*, trickled: bool, servers: bool, offered_types: Iterable[str]) -> bool:
    """Whether the controlled agent (the camera) holds its answer back (rule 6) until
    its check to one of the viewer's server-reflexive or relayed candidates has left,
    or the viewer's end-of-candidates came without one, at most
    ``DirectFirst.answer_hold`` after the answer was made and
    ``DirectFirst.answer_hold_after_host`` after the viewer's first host candidate;
    ``offered_types`` are the candidate types in the offer.

    5. **A trickled candidate is checked at once** (both roles). aioice checks a
       candidate that arrives while it is connecting only at a later tick of its
       20 ms pacing, and after every pair still waiting: the camera's check that
       opens its NAT to the viewer's trickled server-reflexive address left 3 to
       40 ms after that address arrived in the NAT lab. Now the candidate's best
       pair (in :func:`check_rank`'s order) is checked as it is added.
    6. **The answer leaves once the camera's NAT is open to the viewer.** A
       browser starts gathering only once its offer is applied, and sends the
       offer at once (trickle ICE): in the NAT lab the camera's answer was often
       back before the viewer's server-reflexive candidate reached the camera, or
       left in the same instant as the camera's first check. The browser then
       checked the camera's server-reflexive candidate at once, through a NAT the
       camera had not yet opened to it (it cannot before it has that candidate
       and has sent to it), and checked again only ~48 ms later (Chromium's pace
       for a pair that has not answered). Sent after the camera's check to that
       candidate, the answer makes the browser's first check meet an open NAT. A
       relayed candidate counts too. A viewer whose UDP is blocked has no
       server-reflexive candidate, and its relayed one (TURN over TCP) came ~50 ms
       after the answer was made, which held the answer that long in the lab for
       nothing (the browser's own TURN round trips decide that path): so the wait
       ends 30 ms after the viewer's first host candidate (in the NAT lab its
       server-reflexive one followed within 26 ms in 196 sessions of 200). No
       wait when the viewer does not trickle (its offer, with its candidates, is
       all there is: the CLI viewer) or the offer already has such a candidate,
       nor when the session has no STUN or TURN server (the rendezvous gives the
       viewer the same STUN server as the camera: without one no
       server-reflexive candidate is coming).
    """
    return trickled and servers and not any(t in REFLEXIVE_TYPES for t in offered_types)
