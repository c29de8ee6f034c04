"""nftables rulesets for the lab's routers, one per NAT kind. No I/O.

Every router has ``wan0`` on the public segment and ``lan0`` towards its host;
one ``inet natlab`` table holds all its chains (an nft named set can only be
used by rules of its own table).

How each kind gets its RFC 4787 behaviour out of Linux conntrack:

* port-restricted: plain SNAT. Linux keeps the source port when the tuple is
  free, so the mapping is endpoint-independent; inbound packets pass only as
  replies of a conntrack entry, i.e. address-and-port-dependent filtering.
* symmetric: SNAT ``fully-random``: every new 5-tuple gets a random port, so the
  mapping is address-and-port-dependent too.
* symmetric-seq: SNAT to the port ``numgen inc`` picks from a map: every new
  5-tuple (the nat chain sees only a flow's first packet) takes the next port of
  ``SEQUENTIAL_PORTS``, the predictable allocator of many home routers. The map
  is needed: nft 1.0.6 hands ``numgen``'s value to ``snat`` as the port in host
  byte order, so "20000, 20001, …" comes out as 8270, 8526, … (a step of 256). Plain
  SNAT cannot do this: Linux keeps the source port while the tuple is free
  (endpoint-independent), and when it must change the port it starts its search
  at a random offset (``nf_nat_l4proto_unique_tuple``), with or without
  ``random``; ``random`` hashes the flow, ``fully-random`` draws per flow. The
  counter is global, so other flows through the router take ports in between,
  as other hosts' traffic does on a real one.
* full-cone / restricted: the same port-keeping SNAT, plus a set that remembers
  the mapped port (full cone) or remote address and mapped port (address-
  restricted) of outbound UDP, refreshed by every outbound packet and expiring
  like a conntrack entry; prerouting DNATs inbound UDP that matches the set to
  the host. conntrack alone cannot do this: it only admits exact replies.
* udp-blocked: port-restricted NAT whose forward chain drops the LAN's UDP, so
  only TCP (e.g. TURN over TCP/TLS on 443) gets out.
* ipv6: port-restricted NAT for IPv4; IPv6 is routed, untranslated and unfiltered.
* cgnat, cgnat-sym, cgnat-hairpin: a port-restricted home router whose WAN is in
  100.64.0.0/10 behind a carrier NAT (``carrier_ruleset``); lans, lans-hairpin: a
  plain router (no NAT, no filter) whose LAN sits behind the shared NAT.

A carrier NAT (``carrier_ruleset``) translates everything behind it to one public
address: ``fully-random`` for the symmetric CGNAT, port-keeping SNAT otherwise.
It never forwards from one inside network to another (two homes reach each
other only through public addresses). Hairpinning (RFC 4787 REQ-9) needs what
conntrack alone does not give: a packet from inside to the public address and a
mapped port must go to whoever holds that mapping. A map remembers, per mapped
port, the inside address and port of the flow (filled after srcnat, like the
cones' sets); prerouting DNATs inside packets to the public address through it,
and postrouting SNATs the hairpinned packet to the sender's own public mapping,
so the receiver sees the address its peer announced.

Every router's INPUT chain drops by default. Why: conntrack makes an entry for
any packet in prerouting, and only a packet that survives to INPUT confirms it.
An early unsolicited hole-punch packet (remote -> public:port) accepted there
would leave that entry behind; when the host then sends to that remote from the
same port, SNAT finds the tuple taken and picks another port, so a
port-restricted NAT would look symmetric towards exactly that peer. A drop
discards the unconfirmed entry.
"""

from __future__ import annotations

from services.natlab.plan import Carrier, Kind, Site

SEQUENTIAL_PORTS = (20000, 1024)
"""(first port, how many) for the symmetric-seq NAT's counter, wrapping around."""

DEFAULT_UDP_TIMEOUT = 30
"""Seconds; the kernel's nf_conntrack_udp_timeout default, used for the cone sets."""


