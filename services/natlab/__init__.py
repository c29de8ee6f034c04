"""A NAT lab on the real kernel: network namespaces, a bridge and nftables NATs.

One public segment (203.0.113.0/24, 2001:db8:0:1::/64) joins a server with two
addresses (for RFC 5780 behaviour discovery), a public host and one router per NAT
site; each router hides a host on its own 198.51.100.0/28 LAN. Every NAT's mapping
and filtering (RFC 4787 terms) is probed when the lab comes up. See ``Lab``.
"""

from services.natlab.errors import (
    CommandFailed,
    LabBusy,
    NatLabError,
    NatMismatch,
    NeedsRoot,
    UnknownSite,
)
from services.natlab.lab import Lab, sweep
from services.natlab.plan import ALL_SITES, Behaviour, Kind

__all__ = [
    "ALL_SITES",
    "Behaviour",
    "CommandFailed",
    "Kind",
    "Lab",
    "LabBusy",
    "NatLabError",
    "NatMismatch",
    "NeedsRoot",
    "UnknownSite",
    "sweep",
]
