"""Interop both ways with coturn's independent RFC 5780 implementation:
coturn's `turnutils_natdiscovery` against our STUN server behind each lab NAT, and
`peercam natcheck` against coturn's own STUN service on two addresses."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.natlab import Lab
from tests.lab.conftest import needs_lab
from tests.lab.matrix import SERVER, Matrix
from tests.lab.test_matrix import EXPECTED_NAT
from tests.services.coturn import TURNSERVER, make_userdb

pytestmark = [
    needs_lab,
    pytest.mark.skipif(shutil.which("turnutils_natdiscovery") is None or
                       not Path(TURNSERVER).exists(),
                       reason="needs coturn's tools (scripts/setup --test installs coturn)"),
]

NAT_SITES = ("open", "full-cone", "restricted", "port-restricted", "symmetric")
PEERCAM = [sys.executable, "-m", "camera.cli", "--log-level", "WARNING"]

_MAPPING = {"endpoint independent": "endpoint-independent",
            "address dependent": "address-dependent",
            "address and port dependent": "address-and-port-dependent"}


@pytest.fixture(scope="module")
def servers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """Our STUN server (3479/3480) via the matrix, plus coturn's RFC 5780 STUN (3490/3491)."""
    tmp = tmp_path_factory.mktemp("interop")
    with Matrix(lab, tmp, sites=()) as matrix:
        conf = tmp / "coturn-5780.conf"
        conf.write_text("\n".join([
            "listening-ip=203.0.113.1", "listening-ip=203.0.113.2",
            "listening-port=3490", "alt-listening-port=3491", "stun-only", "no-tls",
            "no-dtls", "no-cli", f"log-file={tmp / 'coturn-5780.log'}", "simple-log",
            "no-stdout-log", f"pidfile={tmp / 'coturn-5780.pid'}",
            f"userdb={make_userdb(tmp / 'coturn-5780.db')}"]) + "\n")
        matrix._spawn("server", [TURNSERVER, "-c", str(conf)], "coturn-5780.out")
        yield matrix


def natdiscovery(lab: Lab, site: str) -> tuple[str, str]:
    result = lab.run(site, ["turnutils_natdiscovery", "-m", "-f", "-p", "3479", SERVER],
                     check=False, timeout=60)
    text = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    lower = text.lower()
    found = []
    for kind in ("mapping", "filtering"):
        if kind == "mapping" and "no nat" in lower:
            found.append("none")
            continue
        hits = [value for words, value in _MAPPING.items() if f"{words} {kind}" in lower]
        found.append(hits[0] if len(hits) == 1 else f"? ({text[-300:]!r})")
    return found[0], found[1]


@pytest.mark.parametrize("site", NAT_SITES)
def test_coturn_natdiscovery_agrees_with_our_stun_server(
    servers: Matrix, lab: Lab, site: str
) -> None:
    mapping, filtering = natdiscovery(lab, site)
    expected = lab.behaviour[site]
    # natdiscovery binds 0.0.0.0, so it cannot tell "no NAT" from a NAT that keeps
    # the port: with no NAT the behaviour it measures is endpoint-independent.
    want = "endpoint-independent" if expected.mapping == "none" else expected.mapping
    assert (mapping, filtering) == (want, expected.filtering)


@pytest.mark.parametrize("site", NAT_SITES)
def test_natcheck_against_coturns_rfc5780_service(
    servers: Matrix, lab: Lab, site: str
) -> None:
    result = lab.run(site, [*PEERCAM, "natcheck", "--stun", f"{SERVER}:3490", "--json",
                            "--no-save"],
                     check=False, timeout=60)
    text = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    report = json.loads(text.strip().splitlines()[-1])
    assert report["nat_type"] == EXPECTED_NAT[site], report
