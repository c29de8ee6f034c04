"""NAT timeouts: with the lab NATs' UDP conntrack timeout cut to 20 s, a stream runs
for 3 minutes, and the camera stays registered and reachable afterwards."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator

import pytest

from services.natlab import Lab
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import Matrix

pytestmark = needs_lab

STREAM_SECONDS = float(os.environ.get("PEERCAM_NAT_TIMEOUT_SECONDS", "180"))


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    sites = ("full-cone", "port-restricted", "symmetric")
    with Matrix(lab, tmp_path_factory.mktemp("timeouts"), sites=sites) as running:
        yield running


@pytest.mark.timeout(STREAM_SECONDS + 180)
def test_streams_outlive_the_nat_timeout(matrix: Matrix) -> None:
    assert CONNTRACK_UDP_TIMEOUT <= 20
    cells = [("full-cone", "port-restricted"),  # direct, hole-punched
             ("port-restricted", "symmetric")]  # relayed through coturn
    with concurrent.futures.ThreadPoolExecutor(len(cells)) as pool:
        results = list(pool.map(lambda c: matrix.run_cell(*c, seconds=STREAM_SECONDS), cells))
    for cell in results:
        assert cell.frames >= 25 * STREAM_SECONDS, cell  # no stall, no reconnect
        assert cell.ok, cell
    # Idle for the whole stream, the cameras' rendezvous links (pinged every 20 s)
    # and NAT mappings still work: a new viewer gets video at once.
    again = matrix.run_cell("symmetric", "full-cone", seconds=1)
    assert again.frames > 0, again
