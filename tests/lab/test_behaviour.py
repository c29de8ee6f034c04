"""Each NAT of the lab behaves as its name says, seen from real packets."""

from __future__ import annotations

import time

import pytest

from services.natlab import Lab
from tests.lab.conftest import (
    CONNTRACK_UDP_TIMEOUT,
    finish_tool,
    needs_lab,
    run_tool,
    start_tool,
)

pytestmark = needs_lab

EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"

# Written out here rather than imported from the plan, so a wrong plan fails.
EXPECTED = {
    "open": ("none", EIM),
    "full-cone": (EIM, EIM),
    "restricted": (EIM, ADM),
    "port-restricted": (EIM, APDM),
    "symmetric": (APDM, APDM),
    "ipv6": (EIM, APDM),
    "udp-blocked": ("udp-blocked", "udp-blocked"),
    "symmetric-seq": (APDM, APDM),
}

SERVER_PORT = 41000
HOST_PORT = 42000
LISTEN_SECONDS = 0.6


def test_lab_comes_up_with_every_site(lab: Lab) -> None:
    # How long it took is reported, not bounded here (the NAT matrix page prints it).
    assert set(lab.sites) == set(EXPECTED)
    assert lab.up_seconds is not None and lab.up_seconds > 0
    assert lab.server_ips == ("203.0.113.1", "203.0.113.2")
    assert lab.site_ip("open") == lab.public_ip("open") == "203.0.113.10"
    assert lab.site_ip("symmetric").startswith("198.51.100.")
    assert lab.public_ip("symmetric").startswith("203.0.113.1")


@pytest.mark.parametrize("site", sorted(EXPECTED))
def test_probed_behaviour_matches_the_name(lab: Lab, site: str) -> None:
    assert lab.behaviour[site] == EXPECTED[site]
    result = lab.probes[site]
    mapped = result.mapped
    if site in ("symmetric", "symmetric-seq"):
        assert len({endpoint for endpoint in mapped}) == 3, mapped
        # Three destinations, one after the other: the sequential NAT hands out the
        # next ports, the random one ports anywhere.
        ports = [endpoint[1] for endpoint in mapped if endpoint is not None]
        steps = [b - a for a, b in zip(ports, ports[1:], strict=False)]
        assert all(1 <= step <= 4 for step in steps) == (site == "symmetric-seq"), \
            (site, ports)
    elif site == "udp-blocked":
        assert mapped == [None, None, None]
        assert result.tcp is not None and result.tcp[0] == lab.public_ip(site)
    else:
        # Every other NAT keeps the host's port, towards every destination.
        assert result.local is not None
        assert mapped == [(lab.public_ip(site), result.local[1])] * 3


def test_ipv6_site_is_routed_without_nat(lab: Lab) -> None:
    assert lab.behaviour6 == {"ipv6": ("none", EIM)}
    host6 = lab.site_ip6("ipv6")
    assert host6 == "2001:db8:0:105::2"
    listener = start_tool(lab, "server", "listen", "2001:db8:0:1::1", SERVER_PORT, LISTEN_SECONDS)
    done = run_tool(lab, "ipv6", "send", host6, HOST_PORT, "2001:db8:0:1::1", SERVER_PORT, "v6")
    assert done.returncode == 0, done.stderr
    assert finish_tool(listener) == [f"from {host6} {HOST_PORT} v6"]
    tcp = start_tool(lab, "server", "tcp-listen", "2001:db8:0:1::1", SERVER_PORT, 3)
    assert run_tool(lab, "ipv6", "tcp-connect", "2001:db8:0:1::1", SERVER_PORT).returncode == 0
    assert finish_tool(tcp)[0].startswith(f"accepted {host6} ")


