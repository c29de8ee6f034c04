"""Every pair connects: a camera behind each kind of lab NAT × a CLI viewer behind a
second NAT of each kind (its own site), the diagonal included.

Direct wherever the two NATs allow a direct path, relayed (coturn) only where
they don't; `peercam natcheck` names each site's NAT correctly, and tells the
sequential symmetric NAT from the random one. Real processes in real
namespaces; see tests/lab/matrix.py and docs/nat-matrix.md.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.natlab import Lab
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import (
    SITES,
    Cell,
    Matrix,
    load_shared,
    trials_from_env,
    twin,
    write_report,
)

pytestmark = needs_lab

#: What RFC 5780 discovery must call each site (the ipv6 site's IPv4 is port-restricted).
EXPECTED_NAT = {
    "open": "open",
    "full-cone": "full-cone",
    "restricted": "restricted-cone",
    "port-restricted": "port-restricted-cone",
    "symmetric": "symmetric",
    "ipv6": "port-restricted-cone",
    "udp-blocked": "udp-blocked",
    "symmetric-seq": "symmetric",
}


#: The whole matrix for docs/nat-matrix.md (scripts/nat-matrix sets PEERCAM_MATRIX_DIR);
#: in the suite, the seven kinds plain ICE tells apart: to plain ICE the sequential
#: symmetric NAT is a symmetric NAT, and its cells would add a minute.
FULL = "PEERCAM_MATRIX_DIR" in os.environ or os.environ.get("PEERCAM_MATRIX_FULL") == "1"
CELL_SITES = SITES if FULL else tuple(site for site in SITES if site != "symmetric-seq")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A site of every kind for the cameras, and "KIND-2" sites for the viewers."""
    with Lab(sites=[*SITES, *(twin(site) for site in CELL_SITES)],
             conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with Matrix(lab, tmp_path_factory.mktemp("matrix")) as running:
        yield running


def test_natcheck_names_every_lab_nat(matrix: Matrix) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(SITES)) as pool:
        reports = dict(zip(SITES, pool.map(matrix.run_natcheck, SITES), strict=True))
    matrix.natcheck.update(reports)
    assert {site: r["nat_type"] for site, r in reports.items()} == EXPECTED_NAT
    assert reports["symmetric"]["mapping"] == "address-and-port-dependent"
    assert reports["restricted"]["filtering"] == "address-dependent"
    # Consecutive new flows: the next port each time, or anywhere. Only measured
    # where the mapping depends on the destination.
    assert reports["symmetric-seq"]["allocation"] == "sequential", reports["symmetric-seq"]
    assert reports["symmetric-seq"]["allocation_step"] == 1
    assert set(reports["symmetric-seq"]["port_deltas"]) == {1}
    assert reports["symmetric"]["allocation"] == "random", reports["symmetric"]
    assert {r["allocation"] for s, r in reports.items() if "symmetric" not in s} == {None}
    # No lab NAT hairpins: a packet to its own public address goes nowhere. The
    # open site has no NAT, so there is nothing to test.
    assert {s: r["hairpinning"] for s, r in reports.items() if s not in ("open", "udp-blocked")} \
        == dict.fromkeys(set(SITES) - {"open", "udp-blocked"}, False)


