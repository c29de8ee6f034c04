"""A NAT lab on the real kernel: network namespaces, a bridge and nftables NATs.

One public segment (203.0.113.0/24, 2001:db8:0:1::/64) joins a server with two
addresses (for RFC 5780 behaviour discovery), a public host and one router per NAT
site; each router hides a host on its own 198.51.100.0/28 LAN. Every NAT's mapping
and filtering (RFC 4787 terms) is probed when the lab comes up. See ``Lab``; faults
(links down, NAT state lost, a host moved) and impairments (loss, delay, jitter,
reordering, a rate cap) are in ``services.natlab.faults`` and ``shaping``.
"""

from services.natlab.errors import (
    CommandFailed,
    LabBusy,
    NatLabError,
    NatMismatch,
    NeedsRoot,
    UnknownSite,
)
from services.natlab.faults import BadFault, FaultTimeout, LinkFault, NetlinkWatcher, Remapped
from services.natlab.lab import Impaired, Lab, sweep
from services.natlab.plan import ALL_SITES, Behaviour, Kind
from services.natlab.shaping import BadImpairment, Impairment

__all__ = [
    "ALL_SITES",
    "BadFault",
    "BadImpairment",
    "Behaviour",
    "CommandFailed",
    "FaultTimeout",
    "Impaired",
    "Impairment",
    "Kind",
    "Lab",
    "LinkFault",
    "NetlinkWatcher",
    "Remapped",
    "LabBusy",
    "NatLabError",
    "NatMismatch",
    "NeedsRoot",
    "UnknownSite",
    "sweep",
]
