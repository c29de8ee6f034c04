"""The NAT lab's plan, rules and path rule without a lab (no root needed)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from services.natlab.paths import direct_over_tcp, direct_possible, direct_with_prediction
from services.natlab.plan import ALL_SITES, CARRIER_KINDS, Kind, parse_site
from services.natlab.rules import SEQUENTIAL_PORTS, carrier_ruleset, router_ruleset

EVERY_SITE = [parse_site(f"{kind.value}{suffix}") for kind in Kind for suffix in ("", "-2")]


def test_every_site_has_its_own_addresses() -> None:
    natted = [site for site in EVERY_SITE if site.natted]
    for attribute in ("host_ip", "router_lan_ip", "wan_ip", "number", "lan_cidr", "namespace"):
        values = [getattr(site, attribute) for site in natted]
        assert len(set(values)) == len(values), attribute
    lans = [ipaddress.ip_network(site.lan_cidr) for site in natted]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(lans, 2))
    # Two sites of a shared kind share the carrier's public address; no one else does.
    public = {}
    for site in EVERY_SITE:
        public.setdefault(site.public_ip, set()).add(site.kind)
    assert all(len(kinds) == 1 for kinds in public.values())
    for kind in CARRIER_KINDS:
        one, two = parse_site(kind.value), parse_site(f"{kind.value}-2")
        assert one.public_ip == two.public_ip and one.wan_ip != two.wan_ip
        assert ipaddress.ip_address(one.wan_ip) in ipaddress.ip_network("100.64.0.0/10")
        assert one.carrier is not None
        supernet = ipaddress.ip_network(one.carrier.lan_supernet)
        assert ipaddress.ip_network(one.lan_cidr).subnet_of(supernet)
        assert ipaddress.ip_network(two.lan_cidr).subnet_of(supernet)


def test_shared_kinds_are_not_in_the_default_lab() -> None:
    assert "symmetric-seq" in ALL_SITES
    assert not set(ALL_SITES) & {kind.value for kind in CARRIER_KINDS}


def test_sequential_nat_maps_a_counter_to_consecutive_ports() -> None:
    rules = router_ruleset(parse_site("symmetric-seq"))
    first, count = SEQUENTIAL_PORTS
    assert f"numgen inc mod {count} map {{ 0 : {first}, 1 : {first + 1}," in rules
    assert "fully-random" in router_ruleset(parse_site("symmetric"))


@pytest.mark.parametrize("kind", CARRIER_KINDS)
def test_carrier_rules(kind: Kind) -> None:
    carrier = parse_site(kind.value).carrier
    assert carrier is not None
    rules = carrier_ruleset(carrier)
    assert ("map @hairpin" in rules) == carrier.hairpin
    assert ("fully-random" in rules) == (kind is Kind.CGNAT_SYMMETRIC)
    # The sites' own routers: home routers translate to their 100.64 address, the
    # two LANs' routers only route.
    home = router_ruleset(parse_site(kind.value))
    assert ("snat ip to 100.64." in home) == kind.value.startswith("cgnat")


@pytest.mark.parametrize(("camera", "viewer", "direct"), [
    ("symmetric", "symmetric", True),  # one LAN
    ("symmetric", "symmetric-2", False),  # two symmetric NATs
    ("symmetric-seq", "full-cone-2", True),
    ("symmetric-seq", "port-restricted-2", False),  # plain ICE does not predict
    ("open", "open-2", True),
    ("ipv6", "ipv6-2", True),
    ("udp-blocked", "udp-blocked-2", False),
    ("cgnat", "cgnat-2", False),
    ("cgnat-hairpin", "cgnat-hairpin-2", True),
    ("lans", "lans-2", False),
    ("lans-hairpin", "lans-hairpin-2", True),
    ("cgnat-sym", "full-cone-2", True),
    ("cgnat-sym", "cgnat-2", False),
])
def test_path_rule(camera: str, viewer: str, direct: bool) -> None:
    assert direct_possible(camera, viewer) is direct
    assert direct_possible(viewer, camera) is direct


@pytest.mark.parametrize(("camera", "viewer", "direct"), [
    ("symmetric-seq", "port-restricted-2", True),  # the camera predicts its next ports
    # A viewer that never measured does not predict over UDP; over TCP the lab's
    # sequential NAT keeps ports, so the two meet by simultaneous open.
    ("port-restricted", "symmetric-seq-2", True),
    ("symmetric-seq", "ipv6-2", True),  # IPv4 port-restricted
    ("symmetric-seq", "cgnat", True),  # port-restricted as a whole
    ("symmetric-seq", "symmetric-2", False),  # the viewer's mappings are random
    ("symmetric-seq", "symmetric-seq-2", True),  # unpredicted over UDP; TCP keeps ports
    ("symmetric-seq", "udp-blocked-2", True),  # simultaneous open over TCP
    ("symmetric", "udp-blocked-2", False),  # random over TCP too
    ("symmetric", "port-restricted-2", False),  # random: nothing to predict
    ("symmetric-seq", "full-cone-2", True),
])
def test_path_rule_with_the_cameras_prediction(camera: str, viewer: str, direct: bool) -> None:
    assert direct_with_prediction(camera, viewer) is direct


@pytest.mark.parametrize(("camera", "viewer", "direct"), [
    ("port-restricted", "symmetric-seq-2", True),  # the viewer measured: it predicts
    ("cgnat", "symmetric-seq-2", True),
    ("symmetric", "symmetric-seq-2", False),  # the camera's mappings are random
    ("symmetric-seq", "symmetric-seq-2", True),  # over TCP (simultaneous open)
    ("port-restricted", "symmetric-2", False),  # random: nothing to predict
])
def test_path_rule_with_a_viewer_that_measured_its_nat(
        camera: str, viewer: str, direct: bool) -> None:
    assert direct_with_prediction(camera, viewer, viewer_measured=True) is direct


@pytest.mark.parametrize(("camera", "viewer", "peercam_viewer", "direct"), [
    ("open", "udp-blocked-2", False, True),  # a browser connects to the camera's listener
    ("udp-blocked", "open-2", True, True),  # the camera connects to the CLI viewer's
    ("udp-blocked", "open-2", False, False),  # a browser does not listen
    ("udp-blocked", "port-restricted-2", True, True),  # simultaneous open
    ("udp-blocked", "port-restricted-2", False, False),  # a browser does not do it
    ("udp-blocked", "udp-blocked-2", True, True),
    ("udp-blocked", "symmetric-2", True, False),  # random ports over TCP too
    ("symmetric", "udp-blocked-2", True, False),
    ("cgnat", "udp-blocked-2", True, False),  # not modelled for TCP: no claim
])
def test_path_rule_over_tcp(camera: str, viewer: str, peercam_viewer: bool,
                            direct: bool) -> None:
    assert direct_over_tcp(camera, viewer, peercam_viewer) is direct
    assert direct_with_prediction(camera, viewer, peercam_viewer=peercam_viewer) is direct