@pytest.mark.parametrize(
    ("site", "admitted"),
    [("port-restricted", False), ("symmetric", False), ("restricted", False), ("full-cone", True)],
)
def test_unsolicited_inbound_from_another_address(lab: Lab, site: str, admitted: bool) -> None:
    """The host talks to server IP1; from IP2 to its public port enters only a full cone."""
    server1, server2 = lab.server_ips
    listener = start_tool(
        lab, site, "listen", lab.site_ip(site), HOST_PORT, LISTEN_SECONDS,
        "--hello", server1, SERVER_PORT,
    )
    port = HOST_PORT  # the cones and port-restricted keep it; symmetric gets no visitor anyway
    done = run_tool(lab, "server", "send", server2, SERVER_PORT, lab.public_ip(site), port, "knock")
    assert done.returncode == 0, done.stderr
    lines = finish_tool(listener)
    assert lines == ([f"from {server2} {SERVER_PORT} knock"] if admitted else [])


def test_early_hole_punch_does_not_turn_port_restricted_symmetric(lab: Lab) -> None:
    """A peer's packet that arrives before ours must leave no conntrack entry behind.

    Otherwise SNAT finds the tuple taken and gives our flow to that peer a new port.
    """
    server1 = lab.server_ips[0]
    site = "port-restricted"
    public = lab.public_ip(site)
    port = HOST_PORT + 1
    early = run_tool(lab, "server", "send", server1, SERVER_PORT + 1, public, port, "early")
    assert early.returncode == 0, early.stderr
    listener = start_tool(lab, "server", "listen", server1, SERVER_PORT + 1, LISTEN_SECONDS)
    late = run_tool(lab, site, "send", lab.site_ip(site), port, server1, SERVER_PORT + 1, "late")
    assert late.returncode == 0, late.stderr
    assert finish_tool(listener) == [f"from {public} {port} late"]


def test_udp_blocked_site_sends_no_udp_but_opens_tcp(lab: Lab) -> None:
    server1 = lab.server_ips[0]
    site = "udp-blocked"
    listener = start_tool(lab, "server", "listen", server1, SERVER_PORT + 2, LISTEN_SECONDS)
    done = run_tool(lab, site, "send", lab.site_ip(site), HOST_PORT, server1, SERVER_PORT + 2, "x")
    assert done.returncode == 0, done.stderr
    assert finish_tool(listener) == []
    tcp = start_tool(lab, "server", "tcp-listen", server1, 443, 3)
    connected = run_tool(lab, site, "tcp-connect", server1, 443)
    assert connected.returncode == 0, connected.stdout
    assert finish_tool(tcp)[0].startswith(f"accepted {lab.public_ip(site)} ")


def test_conntrack_timeouts_are_shortened(lab: Lab) -> None:
    for key in ("net.netfilter.nf_conntrack_udp_timeout",
                "net.netfilter.nf_conntrack_udp_timeout_stream"):
        value = lab.run("full-cone-nat", ["sysctl", "-n", key]).stdout.strip()
        assert value == str(CONNTRACK_UDP_TIMEOUT)
    rules = lab.run("full-cone-nat", ["nft", "list", "set", "inet", "natlab", "inbound"]).stdout
    assert f"timeout {CONNTRACK_UDP_TIMEOUT}s" in rules


def test_full_cone_mapping_admits_anyone_while_it_lives(lab: Lab) -> None:
    """After our packet, the set holds our public port and admits a stranger to it."""
    site = "full-cone"
    listener = start_tool(
        lab, site, "listen", lab.site_ip(site), HOST_PORT + 3, LISTEN_SECONDS,
        "--hello", lab.server_ips[0], SERVER_PORT,
    )
    time.sleep(0.05)
    elements = lab.run(f"{site}-nat", ["nft", "list", "set", "inet", "natlab", "inbound"]).stdout
    assert str(HOST_PORT + 3) in elements
    knock = run_tool(
        lab, "open", "send", lab.site_ip("open"), SERVER_PORT, lab.public_ip(site),
        HOST_PORT + 3, "stranger",
    )
    assert knock.returncode == 0, knock.stderr
    assert finish_tool(listener) == [f"from {lab.site_ip('open')} {SERVER_PORT} stranger"]