#: Each later session past the first adds one 60 s session (and a viewer's start) to
#: the longest cell's queue.
@pytest.mark.timeout(2700 + 150 * (trials_from_env() - 1) if FULL else 300)
def test_every_pair_connects_direct_where_possible(matrix: Matrix, lab: Lab) -> None:
    # The viewer measured each of its networks once (peercam natcheck, saved).
    measured = matrix.measure_viewers([twin(site) for site in CELL_SITES])
    assert measured["symmetric-2"] == "random", measured
    cells = matrix.run_all(CELL_SITES)
    turn = None
    when = None
    if FULL:
        # Where the first frame came over the relay: later, longer sessions
        # (PEERCAM_MATRIX_TRIALS of them per cell, one by default).
        started = time.gmtime()
        matrix.run_later(cells, trials=trials_from_env())
        when = (time.strftime("%Y-%m-%d %H:%M", started)
                + time.strftime("–%H:%M UTC", time.gmtime()))
        # What the relay carries over the whole matrix, shipped against plain ICE.
        turn = matrix.compare_turn([(c.camera, c.viewer) for c in cells],
                                   float(os.environ.get("PEERCAM_MATRIX_TURN_SECONDS", "30")))
    out = Path(os.environ.get("PEERCAM_MATRIX_DIR", matrix.tmp))
    if turn is not None:
        (out / "nat-matrix-turn.json").write_text(json.dumps(turn, indent=1))
    shared, shared_natcheck = load_shared(out)
    write_report(cells, lab, out / "nat-matrix.md", out / "nat-matrix.png",
                 {**matrix.natcheck, **shared_natcheck}, shared, turn, when)
    missing = [f"{c.camera}→{c.viewer}: {c.error}" for c in cells if not c.frames]
    assert not missing, missing
    wrong = [f"{c.camera}→{c.viewer}: {c.local_candidate}/{c.remote_candidate} "
             f"(direct possible: {c.expected_direct})" for c in cells if not c.ok]
    assert not wrong, wrong
    # 64 cells: 15 with the UDP-blocked site, of which 13 go direct over TCP (ICE-TCP:
    # to the open side's passive candidate, or by simultaneous open where both NATs
    # keep a TCP flow's port, the lab's sequential one included: its counter is for
    # UDP) and the 2 with the random symmetric NAT need TURN over TCP; the two
    # sequential sites meet over TCP too (simultaneous open); 7 pair a symmetric NAT
    # (either allocator) with a port-restricted or symmetric one where neither UDP
    # nor TCP has a path at the first frame; the other 41 must be direct over UDP, 4
    # of them only because a peer behind the sequential NAT predicts its ports: the
    # camera (viewers port-restricted-2, ipv6-2) or the viewer, which measured its
    # network (cameras port-restricted, ipv6).
    # Without the sequential one, 49 cells: 13 UDP-blocked (11 direct over TCP),
    # 5 symmetric, 31 direct over UDP.
    assert (len(cells), sum(1 for c in cells if c.expected_direct)) == \
        ((64, 55) if FULL else (49, 42))
    assert not by_pair(cells)[("symmetric", "symmetric-2")].expected_direct


def test_camera_logs_its_nat_type(matrix: Matrix) -> None:
    for site, expected in EXPECTED_NAT.items():
        log = (matrix.tmp / f"camera-{site}.log").read_text()  # the whole log: the
        assert f"nat type: {expected}" in log, (site, log[-600:])  # check is at its start


def by_pair(cells: list[Cell]) -> dict[tuple[str, str], Cell]:
    return {(c.camera, c.viewer): c for c in cells}


#: Chromium behind the viewers' NATs: relayed, TURN over TCP both ways, IPv6, plain.
BROWSER_CELLS = [(camera, twin(viewer)) for camera, viewer in [
    ("port-restricted", "symmetric"),
    ("symmetric", "symmetric"),
    ("udp-blocked", "open"),
    ("open", "udp-blocked"),
    ("ipv6", "ipv6"),
    ("full-cone", "restricted"),
]]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"),
                    reason="needs Chromium at /usr/bin/chromium (scripts/test installs it)")
@pytest.mark.parametrize(("camera", "viewer"), BROWSER_CELLS)
def test_chromium_behind_the_lab_nats(matrix: Matrix, camera: str, viewer: str) -> None:
    cell = matrix.run_browser_cell(camera, viewer)
    assert cell.frames > 0, cell
    # Chromium nominates by priority; a relay pair where a direct one exists is a failure.
    assert cell.ok, cell