def router_ruleset(site: Site, udp_timeout: int | None = None) -> str:
    """The nft script (for ``nft -f -``) that makes ``site``'s router behave as its kind."""
    if not site.natted:
        raise ValueError(f"site {site.name!r} has no router")
    timeout = udp_timeout or DEFAULT_UDP_TIMEOUT
    kind = site.kind
    cone = kind in (Kind.FULL_CONE, Kind.RESTRICTED)

    lines = [
        "table inet natlab {",
    ]
    if kind is Kind.FULL_CONE:
        lines += [
            "  set inbound {",
            "    type inet_service; flags timeout;",
            f"    timeout {timeout}s;",
            "  }",
        ]
    elif kind is Kind.RESTRICTED:
        lines += [
            "  set inbound {",
            "    type ipv4_addr . inet_service; flags timeout;",
            f"    timeout {timeout}s;",
            "  }",
        ]

    lines += [
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
        # IPv6 neighbour discovery to the router's own addresses (ipv6 site).
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if kind is Kind.UDP_BLOCKED:
        lines.append('    iifname "lan0" meta l4proto udp drop')
    if kind is Kind.IPV6:
        # The site's IPv6 is a public, routed prefix without a firewall.
        lines.append("    meta nfproto ipv6 accept")
    lines += [
        '    iifname "lan0" oifname "wan0" accept',
        "    ct state established,related accept",
    ]
    if cone:
        lines.append("    ct status dnat accept")
    lines.append("  }")

    snat = f"snat ip to {site.wan_ip}"
    if not site.translates:
        snat = "accept"  # a plain router: the carrier translates
    if kind is Kind.SYMMETRIC:
        snat += " fully-random"
    lines += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if kind is Kind.SYMMETRIC_SEQUENTIAL:
        first, count = SEQUENTIAL_PORTS
        ports = ", ".join(f"{i} : {first + i}" for i in range(count))
        lines.append(
            f'    oifname "wan0" ip saddr {site.lan_cidr} meta l4proto udp '
            f"snat ip to {site.wan_ip} : numgen inc mod {count} map {{ {ports} }}"
        )
    lines += [
        f'    oifname "wan0" ip saddr {site.lan_cidr} {snat}',
        "  }",
    ]
    if cone:
        key_out = "udp sport" if kind is Kind.FULL_CONE else "ip daddr . udp sport"
        key_in = "udp dport" if kind is Kind.FULL_CONE else "ip saddr . udp dport"
        lines += [
            # After srcnat (priority 100) the packet carries the mapped port.
            "  chain remember {",
            "    type filter hook postrouting priority 110; policy accept;",
            f'    oifname "wan0" meta nfproto ipv4 meta l4proto udp '
            f"update @inbound {{ {key_out} timeout {timeout}s }}",
            "  }",
            # Ports are kept by the SNAT, so the mapped port is the host's port.
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "wan0" meta nfproto ipv4 meta l4proto udp {key_in} @inbound '
            f"dnat ip to {site.host_ip}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def carrier_ruleset(carrier: Carrier, udp_timeout: int | None = None) -> str:
    """The nft script for a carrier's NAT: ``wan0`` public, ``isp0`` the inside bridge."""
    timeout = udp_timeout or DEFAULT_UDP_TIMEOUT
    inside = f"{{ {carrier.inside_cidr}, {carrier.lan_supernet} }}"
    public = carrier.public_ip
    lines = ["table inet natlab {"]
    if carrier.hairpin:
        lines += [
            "  map hairpin {",
            "    type inet_service : ipv4_addr . inet_service; flags timeout;",
            f"    timeout {timeout}s;",
            "  }",
        ]
    lines += [
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if carrier.hairpin:
        lines.append('    iifname "isp0" oifname "isp0" ct status dnat accept')
    lines += [
        '    iifname "isp0" oifname "wan0" accept',
        '    iifname "wan0" oifname "isp0" ct state established,related accept',
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "wan0" ip saddr {inside} snat ip to {public}'
        + (" fully-random" if carrier.symmetric else ""),
    ]
    if carrier.hairpin:
        lines.append(f'    oifname "isp0" ip saddr {inside} ct status dnat snat ip to {public}')
    lines.append("  }")
    if carrier.hairpin:
        lines += [
            "  chain remember {",
            "    type filter hook postrouting priority 110; policy accept;",
            '    oifname "wan0" meta nfproto ipv4 meta l4proto udp update @hairpin '
            f"{{ udp sport timeout {timeout}s : ct original ip saddr . ct original proto-src }}",
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            # By source, not ``iifname "isp0"``: with br_netfilter loaded, a frame
            # arriving on the bridge meets prerouting (and gets its one NAT
            # decision) with its bridge port as input device, not ``isp0``.
            f"    ip saddr {inside} ip daddr {public} meta l4proto udp "
            "dnat ip to udp dport map @hairpin",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"
