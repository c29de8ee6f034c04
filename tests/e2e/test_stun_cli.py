"""`peercam stun` and `peercam natcheck` as processes, on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.conftest import scaled

PEERCAM = [sys.executable, "-m", "camera.cli", "--log-level", "WARNING"]


def test_natcheck_against_our_stun_server_reports_open_on_loopback() -> None:
    server = subprocess.Popen([*PEERCAM, "stun", "--listen", "127.0.0.1,127.0.0.2", "--port",
                               "0", "--alt-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()[1]
        result = subprocess.run([*PEERCAM, "natcheck", "--stun", first, "--json"],
                                capture_output=True, text=True, timeout=scaled(30))
        report = json.loads(result.stdout)
        assert result.returncode == 0, result.stderr
        assert report["nat_type"] == "open"
        assert report["mapping"] == report["filtering"] == "endpoint-independent"
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


def test_natcheck_with_two_silent_servers_says_udp_blocked() -> None:
    result = subprocess.run([*PEERCAM, "natcheck", "--stun", "127.0.0.1:9", "--stun",
                             "127.0.0.2:9", "--json"],
                            capture_output=True, text=True, timeout=scaled(30))
    assert result.returncode == 1
    assert json.loads(result.stdout)["nat_type"] == "udp-blocked"


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
