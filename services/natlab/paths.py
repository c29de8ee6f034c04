"""Which lab sites can reach each other directly: the NAT compatibility rule.

RFC 8445 ICE with STUN finds a direct path between two NATs unless one of them
maps each destination to a new port (symmetric) and the other filters on the
remote port: the port the symmetric side's check comes from was never
announced, so the filtering side drops it. The matrix and the benchmarks
compare what they measure against this rule.
"""

from __future__ import annotations

#: What each site's NAT looks like to a peer over IPv4 (the ipv6 site's IPv4 is
#: port-restricted; the other sites have no IPv6).
V4_KIND = {"ipv6": "port-restricted"}


def direct_possible(camera: str, viewer: str) -> bool:
    """Can ICE find a direct path between these two sites (RFC 8445 with STUN)?"""
    if camera == viewer or {camera, viewer} == {"ipv6", "ipv6-2"}:
        return True  # the same LAN (host candidates), or both on public IPv6
    if "udp-blocked" in (camera, viewer):
        return False  # only TURN over TCP gets out
    a, b = V4_KIND.get(camera, camera), V4_KIND.get(viewer, viewer)
    if "symmetric" in (a, b):
        other = b if a == "symmetric" else a
        # A symmetric NAT's per-destination port is only reachable through a NAT
        # that does not filter on the remote port (or through no NAT at all).
        return other in ("open", "full-cone", "restricted")
    return True
