"""What a new user hits first, as processes: one clear line, the right exit status, no traceback.

Also: one camera, one identity for every command. ``peercam status``, ``pair``,
``viewers`` and ``camera identity`` find the running camera (here the demo)
without flags, and nothing but running a camera (or ``identity --create``)
makes a device key.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camera.acl import ViewerACL
from camera.cli import exits
from camera.client.viewer import ViewerIdentity
from tests.conftest import scaled
from tests.e2e.cli_processes import PEERCAM, first_line, reaped, spawn, stop


@pytest.fixture
def env(viewer_dir: Path, runtime_dir: Path, tmp_path: Path) -> dict[str, str]:
    # No flags means the default state directory: keep it in the test's directory.
    return {**os.environ, "PEERCAM_ICE_ADDRESSES": "127.0.0.1",
            "PEERCAM_LOG_LEVEL": "WARNING", "PEERCAM_VIEWER_DIR": str(viewer_dir),
            "PEERCAM_RUNTIME_DIR": str(runtime_dir),
            "STATE_DIRECTORY": str(tmp_path / "default-state")}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    yield from reaped()


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PEERCAM, *args], capture_output=True, text=True, env=env,
                          timeout=scaled(timeout))


def one_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """The command failed with ``status`` and said so in one ``peercam:`` line."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("peercam:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def demo(env: dict[str, str], processes: list[subprocess.Popen[str]], state: Path,
         *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = spawn(env, "demo", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
                 "--width", "320", "--height", "240", *extra)
    processes.append(proc)
    return proc, first_line(proc, "VIEWER")


# --- ports ---------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_naming_it(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(env, "rendezvous", "--listen", f"127.0.0.1:{port}")
        one_line(result, exits.USAGE, f"cannot listen on 127.0.0.1:{port}", "in use", "--port")
        result = run(env, "demo", "--host", "127.0.0.1", "--port", str(port),
                     "--state-dir", str(tmp_path / "demo"))
        one_line(result, exits.USAGE, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("argv", [["demo", "--port", "99999"],
                                  ["rendezvous", "--listen", "0.0.0.0:99999"],
                                  ["stun", "--port", "99999"]])
def test_an_impossible_port_is_a_usage_error(env: dict[str, str], argv: list[str]) -> None:
    result = run(env, *argv)
    assert result.returncode == exits.USAGE and "99999" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("peercam ")  # argparse's line


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "message"), [
    ("[video]\nfps = 30.5\n", "[video] fps = 30.5: need an integer"),
    ('[video]\nwidth = "abc"\n', "[video] width = 'abc': need an integer"),
    ('[video]\nbitrate = "2M"\n', "[video] bitrate = '2M': need an integer"),
])
def test_a_setting_of_the_wrong_type_is_refused_at_load(
    env: dict[str, str], tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "camera.toml"
    config.write_text('[camera]\nrendezvous = "ws://127.0.0.1:9"\n' + toml)
    result = run(env, "camera", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    one_line(result, exits.USAGE, message)
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_the_camera_without_a_rendezvous_says_none_is_configured(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "camera.toml"
    config.write_text('[camera]\nsource = "testpattern"\n')
    env.pop("PEERCAM_RENDEZVOUS", None)
    result = run(env, "camera", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    one_line(result, exits.USAGE, "no rendezvous server configured", str(config),
             "PEERCAM_RENDEZVOUS", "--rendezvous")


# --- one camera, one identity ----------------------------------------------------------------


def test_commands_find_the_demo_without_flags(
    env: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc, link = demo(env, processes, tmp_path / "demo")
    device = link.split("#device=", 1)[1].split("&", 1)[0]
    status = run(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["device_id"] == device
    identity = run(env, "camera", "identity")
    assert identity.returncode == 0 and identity.stdout.strip() == device, identity.stderr
    paired = run(env, "pair", "--ttl", "60")
    assert paired.returncode == 0, paired.stderr
    assert f"#device={device}&pair=" in paired.stdout
    listed = run(env, "viewers", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    # Nothing was made in the default state directory: the demo's was used.
    assert not (Path(env["STATE_DIRECTORY"]) / "device_key.pem").exists()
    assert stop(proc) == 0
    # Gone: its record is removed, and status says no camera runs.
    one_line(run(env, "status"), exits.NO_CAMERA, "no camera agent")


def test_no_command_but_the_camera_makes_a_device_key(env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "fresh"
    for argv in (["pair", "--rendezvous", "ws://127.0.0.1:9"], ["pair"], ["viewers", "list"],
                 ["viewers", "revoke", "x"], ["camera", "identity"]):
        result = run(env, *argv, "--state-dir", str(state))
        one_line(result, exits.NO_CAMERA, f"no camera in {state}", "no device key")
        assert not (state / "device_key.pem").exists(), argv
    made = run(env, "camera", "identity", "--create", "--state-dir", str(state))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "device_key.pem").stat().st_mode) == 0o600
    again = run(env, "camera", "identity", "--state-dir", str(state))
    assert again.returncode == 0 and again.stdout == made.stdout
    # With a key, an offline pair needs to know the rendezvous the link points at.
    one_line(run(env, "pair", "--state-dir", str(state)), exits.USAGE,
             "no rendezvous server configured")
    paired = run(env, "pair", "--state-dir", str(state), "--rendezvous", "ws://127.0.0.1:9")
    assert paired.returncode == 0 and f"#device={made.stdout.strip()}&pair=" in paired.stdout


def test_revoking_an_ambiguous_name_through_the_agent_is_refused(
    env: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    state = tmp_path / "demo"
    proc, _link = demo(env, processes, state)
    acl = ViewerACL(state)
    keys = [ViewerIdentity.load_or_create(tmp_path / f"v{i}").key for i in range(3)]
    for key in keys:
        acl.add(key, "Chrome on Linux")
    result = run(env, "viewers", "revoke", "Chrome on Linux")
    line = one_line(result, exits.USAGE, "3 viewers are named 'Chrome on Linux'")
    fingerprints = [row["fingerprint"] for row in json.loads(
        run(env, "viewers", "list", "--json").stdout)]
    assert len(fingerprints) == 3 and all(fp in line for fp in fingerprints)
    revoked = run(env, "viewers", "revoke", fingerprints[0])
    assert revoked.returncode == 0 and fingerprints[0] in revoked.stdout
    assert len(ViewerACL(state).viewers()) == 2
    assert stop(proc) == 0


# --- the demo's link -------------------------------------------------------------------------


def test_demo_without_tls_prints_no_qr_code_for_a_loopback_link(
    env: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc, link = demo(env, processes, tmp_path / "demo")
    assert link.startswith("http://127.0.0.1:")
    assert proc.stdout is not None
    rest = ""
    for line in proc.stdout:
        rest += line
        if line.startswith("Ctrl-C stops"):
            break
    assert stop(proc) == 0
    assert "no QR code" in rest and "peercam demo --tls" in rest
    # segno's compact terminal QR code is drawn with block characters.
    assert "█" not in rest and "▀" not in rest


# --- the CLI viewer --------------------------------------------------------------------------


def test_record_into_a_missing_directory_is_refused_before_connecting(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Port 9 has no rendezvous: the answer must come from the record check, at once.
    result = run(env, "view", "0000-0000-0000-0000-0000-0000-000", "--rendezvous",
                 "ws://127.0.0.1:9", "--record", "/missing/dir/x.mp4", "--json")
    one_line(result, exits.FAILED, "cannot record to /missing/dir/x.mp4", "no directory")
    assert json.loads(result.stdout)["error"].startswith("cannot record")


def test_a_recording_that_cannot_be_written_ends_the_run(
    env: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    _proc, link = demo(env, processes, tmp_path / "demo")
    # /dev/full takes the open and fails every write (ENOSPC), like a full disk.
    result = run(env, "view", link, "--seconds", "20", "--record", "/dev/full", "--json")
    one_line(result, exits.FAILED, "recording to /dev/full failed")
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["error"].startswith("recording to /dev/full failed")


def test_viewer_exit_status_says_who_ended_it(
    env: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    rdv = spawn(env, "rendezvous", "--listen", "127.0.0.1:0")
    processes.append(rdv)
    url = f"ws://127.0.0.1:{first_line(rdv, 'LISTENING').rsplit(':', 1)[1]}"
    state = tmp_path / "cam"
    camera = spawn(env, "camera", "--rendezvous", url, "--state-dir", str(state),
                   "--width", "320", "--height", "240")
    processes.append(camera)
    device = first_line(camera, "DEVICE")
    paired = run(env, "pair", "--ttl", "60")  # finds the camera by its record
    link = next(line[5:] for line in paired.stdout.splitlines() if line.startswith("PAIR "))

    # Completed: --seconds ran out with video.
    done = run(env, "view", link, "--seconds", "1", "--json")
    assert done.returncode == exits.OK, done.stderr

    # Revoked while watching: the camera ended it.
    watching = spawn(env, "view", device, "--rendezvous", url, "--json")
    processes.append(watching)
    time.sleep(scaled(3))
    fingerprint = json.loads(run(env, "viewers", "list", "--json").stdout)[0]["fingerprint"]
    assert run(env, "viewers", "revoke", fingerprint).returncode == 0
    assert watching.wait(scaled(15)) == exits.ENDED_BY_CAMERA
    assert watching.stdout is not None and watching.stderr is not None
    assert "revoked" in json.loads(watching.stdout.read().strip().splitlines()[-1])["error"]
    assert "Traceback" not in watching.stderr.read()

    # Not paired any more: no video at all.
    refused = run(env, "view", device, "--rendezvous", url, "--json")
    one_line(refused, exits.FAILED, "not authorized")

    # The camera goes offline mid-run: the viewer waits for it and heals, then
    # Ctrl-C is a completed run.
    again = run(env, "pair", "--ttl", "60")
    link = next(line[5:] for line in again.stdout.splitlines() if line.startswith("PAIR "))
    watching = spawn(env, "view", link, "--json")
    processes.append(watching)
    time.sleep(scaled(4))
    camera.kill()
    camera.wait()
    time.sleep(3)
    assert watching.poll() is None  # still there, retrying
    camera = spawn(env, "camera", "--rendezvous", url, "--state-dir", str(state),
                   "--width", "320", "--height", "240")
    processes.append(camera)
    assert first_line(camera, "DEVICE") == device
    time.sleep(scaled(6))
    watching.send_signal(signal.SIGINT)
    assert watching.wait(scaled(15)) == exits.OK
    assert watching.stdout is not None and watching.stderr is not None
    healed = json.loads(watching.stdout.read().strip().splitlines()[-1])
    assert healed["sessions"] == 2 and healed["last_cause"] is not None
    assert "Traceback" not in watching.stderr.read()


def test_the_exit_statuses_are_documented_where_users_look(env: dict[str, str]) -> None:
    helped = run(env, "--help")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code, text in exits.TABLE:
        assert f"{code} {text}" in " ".join(helped.stdout.split())
        assert f"| {code} |" in readme
