"""The command-line contract, as separate processes: rendezvous, camera, view, demo."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import scaled
from tests.e2e.cli_processes import PEERCAM, first_line, reaped, spawn, stop


@pytest.fixture(autouse=True)
def env(viewer_dir: Path) -> dict[str, str]:
    ENV.clear()
    ENV.update(os.environ, PEERCAM_ICE_ADDRESSES="127.0.0.1", PEERCAM_LOG_LEVEL="WARNING",
               PEERCAM_VIEWER_DIR=str(viewer_dir))
    return ENV


ENV: dict[str, str] = {}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    yield from reaped()


def view(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PEERCAM, "view", *args], capture_output=True, text=True, env=ENV,
                          timeout=scaled(60))


def test_rendezvous_camera_and_view_processes(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    rendezvous = spawn(ENV, "rendezvous", "--listen", "127.0.0.1:0")
    processes.append(rendezvous)
    port = first_line(rendezvous, "LISTENING").rsplit(":", 1)[1]
    url = f"ws://127.0.0.1:{port}"
    camera = spawn(ENV, "camera", "--rendezvous", url, "--source", "testpattern",
                   "--state-dir", str(tmp_path), "--width", "320", "--height", "240")
    processes.append(camera)
    device = first_line(camera, "DEVICE")
    identity = subprocess.run([*PEERCAM, "camera", "identity", "--state-dir", str(tmp_path)],
                              capture_output=True, text=True, env=ENV, timeout=scaled(30))
    assert identity.stdout.strip() == device

    # Not paired yet: the camera refuses this viewer's key.
    refused = view(device, "--rendezvous", url, "--json")
    assert refused.returncode == 1
    assert "not authorized" in json.loads(refused.stdout.strip().splitlines()[-1])["error"]

    # `peercam pair` (over SSH, next to the running agent) makes a one-time link.
    pairing = subprocess.run([*PEERCAM, "pair", "--state-dir", str(tmp_path),
                              "--rendezvous", url], capture_output=True, text=True, env=ENV,
                             timeout=scaled(30))
    link = next(line.split(None, 1)[1] for line in pairing.stdout.splitlines()
                if line.startswith("PAIR "))
    assert f"#device={device}&pair=" in link
    result = view(link, "--seconds", "2", "--json", "--record", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["frames"] >= 40 and stats["fps"] >= 20  # 30 fps source, on a shared machine
    assert stats["ttff_ms"] > 0
    assert stats["local_candidate"] == "host" and stats["remote_candidate"] == "host"
    assert stats["latency_ms_p50"] is not None
    assert (tmp_path / "out.mp4").stat().st_size > 10_000

    # The pairing secret was single-use; the key stays paired, so the plain link plays.
    again = view(link, "--seconds", "1", "--json")
    assert again.returncode == 1 and "pairing refused" in again.stdout
    plain = f"http://127.0.0.1:{port}/#device={device}"
    assert view(plain, "--seconds", "1", "--json").returncode == 0
    listed = subprocess.run([*PEERCAM, "viewers", "list", "--json", "--state-dir",
                             str(tmp_path)], capture_output=True, text=True, env=ENV)
    viewers = json.loads(listed.stdout)
    assert len(viewers) == 1 and viewers[0]["name"].startswith("peercam view on ")
    revoked = subprocess.run([*PEERCAM, "viewers", "revoke", viewers[0]["fingerprint"],
                              "--state-dir", str(tmp_path)], capture_output=True, text=True,
                             env=ENV)
    assert revoked.returncode == 0
    assert view(plain, "--seconds", "1", "--json").returncode == 1
    # An unknown camera is exit status 1 too.
    offline = view("0000-0000-0000-0000-0000-0000-000", "--rendezvous", url, "--json")
    assert offline.returncode == 1
    assert "unavailable" in json.loads(offline.stdout.strip().splitlines()[-1])["error"]

    assert stop(camera) == 0
    assert stop(rendezvous) == 0


def test_demo_prints_a_viewer_link_that_plays(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    demo = spawn(ENV, "demo", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(tmp_path),
                 "--width", "320", "--height", "240")
    processes.append(demo)
    link = first_line(demo, "VIEWER")
    assert link.startswith("http://127.0.0.1:") and "#device=" in link
    result = view(link, "--seconds", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["frames"] >= 20
    assert stop(demo) == 0


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "camera.toml"
    config.write_text("[video]\nwidth = 641\n")
    result = subprocess.run([*PEERCAM, "camera", "--config", str(config)], capture_output=True,
                            text=True, env=ENV, timeout=scaled(30))
    assert result.returncode == 2
    assert "video size 641x720" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_with_tls_serves_https_with_its_own_certificate(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    demo = spawn(ENV, "demo", "--tls", "--host", "127.0.0.1", "--port", "0", "--state-dir",
                 str(tmp_path), "--width", "320", "--height", "240")
    processes.append(demo)
    link = first_line(demo, "VIEWER")
    assert link.startswith("https://127.0.0.1:") and "&pair=" in link
    cert = tmp_path / "tls-cert.pem"
    untrusted = view(link, "--seconds", "1", "--json")
    assert untrusted.returncode == 1 and "certificate" in untrusted.stdout.lower()
    result = view(link, "--seconds", "1", "--json", "--tls-ca", str(cert))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["frames"] >= 20
    assert stop(demo) == 0
