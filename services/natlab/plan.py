"""The lab's addressing plan and the behaviour each NAT kind promises. No I/O.

Only documentation ranges are used, so nothing here can collide with or leak to
a real network: 203.0.113.0/24 (RFC 5737 TEST-NET-3) is the "public internet",
198.51.100.0/24 (TEST-NET-2) is cut into /28 LANs behind the NATs, and
2001:db8::/32 (RFC 3849) carries IPv6.

    pcl-inet     a bridge; every public namespace has a veth on it
    pcl-server   203.0.113.1, 203.0.113.2, 2001:db8:0:1::1, 2001:db8:0:1::2
    pcl-open     203.0.113.10 (a second instance "open-2": 203.0.113.11)
    pcl-K-nat    router of site K: wan0 = 203.0.113.(100 + k), lan0 = 198.51.100.(16 i + 1)
    pcl-K        host of site K: eth0 = 198.51.100.(16 i + 2), default route via the router
    pcl-K-wire   between host and router (or, for open, the public bridge): a bridge
                 h0 <-> u0, replaced by a user-space forwarder while K is impaired
    pcl-roam     the roaming host, created on demand: 198.51.100.(16 i + 3) in the
                 LAN of whichever NAT site it is plugged into

A router's LAN side is a bridge ``lan0`` (ports: ``lanw`` to the wire, and ``roam``
while the roaming host is there).

where k is the kind's number (full-cone 1 … udp-blocked 6, symmetric-seq 7) and i = k for the
first instance of a kind, k + 8 for the second ("K-2", public 203.0.113.(200 + k)).
The ipv6 site's router also routes 2001:db8:0:1::(100 + k) <-> 2001:db8:0:(100 + k)::/64
without NAT; the hex group reuses the decimal digits so ::105 reads as .105.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

PREFIX = "pcl-"
"""Every namespace the lab makes starts with this, so a sweep finds leftovers."""

INET_NS = PREFIX + "inet"
SERVER_NS = PREFIX + "server"
SERVER_SITE = "server"
SERVER_INET_PORT = "psrv"
"""The server's port on the public bridge (a site's is ``Site.inet_port``)."""

ROAM_SITE = "roam"
"""The roaming host: one extra host whose link moves between the NAT sites' LANs."""
ROAM_NS = PREFIX + ROAM_SITE
ROAM_ROUTER_PORT = "roam"
"""The roaming host's link as it appears in the router of the site it is plugged into."""

WIRE_HOST_SIDE = "h0"
"""In a site's wire namespace: the veth towards the site's host (its eth0)."""
WIRE_UPLINK_SIDE = "u0"
"""In a site's wire namespace: the veth towards the router's LAN (or, for the open
site, the public bridge)."""
ROUTER_WIRE_PORT = "lanw"
"""In a router: the LAN bridge ``lan0``'s port towards the wire."""

SERVER_IPS = ("203.0.113.1", "203.0.113.2")
SERVER_IPS6 = ("2001:db8:0:1::1", "2001:db8:0:1::2")
PUBLIC_PREFIXLEN = 24
PUBLIC_PREFIXLEN6 = 64
LAN_PREFIXLEN = 28
LAN_PREFIXLEN6 = 64


class Kind(StrEnum):
    """The kinds of site, named as users name them (RFC 3489 §5 for the cones)."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED = "restricted"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"
    IPV6 = "ipv6"
    UDP_BLOCKED = "udp-blocked"
    SYMMETRIC_SEQUENTIAL = "symmetric-seq"
    """Symmetric, but each new flow gets the next port (predictable); "symmetric"
    picks every port at random."""


KIND_NUMBER = {
    Kind.OPEN: 0,
    Kind.FULL_CONE: 1,
    Kind.RESTRICTED: 2,
    Kind.PORT_RESTRICTED: 3,
    Kind.SYMMETRIC: 4,
    Kind.IPV6: 5,
    Kind.UDP_BLOCKED: 6,
    Kind.SYMMETRIC_SEQUENTIAL: 7,
}

ALL_SITES: tuple[str, ...] = tuple(kind.value for kind in Kind)
"""The default sites: one of each kind."""

# RFC 4787 §4.1 (mapping) and §5 (filtering) vocabulary, plus two lab words:
# "none" = the address seen outside is the host's own; "udp-blocked" = no UDP gets out.
EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"
NO_NAT = "none"
BLOCKED = "udp-blocked"


class Behaviour(NamedTuple):
    """A NAT's UDP behaviour as a pair, so it compares equal to a plain tuple."""

    mapping: str
    filtering: str


EXPECTED: dict[Kind, Behaviour] = {
    Kind.OPEN: Behaviour(NO_NAT, EIM),
    Kind.FULL_CONE: Behaviour(EIM, EIM),
    Kind.RESTRICTED: Behaviour(EIM, ADM),
    Kind.PORT_RESTRICTED: Behaviour(EIM, APDM),
    Kind.SYMMETRIC: Behaviour(APDM, APDM),
    Kind.IPV6: Behaviour(EIM, APDM),
    Kind.UDP_BLOCKED: Behaviour(BLOCKED, BLOCKED),
    Kind.SYMMETRIC_SEQUENTIAL: Behaviour(APDM, APDM),
}
"""IPv4 UDP behaviour per kind; the ipv6 site's IPv4 sits behind a port-restricted NAT."""

