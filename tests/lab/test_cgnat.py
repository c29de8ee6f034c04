"""Shared NATs: homes behind a carrier-grade NAT (symmetric, endpoint-independent,
with and without hairpinning) and two LANs behind one NAT (with and without).

Each site's NAT behaves as named (the lab probes it on the way up), `peercam
natcheck` reports hairpinning and a symmetric carrier's random allocation, and
each cell's first frame arrives over the expected path: direct between two
homes behind one NAT only where that NAT hairpins.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.natlab import Lab
from services.natlab.paths import direct_possible
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import Matrix, save_shared

pytestmark = needs_lab

SHARED = ("cgnat", "cgnat-hairpin", "lans", "lans-hairpin")
CAMERAS = (*SHARED, "cgnat-sym")
VIEWERS = (*(f"{kind}-2" for kind in SHARED), "full-cone-2", "port-restricted-2")

#: (camera, viewer, direct at first frame?), written out rather than taken from
#: the rule in services/natlab/paths.py, which is checked against it.
CELLS = [
    ("cgnat", "cgnat-2", False),  # one CGNAT, no hairpin: a shared address nobody reaches
    ("cgnat-hairpin", "cgnat-hairpin-2", True),  # through the CGNAT's hairpin
    ("lans", "lans-2", False),  # one NAT, two LANs it does not route between
    ("lans-hairpin", "lans-hairpin-2", True),
    ("cgnat", "port-restricted-2", True),  # port-restricted as a whole
    ("cgnat-sym", "full-cone-2", True),
    ("cgnat-sym", "port-restricted-2", False),  # symmetric as a whole
]

EXPECTED_NATCHECK = {
    # site: (nat_type, hairpinning, allocation)
    "cgnat": ("port-restricted-cone", False, None),
    "cgnat-hairpin": ("port-restricted-cone", True, None),
    "lans": ("port-restricted-cone", False, None),
    "lans-hairpin": ("port-restricted-cone", True, None),
    "cgnat-sym": ("symmetric", False, "random"),
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(sites=[*CAMERAS, *VIEWERS],
             conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with Matrix(lab, tmp_path_factory.mktemp("cgnat"), sites=CAMERAS) as running:
        yield running


def test_two_homes_share_the_carriers_public_address(lab: Lab) -> None:
    for kind in SHARED:
        assert lab.public_ip(kind) == lab.public_ip(f"{kind}-2")
        assert lab.site_ip(kind) != lab.site_ip(f"{kind}-2")
        # What the server saw from each: the carrier's address, the host's port kept.
        for site in (kind, f"{kind}-2"):
            probe = lab.probes[site]
            assert probe.local is not None
            assert probe.mapped == [(lab.public_ip(site), probe.local[1])] * 3, site
    assert lab.public_ip("cgnat").startswith("203.0.113.")
    assert lab.behaviour["cgnat-sym"] == ("address-and-port-dependent",) * 2
    mapped = lab.probes["cgnat-sym"].mapped
    assert {address for address, _ in mapped} == {lab.public_ip("cgnat-sym")}
    assert len(set(mapped)) == 3


def test_natcheck_reports_hairpinning_and_allocation(matrix: Matrix) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(EXPECTED_NATCHECK)) as pool:
        reports: dict[str, dict[str, Any]] = dict(
            zip(EXPECTED_NATCHECK, pool.map(matrix.run_natcheck, EXPECTED_NATCHECK),
                strict=True))
    for site, report in reports.items():  # for docs/nat-matrix.md
        report["lab_probed"] = list(matrix.lab.behaviour[site])
    matrix.natcheck.update(reports)
    seen = {site: (r["nat_type"], r["hairpinning"], r["allocation"])
            for site, r in reports.items()}
    assert seen == EXPECTED_NATCHECK, reports


def test_each_cell_takes_the_expected_path(matrix: Matrix) -> None:
    assert [direct_possible(c, v) for c, v, _ in CELLS] == [d for _, _, d in CELLS]
    with concurrent.futures.ThreadPoolExecutor(len(CELLS)) as pool:
        cells = list(pool.map(lambda cell: matrix.run_cell(cell[0], cell[1]), CELLS))
    if "PEERCAM_MATRIX_DIR" in os.environ:  # scripts/nat-matrix: for docs/nat-matrix.md
        save_shared(Path(os.environ["PEERCAM_MATRIX_DIR"]), cells, matrix.natcheck)
    missing = [f"{c.camera}→{c.viewer}: {c.error}" for c in cells if not c.frames]
    assert not missing, missing
    wrong = [f"{c.camera}→{c.viewer}: {c.local_candidate}/{c.remote_candidate} "
             f"(direct expected: {c.expected_direct})" for c in cells if not c.ok]
    assert not wrong, wrong
    # The hairpinned pairs meet at the carrier's public address, not host to host.
    for cell in cells:
        if cell.camera.endswith("hairpin"):
            assert cell.remote_address is not None
            assert cell.remote_address.split(":")[0] == matrix.lab.public_ip(cell.camera), cell
