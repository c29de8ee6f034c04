"""ICE over TCP through real kernel NATs: a network that lets no UDP out reaches a
peer that listens in the open directly, not through the TURN relay.

The UDP-blocked site's router drops its LAN's UDP; TCP gets out (port-restricted
NAT). Without ICE-TCP the only path is TURN over TCP. With it, the side behind
the block connects to the other side's passive TCP candidate: a camera on an
open address for any viewer (a browser's own ICE-TCP included), a CLI viewer on
an open address for a camera behind the block (browsers do not listen). Behind
two NATs that keep a flow's port for every destination, the camera and the CLI
viewer connect to each other's mapped address at once (simultaneous open).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from services.natlab import Lab
from services.natlab.paths import direct_over_tcp, direct_possible
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import PEERCAM, RENDEZVOUS, Matrix

pytestmark = needs_lab

OPEN, BLOCKED = "open", "udp-blocked"
OPEN_VIEWER, BLOCKED_VIEWER = "open-2", "udp-blocked-2"
NATTED_VIEWER, RANDOM_VIEWER = "port-restricted-2", "symmetric-2"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(sites=[OPEN, BLOCKED, OPEN_VIEWER, BLOCKED_VIEWER, NATTED_VIEWER, RANDOM_VIEWER],
             conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with Matrix(lab, tmp_path_factory.mktemp("icetcp"), sites=(OPEN, BLOCKED)) as running:
        yield running


def view(matrix: Matrix, camera: str, viewer: str, *extra: str) -> dict[str, Any]:
    argv = [*PEERCAM, "view", matrix.devices[camera], "--rendezvous", RENDEZVOUS,
            "--seconds", "8", "--json", *extra]
    proc = matrix.lab.popen(viewer, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=matrix.env)
    out, err = proc.communicate(timeout=90)
    assert out.strip(), err[-2000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def on_tcp(result: dict[str, Any], pair: tuple[str, str]) -> bool:
    """The session ran on this direct TCP pair: from its first frame, or after a
    move off the relay it started on (the viewer nominates TCP only once no UDP
    pair can still win; on a busy machine the relay can answer first, and the
    background checks then move the session)."""
    first = (result["local_candidate"], result["remote_candidate"])
    final = (result["final_local_candidate"], result["final_remote_candidate"])
    if result["transport"] == "tcp":
        return first == pair and final == pair
    return result.get("moved_after_s") is not None and final == pair


@pytest.mark.timeout(300)
def test_a_viewer_behind_a_udp_block_reaches_an_open_camera_over_tcp(matrix: Matrix) -> None:
    assert not direct_possible(OPEN, BLOCKED_VIEWER)  # plain ICE: the relay only
    assert direct_over_tcp(OPEN, BLOCKED_VIEWER, peercam_viewer=False)
    result = view(matrix, OPEN, BLOCKED_VIEWER)
    assert result["frames"] > 10, result
    # The viewer's active candidate connected to the camera's passive one.
    assert on_tcp(result, ("host", "host")), result
    if result["transport"] == "tcp":  # the first frame's address (a relayed start: the relay's)
        assert result["remote_address"] == matrix.lab.public_ip(OPEN), result


@pytest.mark.timeout(300)
def test_without_ice_tcp_the_same_viewer_goes_through_the_relay(matrix: Matrix) -> None:
    """The control: what made the cell above direct is ICE-TCP, nothing else."""
    result = view(matrix, OPEN, BLOCKED_VIEWER, "--no-ice-tcp")
    assert result["frames"] > 10, result
    assert "relay" in (result["local_candidate"], result["remote_candidate"]), result
    assert result["transport"] == "udp", result  # TURN over TCP; ICE itself runs over UDP


@pytest.mark.timeout(300)
def test_a_camera_behind_a_udp_block_reaches_an_open_viewer_over_tcp(matrix: Matrix) -> None:
    assert direct_over_tcp(BLOCKED, OPEN_VIEWER)
    result = view(matrix, BLOCKED, OPEN_VIEWER)
    assert result["frames"] > 10, result
    # The camera connected in to the viewer's passive candidate: the viewer learned
    # the camera's connection as a peer-reflexive candidate (the NAT's address).
    assert on_tcp(result, ("host", "prflx")), result
    log = matrix.log(f"camera-{BLOCKED}.log")
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"),
                    reason="needs Chromium at /usr/bin/chromium (scripts/test installs it)")
@pytest.mark.timeout(300)
def test_chromium_behind_a_udp_block_reaches_an_open_camera_over_tcp(matrix: Matrix) -> None:
    """Chromium's own ICE-TCP (active candidates) against the camera's passive one."""
    cell = matrix.run_browser_cell(OPEN, BLOCKED_VIEWER)
    assert cell.expected_direct, cell
    assert cell.frames > 0, cell
    assert not cell.relayed, cell
    assert cell.remote_address == matrix.lab.public_ip(OPEN), cell
    print(f"chromium over tcp: first frame {cell.ttff_ms} ms, "
          f"off the relay after {cell.settled_ms} ms")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("viewer", [NATTED_VIEWER, BLOCKED_VIEWER])
def test_behind_a_udp_block_and_another_nat_the_two_sides_open_tcp_at_once(
        matrix: Matrix, viewer: str) -> None:
    """Neither side can be connected to; both NATs keep a TCP flow's port for every
    destination, so each side's SYN to the other's mapped address opens its own NAT
    for the other's: the SYNs cross (simultaneous open)."""
    assert direct_over_tcp(BLOCKED, viewer)
    assert not direct_over_tcp(BLOCKED, viewer, peercam_viewer=False)  # a browser: relay
    result = view(matrix, BLOCKED, viewer)
    assert result["frames"] > 10, result
    log = matrix.log(f"camera-{BLOCKED}.log")
    assert on_tcp(result, ("srflx", "srflx")), (result, log[-3000:])
    assert "simultaneous open with" in log, log[-3000:]


@pytest.mark.timeout(300)
def test_a_nat_that_picks_each_flows_port_at_random_leaves_the_relay(matrix: Matrix) -> None:
    """The viewer's symmetric NAT maps its SYN to the camera from a port its STUN
    query never saw: no simultaneous open, TURN over TCP as before."""
    assert not direct_over_tcp(BLOCKED, RANDOM_VIEWER)
    result = view(matrix, BLOCKED, RANDOM_VIEWER)
    assert result["frames"] > 10, result
    assert "relay" in (result["local_candidate"], result["remote_candidate"]), result