EXPECTED6 = Behaviour(NO_NAT, EIM)
"""IPv6 of the ipv6 site: a routed public address, no NAT and no firewall."""

_SITE_NAME = re.compile(r"(?P<kind>[a-z0-9-]+?)(?:-(?P<instance>2))?")


@dataclass(frozen=True)
class Site:
    """One site of the lab and every address it has."""

    name: str
    """What users call it: a kind ("symmetric") or a kind's second instance ("symmetric-2")."""

    kind: Kind
    """How its router behaves."""

    instance: int
    """1 or 2: two sites of one kind let two peers sit behind the same NAT type."""

    @property
    def number(self) -> int:
        """Index of the site's /28 LAN in 198.51.100.0/24 (0 is never used)."""
        return KIND_NUMBER[self.kind] + 8 * (self.instance - 1)

    @property
    def natted(self) -> bool:
        """Whether a router stands between the host and the public segment."""
        return self.kind is not Kind.OPEN

    @property
    def namespace(self) -> str:
        """The namespace of the site's host (where users run their programs)."""
        return PREFIX + self.name

    @property
    def router_namespace(self) -> str | None:
        """The namespace of the site's NAT router, or None for the open site."""
        return PREFIX + self.name + "-nat" if self.natted else None

    @property
    def wire_namespace(self) -> str:
        """The namespace between the host and its uplink, where impairments happen."""
        return PREFIX + self.name + "-wire"

    @property
    def inet_port(self) -> str:
        """The site's port on the public bridge in ``pcl-inet`` (its "ISP line")."""
        return f"p{self.number}"

    @property
    def roamer_ip(self) -> str:
        """The roaming host's address while it is plugged into this site's LAN."""
        if not self.natted:
            raise ValueError(f"site {self.name!r} has no LAN to roam into")
        return f"198.51.100.{16 * self.number + 3}"

    @property
    def public_ip(self) -> str:
        """The IPv4 address the public segment sees: the host's or the router's."""
        if not self.natted:
            return f"203.0.113.{9 + self.instance}"
        return f"203.0.113.{100 * self.instance + KIND_NUMBER[self.kind]}"

    @property
    def router_lan_ip(self) -> str:
        """The router's address on the site LAN (the host's default gateway)."""
        return f"198.51.100.{16 * self.number + 1}"

    @property
    def host_ip(self) -> str:
        """The host's own IPv4 address: private behind a NAT, public for the open site."""
        return f"198.51.100.{16 * self.number + 2}" if self.natted else self.public_ip

    @property
    def lan_cidr(self) -> str:
        """The site LAN, which the router translates."""
        return f"198.51.100.{16 * self.number}/{LAN_PREFIXLEN}"

    @property
    def has_ipv6(self) -> bool:
        """Whether the site has a routed, public IPv6 prefix."""
        return self.kind is Kind.IPV6

    @property
    def _group6(self) -> int:
        # Decimal digits read as hex: site 105 gets ::105 and 2001:db8:0:105::/64.
        return int(str(100 * self.instance + KIND_NUMBER[self.kind]), 16)

    @property
    def router_public_ip6(self) -> str:
        """The router's IPv6 address on the public segment (next hop to the site)."""
        return f"2001:db8:0:1::{self._group6:x}"

    @property
    def router_link_local6(self) -> str:
        """The router's link-local address on the public segment (unique there)."""
        return f"fe80::{self._group6:x}/64"

    @property
    def lan_prefix6(self) -> str:
        """The site's routed IPv6 prefix."""
        return f"2001:db8:0:{self._group6:x}::/{LAN_PREFIXLEN6}"

    @property
    def router_lan_ip6(self) -> str:
        """The router's IPv6 address on the site LAN."""
        return f"2001:db8:0:{self._group6:x}::1"

    @property
    def host_ip6(self) -> str:
        """The host's public IPv6 address (no NAT)."""
        return f"2001:db8:0:{self._group6:x}::2"

    @property
    def expected(self) -> Behaviour:
        """The IPv4 UDP behaviour the kind promises."""
        return EXPECTED[self.kind]


def parse_site(name: str) -> Site:
    """The site called ``name``: a kind, or a kind with "-2" for its second instance."""
    match = _SITE_NAME.fullmatch(name)
    if match is not None:
        try:
            kind = Kind(match["kind"])
        except ValueError:
            pass
        else:
            return Site(name=name, kind=kind, instance=int(match["instance"] or 1))
    raise ValueError(
        f"unknown site {name!r}: use one of {', '.join(ALL_SITES)} (or one with '-2' appended)"
    )


def parse_sites(names: Sequence[str] | None) -> tuple[Site, ...]:
    """The sites to build, in the order given, each once."""
    sites = tuple(parse_site(name) for name in (ALL_SITES if names is None else names))
    seen: set[str] = set()
    for site in sites:
        if site.name in seen:
            raise ValueError(f"site {site.name!r} is listed twice")
        seen.add(site.name)
    return sites
