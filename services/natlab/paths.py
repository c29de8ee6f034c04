"""Which lab sites can reach each other directly: the NAT compatibility rule.

RFC 8445 ICE with STUN finds a direct path between two NATs unless one of them
maps each destination to a new port (symmetric) and the other filters on the
remote port: the port the symmetric side's check comes from was never
announced, so the filtering side drops it. The matrix and the benchmarks
compare what they measure against this rule.

Sites are named by kind, "-2" for a kind's second site. Two peers in one site
share a LAN and meet host to host; two sites of one kind are two different NATs
of that type, and the rule applies to them like to any other pair.
"""

from __future__ import annotations

from services.natlab.plan import parse_site

#: What each kind of NAT looks like to a peer's ICE over IPv4 (the ipv6 site's
#: IPv4 is port-restricted; a sequential symmetric NAT is still symmetric to
#: plain ICE, which does not predict ports).
V4_KIND = {
    "ipv6": "port-restricted",
    "symmetric-seq": "symmetric",
    # Behind a carrier: a port-restricted home router (or plain LAN router) behind a
    # port-keeping NAT is port-restricted as a whole; behind a symmetric one, symmetric.
    "cgnat": "port-restricted",
    "cgnat-hairpin": "port-restricted",
    "lans": "port-restricted",
    "lans-hairpin": "port-restricted",
    "cgnat-sym": "symmetric",
}

#: Kinds whose two sites share one NAT that hairpins: their peers meet through
#: the shared public address. Without hairpinning they share an address they
#: cannot reach, and no private path (the NAT does not route between them).
HAIRPIN = {"cgnat-hairpin", "lans-hairpin"}
SHARED = {"cgnat", "cgnat-sym", "lans", *HAIRPIN}


def site_kind(site: str) -> str:
    """The kind of NAT a site name stands for ("symmetric-2" → "symmetric")."""
    return parse_site(site).kind.value


def v4_kind(site: str) -> str:
    """What a site's NAT looks like to a peer's ICE over IPv4 (``V4_KIND``)."""
    kind = site_kind(site)
    return V4_KIND.get(kind, kind)


def direct_possible(camera: str, viewer: str) -> bool:
    """Can ICE find a direct path between these two sites (RFC 8445 with STUN)?"""
    if camera == viewer:
        return True  # the same LAN: host candidates
    kinds = {site_kind(camera), site_kind(viewer)}
    if len(kinds) == 1 and kinds <= SHARED:
        return kinds <= HAIRPIN  # two sites behind one shared NAT
    if kinds == {"ipv6"}:
        return True  # both on public IPv6, which the ipv6 sites route without a firewall
    if "udp-blocked" in kinds:
        return False  # only TURN over TCP gets out
    a, b = v4_kind(camera), v4_kind(viewer)
    if "symmetric" in (a, b):
        other = b if a == "symmetric" else a
        # A symmetric NAT's per-destination port is only reachable through a NAT
        # that does not filter on the remote port (or through no NAT at all).
        return other in ("open", "full-cone", "restricted")
    return True


TCP_PORT_KEEPING = frozenset({"open", "full-cone", "restricted", "port-restricted",
                              "udp-blocked", "ipv6", "symmetric-seq"})
"""Kinds whose IPv4 NAT (if any) maps a TCP flow to the same port whatever its
destination: all but the random symmetric one. The cones' extra rules and the
sequential NAT's port counter are for UDP only (``services/natlab/rules.py``):
their TCP is plain port-keeping SNAT."""


def direct_over_tcp(camera: str, viewer: str, peercam_viewer: bool = True) -> bool:
    """ICE over TCP (RFC 6544, which peercam's peers add to plain ICE). Every lab site
    lets TCP out, the UDP-blocked one included. A side with no NAT in front listens
    where the other can connect to it (host candidates, active to passive); behind
    two NATs that keep a flow's port for every destination, both sides connect to
    each other's mapped address at once and the SYNs cross (simultaneous open,
    server-reflexive candidates). A browser viewer (``peercam_viewer`` False) only
    connects to a camera that listens in the open."""
    if site_kind(camera) == "open":
        return True
    if not peercam_viewer:
        return False
    return site_kind(viewer) == "open" or (
        site_kind(camera) in TCP_PORT_KEEPING and site_kind(viewer) in TCP_PORT_KEEPING)


def direct_with_prediction(camera: str, viewer: str, viewer_measured: bool = False,
                           peercam_viewer: bool = True, tcp: bool = True) -> bool:
    """:func:`direct_possible`, plus what peercam adds to plain ICE: behind a
    symmetric NAT that allocates ports sequentially the camera also offers the ports
    that NAT will map next (``camera/punch.py``), and a viewer behind a NAT that
    filters on the remote port reaches the right one. A CLI viewer does the same in
    the reverse roles once ``peercam natcheck`` measured its network
    (``viewer_measured``); one that never did stays as plain ICE has it. And
    :func:`direct_over_tcp`: where UDP cannot get out, a direct TCP connection
    (``peercam_viewer`` False: a browser, which only connects to a side in the open;
    ``tcp`` False: peers with ICE-TCP turned off)."""
    if direct_possible(camera, viewer) or (
            tcp and direct_over_tcp(camera, viewer, peercam_viewer)):
        return True

    def restricted(site: str) -> bool:
        return v4_kind(site) == "port-restricted"

    if site_kind(camera) == "symmetric-seq" and restricted(viewer):
        return True
    return viewer_measured and site_kind(viewer) == "symmetric-seq" and restricted(camera)
