"""The viewer's ICE rule: a relay pair is nominated only once no direct pair can win.

Rule 1 of :mod:`camera.ice` (deferred relay nomination) applies to the
controlling agent, which in peercam is the viewer: it offers, the camera
answers. :func:`relay_deadline` is the rule (numbers in, a deadline out);
:func:`install` hands it to :mod:`camera.compat.ice`, which applies it inside
aioice's checks. The camera never installs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from camera import compat
from camera.ice import DirectFirst


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


def install() -> None:
    """Check and install the library hooks (camera.compat), with this rule; idempotent."""
    compat.ensure_installed()
    compat.ice.set_relay_policy(relay_deadline)
