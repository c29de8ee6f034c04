"""The cluster benchmark runs HAProxy on the configuration docs/operations.md prints.

(The benchmark itself runs at smoke size in tests/bench/test_smoke.py.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cluster import fits, haproxy_config
from services.tls import self_signed


@pytest.mark.parametrize("nodes", [1, 4])
def test_the_docs_haproxy_config_takes_any_number_of_nodes(tmp_path: Path, nodes: int) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("needs haproxy (scripts/setup --test installs it)")
    cert, key = self_signed(tmp_path / "tls", ["127.0.0.1"])
    pem = tmp_path / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    ports = [20001 + i for i in range(nodes)]
    config = haproxy_config(20000, pem, ports, 9700, tmp_path / "stats.sock")
    servers = [line.split() for line in config.splitlines() if line.strip().startswith("server")]
    assert servers == [["server", f"node{i + 1}", f"127.0.0.1:{p}", "check"]
                       for i, p in enumerate(ports)]
    assert "maxconn 9700" in config and f"bind 127.0.0.1:20000 ssl crt {pem}" in config
    assert "option httpchk" in config  # the docs' health checks are kept
    (tmp_path / "haproxy.cfg").write_text(config)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr + check.stdout


def test_cameras_are_sized_to_haproxys_descriptors() -> None:
    # Two descriptors per connection, a reserve, a margin for overlapping reconnects.
    assert fits(20000) == 9600
    assert 2 * fits(20000) < 20000 - 200
