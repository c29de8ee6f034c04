"""IPv6 media: two dual-stack sites reach each other directly over IPv6, with the
CLI viewer and with Chromium, while their IPv4 sits behind port-restricted NATs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.natlab import Lab
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.matrix import Matrix

pytestmark = needs_lab
SITES = ("ipv6", "ipv6-2")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(sites=list(SITES), conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def matrix(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with Matrix(lab, tmp_path_factory.mktemp("ipv6"), sites=SITES) as running:
        yield running


def test_cli_viewer_gets_video_over_ipv6(matrix: Matrix, lab: Lab) -> None:
    cell = matrix.run_cell("ipv6", "ipv6-2")
    assert cell.frames > 0, cell
    assert cell.ok and not cell.relayed, cell
    assert cell.remote_address == lab.site_ip6("ipv6"), cell  # the camera's IPv6 host


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"),
                    reason="needs Chromium at /usr/bin/chromium (scripts/test installs it)")
def test_chromium_gets_video_over_ipv6(matrix: Matrix, lab: Lab) -> None:
    cell = matrix.run_browser_cell("ipv6", "ipv6-2")
    assert cell.frames > 0, cell
    assert cell.ok and not cell.relayed, cell
    assert cell.remote_address is not None and ":" in cell.remote_address, cell
