"""Port prediction through real kernel NATs: a camera behind a symmetric NAT that
allocates ports sequentially, a CLI viewer behind a port-restricted one.

Plain ICE cannot connect these two (``services.natlab.paths``): the camera's check
to the viewer leaves from a port its NAT picks for that destination, which no
candidate announced, and the viewer's NAT drops it. The camera's answer offers
the next ports its NAT will likely map (``camera/punch.py``); the viewer's checks
to them open its filter for the one the camera's check comes from. The session
starts on whatever path wins first and is direct once the background checks
after a relay (``camera/ice.py``) have found the predicted pair.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.natlab import Lab
from services.natlab.paths import direct_possible, direct_with_prediction
from tests.conftest import scaled
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import PEERCAM, RENDEZVOUS, Matrix

pytestmark = needs_lab

CAMERA, VIEWER = "symmetric-seq", "port-restricted-2"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(sites=[CAMERA, VIEWER], conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with Matrix(lab, tmp_path_factory.mktemp("punch"), sites=(CAMERA,)) as running:
        yield running


def camera_status(matrix: Matrix) -> dict[str, Any]:
    result = matrix.lab.run(CAMERA, [*PEERCAM, "status", "--json", "--state-dir",
                                     str(matrix.tmp / f"camera-{CAMERA}")], check=False)
    status: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return status


@pytest.mark.timeout(300)
def test_a_sequential_symmetric_nat_meets_a_port_restricted_one_directly(
        matrix: Matrix, lab: Lab) -> None:
    assert not direct_possible(CAMERA, VIEWER)  # for plain ICE
    assert direct_with_prediction(CAMERA, VIEWER)
    # The camera knows its NAT allocates sequentially once its NAT check is done.
    deadline = time.monotonic() + scaled(30)
    log_file = matrix.tmp / f"camera-{CAMERA}.log"
    while "allocation: sequential" not in (log := log_file.read_text()):
        assert time.monotonic() < deadline, log[-500:]
        time.sleep(0.5)
    argv = [*PEERCAM, "view", matrix.devices[CAMERA], "--rendezvous", RENDEZVOUS,
            "--seconds", "20", "--json"]
    viewer = lab.popen(VIEWER, argv, stdout=subprocess.PIPE, text=True,
                       env=matrix.env)
    pair = "?"
    deadline = time.monotonic() + scaled(40)
    while time.monotonic() < deadline:
        viewers = [v for v in camera_status(matrix)["viewers"] if v["connected"]]
        pair = viewers[0]["pair"] if viewers else "?"
        if viewers and not viewers[0]["relayed"]:
            break
        time.sleep(0.5)
    out, _ = viewer.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result.get("frames", 0) > 100, result
    assert "relay" not in pair and pair != "?", (pair, log_file.read_text()[-3000:])
    assert result.get("sessions") == 1, result  # the same session, moved if it started relayed
