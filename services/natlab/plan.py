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
Sites behind a shared NAT (``Carrier``: a CGNAT, or one router in front of two
LANs; kinds in ``CARRIER_KINDS``, carrier number c = 1 … 5):

    pcl-KIND-cgn  the shared NAT: wan0 = 203.0.113.(50 + c) on the public bridge,
                  bridge isp0 = 100.64.c.1/24 (RFC 6598 shared address space)
    pcl-K-nat     wan0 = 100.64.c.(1 + instance) on isp0, default route via .1
    pcl-K         192.0.2.(16 j + 2), j = 2 c + instance - 1 (RFC 5737 TEST-NET-1)

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
    CGNAT_SYMMETRIC = "cgnat-sym"
    """A home NAT (port-restricted) behind a symmetric carrier-grade NAT."""
    CGNAT = "cgnat"
    """A home NAT (port-restricted) behind an endpoint-independent CGNAT that does
    not hairpin."""
    CGNAT_HAIRPIN = "cgnat-hairpin"
    """As "cgnat", and the CGNAT hairpins (RFC 4787 REQ-9)."""
    LANS = "lans"
    """One of two LANs behind one port-restricted NAT that neither routes between
    them nor hairpins (a guest network beside the main one)."""
    LANS_HAIRPIN = "lans-hairpin"
    """As "lans", and the NAT hairpins."""


KIND_NUMBER = {
    Kind.OPEN: 0,
    Kind.FULL_CONE: 1,
    Kind.RESTRICTED: 2,
    Kind.PORT_RESTRICTED: 3,
    Kind.SYMMETRIC: 4,
    Kind.IPV6: 5,
    Kind.UDP_BLOCKED: 6,
    Kind.SYMMETRIC_SEQUENTIAL: 7,
    Kind.CGNAT_SYMMETRIC: 8,
    Kind.CGNAT: 9,
    Kind.CGNAT_HAIRPIN: 10,
    Kind.LANS: 11,
    Kind.LANS_HAIRPIN: 12,
}

CARRIER_KINDS = (Kind.CGNAT_SYMMETRIC, Kind.CGNAT, Kind.CGNAT_HAIRPIN, Kind.LANS,
                 Kind.LANS_HAIRPIN)
"""Kinds whose sites sit behind a shared upstream NAT (a ``Carrier``); a kind's
two sites ("K" and "K-2") share one."""

ALL_SITES: tuple[str, ...] = tuple(kind.value for kind in Kind if kind not in CARRIER_KINDS)
"""The default sites: one of each kind with its own NAT (the shared-NAT kinds are
asked for by name, usually in pairs)."""

CGNAT_SPACE = "100.64.0.0/10"
"""RFC 6598 shared address space: the carrier's side of a CGNAT."""
CARRIER_LAN_NET = "192.0.2"
"""RFC 5737 TEST-NET-1, cut into /28 LANs for the sites behind a carrier."""

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
    Kind.CGNAT_SYMMETRIC: Behaviour(APDM, APDM),
    Kind.CGNAT: Behaviour(EIM, APDM),
    Kind.CGNAT_HAIRPIN: Behaviour(EIM, APDM),
    Kind.LANS: Behaviour(EIM, APDM),
    Kind.LANS_HAIRPIN: Behaviour(EIM, APDM),
}
"""IPv4 UDP behaviour per kind; the ipv6 site's IPv4 sits behind a port-restricted NAT."""

EXPECTED6 = Behaviour(NO_NAT, EIM)
"""IPv6 of the ipv6 site: a routed public address, no NAT and no firewall."""

_SITE_NAME = re.compile(r"(?P<kind>[a-z0-9-]+?)(?:-(?P<instance>2))?")


