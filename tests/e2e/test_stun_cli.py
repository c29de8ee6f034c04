"""`peercam stun` and `peercam natcheck` as processes, on loopback."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scaled

PEERCAM = [sys.executable, "-m", "camera.cli", "--log-level", "WARNING"]


@pytest.fixture(autouse=True)
def viewer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """natcheck saves what port prediction needs in the viewer's directory: here."""
    home = tmp_path / "viewer"
    monkeypatch.setenv("PEERCAM_VIEWER_DIR", str(home))
    return home


def test_natcheck_against_our_stun_server_reports_open_on_loopback(viewer_home: Path) -> None:
    server = subprocess.Popen([*PEERCAM, "stun", "--listen", "127.0.0.1,127.0.0.2", "--port",
                               "0", "--alt-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()[1]
        just_report = subprocess.run([*PEERCAM, "natcheck", "--stun", first, "--no-save"],
                                     capture_output=True, text=True, timeout=scaled(30))
        assert just_report.returncode == 0, just_report.stderr
        assert not viewer_home.exists()
        result = subprocess.run([*PEERCAM, "natcheck", "--stun", first, "--json"],
                                capture_output=True, text=True, timeout=scaled(30))
        report = json.loads(result.stdout)
        assert result.returncode == 0, result.stderr
        assert report["nat_type"] == "open"
        assert report["mapping"] == report["filtering"] == "endpoint-independent"
        # Kept for `peercam view` on this network: no NAT here, nothing to predict.
        saved = viewer_home / "nat.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        (network,) = json.loads(saved.read_text())["networks"]
        assert network["public_ip"] == "127.0.0.1" and network["allocation"] is None
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(scaled(10)) == 0


def test_natcheck_with_one_silent_server_says_no_answer_not_udp_blocked() -> None:
    result = subprocess.run([*PEERCAM, "natcheck", "--stun", "127.0.0.1:9", "--json"],
                            capture_output=True, text=True, timeout=scaled(30))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("peercam: no answer from STUN server 127.0.0.1:9")
    assert "udp-blocked" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_natcheck_with_two_silent_servers_says_udp_blocked(viewer_home: Path) -> None:
    result = subprocess.run([*PEERCAM, "natcheck", "--stun", "127.0.0.1:9", "--stun",
                             "127.0.0.2:9", "--json"],
                            capture_output=True, text=True, timeout=scaled(30))
    assert result.returncode == 1
    assert json.loads(result.stdout)["nat_type"] == "udp-blocked"
    assert not (viewer_home / "nat.json").exists()  # nothing measured


def test_natcheck_second_server_answers_when_the_first_is_silent() -> None:
    server = subprocess.Popen([*PEERCAM, "stun", "--listen", "127.0.0.1,127.0.0.2", "--port",
                               "0", "--alt-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()[1]
        result = subprocess.run([*PEERCAM, "natcheck", "--stun", "127.0.0.1:9", "--stun", first,
                                 "--json"], capture_output=True, text=True, timeout=scaled(30))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["nat_type"] == "open"
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(scaled(10)) == 0


def test_natcheck_unknown_host_is_one_line() -> None:
    result = subprocess.run([*PEERCAM, "natcheck", "--stun", "no.such.host.invalid"],
                            capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 1
    assert result.stderr.startswith("peercam: STUN server 'no.such.host.invalid': cannot resolve")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