@dataclass(frozen=True)
class Carrier:
    """A NAT that several sites share: a carrier-grade NAT in front of home routers,
    or one router in front of two LANs."""

    kind: Kind

    @property
    def number(self) -> int:
        """1 … 5 in ``CARRIER_KINDS`` order: its inside /24 is 100.64.<number>.0."""
        return CARRIER_KINDS.index(self.kind) + 1

    @property
    def namespace(self) -> str:
        return PREFIX + self.kind.value + "-cgn"

    @property
    def inet_port(self) -> str:
        """Its port on the public bridge in ``pcl-inet``."""
        return f"c{self.number}"

    @property
    def public_ip(self) -> str:
        return f"203.0.113.{50 + self.number}"

    @property
    def inside_ip(self) -> str:
        """Its address on the inside segment (the homes' default gateway)."""
        return f"100.64.{self.number}.1"

    @property
    def inside_cidr(self) -> str:
        return f"100.64.{self.number}.0/24"

    @property
    def symmetric(self) -> bool:
        """Maps every destination to a new random port (else endpoint-independent)."""
        return self.kind is Kind.CGNAT_SYMMETRIC

    @property
    def hairpin(self) -> bool:
        """Sends a packet from inside to its own public address:port back inside."""
        return self.kind in (Kind.CGNAT_HAIRPIN, Kind.LANS_HAIRPIN)

    @property
    def homes_translate(self) -> bool:
        """The sites' own routers NAT (home routers) rather than just route (LANs)."""
        return self.kind not in (Kind.LANS, Kind.LANS_HAIRPIN)

    @property
    def lan_supernet(self) -> str:
        """Every LAN behind this carrier (two /28s)."""
        return f"{CARRIER_LAN_NET}.{32 * self.number}/27"


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
    def carrier(self) -> Carrier | None:
        """The NAT this site shares with its kind's other site, if any."""
        return Carrier(self.kind) if self.kind in CARRIER_KINDS else None

    @property
    def _lan_slot(self) -> int:
        """Index of the site's /28 LAN in its /24: 198.51.100.0/24, or 192.0.2.0/24
        behind a carrier."""
        carrier = self.carrier
        if carrier is not None:
            return 2 * carrier.number + self.instance - 1
        return KIND_NUMBER[self.kind] + 8 * (self.instance - 1)

    @property
    def _lan_net(self) -> str:
        return CARRIER_LAN_NET if self.carrier is not None else "198.51.100"

    @property
    def number(self) -> int:
        """A number unique in the lab (0 is never used): the LAN's index in
        198.51.100.0/24, or 16 + its index in 192.0.2.0/24 behind a carrier."""
        return self._lan_slot + (16 if self.carrier is not None else 0)

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
        """The site's port on its uplink bridge (its "ISP line"): in ``pcl-inet``, or in
        the carrier's namespace for a site behind a carrier."""
        return f"p{self.number}"

    @property
    def roamer_ip(self) -> str:
        """The roaming host's address while it is plugged into this site's LAN."""
        if not self.natted:
            raise ValueError(f"site {self.name!r} has no LAN to roam into")
        return f"{self._lan_net}.{16 * self._lan_slot + 3}"

    @property
    def public_ip(self) -> str:
        """The IPv4 address the public segment sees: the host's, the router's, or
        the carrier's (shared with the kind's other site)."""
        if not self.natted:
            return f"203.0.113.{9 + self.instance}"
        if self.carrier is not None:
            return self.carrier.public_ip
        return f"203.0.113.{100 * self.instance + KIND_NUMBER[self.kind]}"

    @property
    def wan_ip(self) -> str:
        """The router's own address on its uplink: ``public_ip``, or in 100.64.0.0/10
        behind a carrier."""
        if self.carrier is not None:
            return f"100.64.{self.carrier.number}.{1 + self.instance}"
        return self.public_ip

    @property
    def router_lan_ip(self) -> str:
        """The router's address on the site LAN (the host's default gateway)."""
        return f"{self._lan_net}.{16 * self._lan_slot + 1}"

    @property
    def host_ip(self) -> str:
        """The host's own IPv4 address: private behind a NAT, public for the open site."""
        if not self.natted:
            return self.public_ip
        return f"{self._lan_net}.{16 * self._lan_slot + 2}"

    @property
    def lan_cidr(self) -> str:
        """The site LAN, which the router translates."""
        return f"{self._lan_net}.{16 * self._lan_slot}/{LAN_PREFIXLEN}"

    @property
    def translates(self) -> bool:
        """Whether the site's own router translates (all but the "lans" kinds' routers)."""
        carrier = self.carrier
        return self.natted and (carrier is None or carrier.homes_translate)

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
