"""scripts/install-pi.sh and the default config it installs.

The installer's Pi-only steps (apt, systemctl start, the picamera2 camera) run
only on a Pi. Here: a dry run must print every action and change nothing; a
real run into a fake root (--root: users go into its etc/passwd, units are
enabled offline) must install the units and the config, and a second run must
change nothing and keep an edited config. Every script stays shellcheck-clean.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from camera.config import CameraConfig, HardwareConfig, load_camera_config
from camera.sources.base import VideoSettings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/install-pi.sh"
SHIPPED_CONFIG = REPO / "systemd/camera.toml"
UNITS = ("peercam-camera.service", "peercam-rendezvous.service", "peercam-stun.service",
         "peercam-whep.service")
ENV_FILES = ("camera.env", "rendezvous.env", "stun.env")
SETTING = re.compile(r"^# ([a-z_]+) = (.+)$")
"""A commented-out setting in the shipped config (explanations never look like this)."""
IS_ROOT = os.geteuid() == 0


def install(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def fake_root(tmp_path: Path) -> Path:
    """A root with the account files useradd --prefix edits (video exists, as on a Pi)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\nvideo:*::\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o640)
    return root


def snapshot(tree: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under tree: mode, mtime, content (symlinks: their target)."""
    state = {}
    for path in sorted(tree.rglob("*")):
        info = path.lstat()
        body = os.readlink(path).encode() if path.is_symlink() else (
            path.read_bytes() if path.is_file() else b"")
        state[str(path.relative_to(tree))] = (info.st_mode, info.st_mtime_ns, body)
    return state


# --- shellcheck ------------------------------------------------------------------


def bash_scripts() -> list[str]:
    scripts = ["install-pi.sh"]
    for name in ("setup", "test", "demo", "bench", "nat-matrix"):
        path = REPO / "scripts" / name
        if path.exists() and "bash" in path.read_text().splitlines()[0]:
            scripts.append(name)
    return scripts


@pytest.mark.parametrize("name", bash_scripts())
def test_shellcheck_clean(name: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt install shellcheck; CI installs it)")
    result = subprocess.run([shellcheck, "--shell=bash", str(REPO / "scripts" / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


# --- dry run ---------------------------------------------------------------------


def test_dry_run_into_an_empty_root_prints_every_action_and_changes_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    user = f"pcdry{secrets.token_hex(3)}"
    result = install("--dry-run", "--root", root, "--rendezvous", "wss://cam.example.net",
                     "--user", user, "--with-rendezvous", "--with-stun", "--with-whep")
    assert result.returncode == 0, result.stderr
    out = lines(result)
    expected = [
        *(f"[dry-run] groupadd --system --prefix {root} {group}"
          for group in ("video", "gpio", "dialout")),
        f"[dry-run] useradd --system --user-group --home-dir /var/lib/peercam --no-create-home"
        f" --shell /usr/sbin/nologin --comment 'peercam camera' --groups video,gpio,dialout"
        f" --prefix {root} {user}",
        f"[dry-run] install -d -m 0755 {root}/etc/peercam",
        f"[dry-run] install -D -m 0644 systemd/camera.toml {root}/etc/peercam/camera.toml",
        *(f"[dry-run] install -D -m 0644 systemd/{name} {root}/etc/peercam/{name}"
          for name in ENV_FILES),
        f"[dry-run] install -D -m 0644 systemd/whep.toml {root}/etc/peercam/whep.toml",
        f"[dry-run] install -d -m 0700 -o {user} -g {user} {root}/var/lib/peercam",
        *(f"[dry-run] install -D -m 0644 systemd/{unit} {root}/etc/systemd/system/{unit}"
          for unit in UNITS),
        *(f"[dry-run] systemctl --root {root} enable {unit}" for unit in UNITS),
    ]
    actions = [line for line in out if line.startswith("[dry-run] ") and "nothing was" not in line]
    assert actions == expected
    assert out[-1] == f"[dry-run] {len(expected)} action(s) above; nothing was changed"
    # Everything else says why it is not an action (no stray command output).
    assert all(line.startswith(("[dry-run] ", "[skip] ", "[ok] ")) for line in out), out
    assert list(root.iterdir()) == []
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


def test_dry_run_on_this_machine_plans_the_whole_install(tmp_path: Path) -> None:
    """Without --root: apt, the venv, pip, identity and pairing are planned, nothing happens."""
    prefix = tmp_path / "opt/peercam"
    user = f"pcdry{secrets.token_hex(3)}"
    watched = [Path(p) for p in ("/etc/peercam", "/var/lib/peercam", "/usr/local/bin/peercam",
                                 *(f"/etc/systemd/system/{unit}" for unit in UNITS))]
    before = {path: path.exists() or path.is_symlink() for path in watched}
    result = install("--dry-run", "--rendezvous", "wss://cam.example.net", "--user", user,
                     "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    out = lines(result)
    venv = prefix / "venv"
    for line in (
        f"[dry-run] /usr/bin/python3 -m venv --system-site-packages {venv}",
        f"[dry-run] {venv}/bin/python -m pip install --quiet {REPO}",
        f"[dry-run] ln -sfn {venv}/bin/peercam /usr/local/bin/peercam",
    ):
        assert line in out
    assert any(line.startswith("[dry-run] useradd ") and line.endswith(f" {user}") for line in out)
    assert any(re.fullmatch(r"\[dry-run\] systemctl .*enable .*peercam-camera\.service", line)
               for line in out), out
    if shutil.which("dpkg-query"):  # apt: planned, or already in place
        assert any("apt-get install" in line or line.startswith("[ok] apt packages")
                   for line in out), out
    if not Path("/var/lib/peercam/device_key.pem").exists():
        as_user = f"runuser -u {user} -- env STATE_DIRECTORY=/var/lib/peercam {venv}/bin/peercam"
        assert (f"[dry-run] {as_user} camera identity --create "
                f"--config /etc/peercam/camera.toml") in out
        assert f"[dry-run] {as_user} pair --config /etc/peercam/camera.toml --ttl 600" in out
    assert not any(line.startswith("[run]") for line in out)
    assert not prefix.exists()
    assert {path: path.exists() or path.is_symlink() for path in watched} == before
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


# --- real runs into a fake root ---------------------------------------------------------


def test_install_into_a_fake_root_then_a_rerun_changes_nothing(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    # Creating the user (useradd --prefix) and chowning the state directory need root.
    user_args = [] if IS_ROOT else ["--no-user"]
    systemctl_args = [] if shutil.which("systemctl") else ["--no-systemctl"]
    first = install("--root", root, "--rendezvous", "wss://cam.example.net", "--with-stun",
                    *user_args, *systemctl_args)
    assert first.returncode == 0, first.stdout + first.stderr

    for unit in UNITS:  # default --prefix and --user: the shipped units as they are
        installed = root / "etc/systemd/system" / unit
        assert installed.read_text() == (REPO / "systemd" / unit).read_text()
    for name in ENV_FILES:
        shipped = (REPO / "systemd" / name).read_text()
        if name == "rendezvous.env":  # the server's own name: the host cameras dial
            shipped = shipped.replace("#PEERCAM_SERVER_NAME=cam.example.net:8080",
                                      "PEERCAM_SERVER_NAME=cam.example.net")
            assert "\nPEERCAM_SERVER_NAME=cam.example.net\n" in shipped
        assert (root / "etc/peercam" / name).read_text() == shipped
    whep = root / "etc/peercam/whep.toml"  # the gateway's settings, as shipped
    assert whep.read_text() == (REPO / "systemd/whep.toml").read_text()
    config_path = root / "etc/peercam/camera.toml"
    config = load_camera_config(config_path)
    assert config.rendezvous == "wss://cam.example.net"
    assert config.source == "picamera2"
    assert config.state_dir == Path("/var/lib/peercam")  # StateDirectory=peercam
    assert config.control_socket == Path("/run/peercam/control.sock")  # RuntimeDirectory=
    state = root / "var/lib/peercam"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    if systemctl_args == []:
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert sorted(p.name for p in wants.iterdir()) == [
            "peercam-camera.service", "peercam-stun.service"]  # rendezvous: installed only
    if IS_ROOT:
        passwd = (root / "etc/passwd").read_text()
        entry = next(line.split(":") for line in passwd.splitlines()
                     if line.startswith("peercam:"))
        assert entry[5:] == ["/var/lib/peercam", "/usr/sbin/nologin"]
        members = {line.split(":")[0]: line.split(":")[3].split(",")
                   for line in (root / "etc/group").read_text().splitlines()}
        for group in ("video", "gpio", "dialout"):
            assert "peercam" in members[group]
        assert (state.stat().st_uid, state.stat().st_gid) == (int(entry[2]), int(entry[3]))

    # The owner edits the config; a second run keeps it and changes nothing at all.
    edited = config_path.read_text().replace(
        'rendezvous = "wss://cam.example.net"', 'rendezvous = "wss://other.example.net"')
    edited += "\n# edited by the owner\n"
    config_path.write_text(edited)
    before = snapshot(root)
    second = install("--root", root, "--rendezvous", "wss://cam.example.net", "--with-stun",
                     *user_args, *systemctl_args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not any(line.startswith("[run]") for line in lines(second)), second.stdout
    assert lines(second)[-1] == "[ok] nothing to do: peercam is installed and up to date"
    assert "camera.toml says rendezvous = \"wss://other.example.net\"" in second.stderr
    assert snapshot(root) == before
    assert config_path.read_text() == edited

    # An outdated unit is replaced, and only that.
    stale = root / "etc/systemd/system/peercam-stun.service"
    stale.write_text("[Service]\nExecStart=/bin/false\n")
    third = install("--root", root, *user_args, *systemctl_args, "--with-stun")
    assert third.returncode == 0, third.stdout + third.stderr
    assert [line for line in lines(third) if line.startswith("[run]")] == [
        f"[run] install -D -m 0644 systemd/peercam-stun.service {stale}"]
    assert stale.read_text() == (REPO / "systemd/peercam-stun.service").read_text()


def test_user_prefix_and_source_are_written_where_they_belong(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = install("--root", root, "--no-user", "--no-systemctl", "--user", "cam",
                     "--prefix", "/srv/peercam/", "--source", "v4l2",
                     "--rendezvous", "http://192.168.1.20:8080")
    assert result.returncode == 0, result.stdout + result.stderr
    camera = (root / "etc/systemd/system/peercam-camera.service").read_text()
    assert "\nUser=cam\nGroup=cam\n" in camera
    assert "\nExecStart=/srv/peercam/venv/bin/peercam camera --config /etc/peercam/camera.toml\n" \
        in camera
    stun = (root / "etc/systemd/system/peercam-stun.service").read_text()
    assert "\nExecStart=/srv/peercam/venv/bin/peercam stun $PEERCAM_STUN_ARGS\n" in stun
    assert "/opt/peercam" not in camera + stun
    config = load_camera_config(root / "etc/peercam/camera.toml")
    assert (config.source, config.rendezvous) == ("v4l2", "http://192.168.1.20:8080")
    env = (root / "etc/peercam/rendezvous.env").read_text()
    assert "\nPEERCAM_SERVER_NAME=192.168.1.20:8080\n" in env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rendezvous", 'wss://cam.example.net/"x'], "need a ws://"),
        (["--rendezvous", "ftp://cam.example.net"], "need a ws://"),
        ([], "first install: --rendezvous URL is needed"),
        (["--rendezvous", "ws://h:1", "--user", "Bad User"], "not a valid user name"),
        (["--rendezvous", "ws://h:1", "--prefix", "opt/peercam"], "need an absolute path"),
        (["--rendezvous", "ws://h:1", "--source", "webcam"], "choose picamera2"),
        (["--bogus"], "unknown option: --bogus"),
    ],
)
def test_bad_input_is_refused_before_anything_happens(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = install("--root", root, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert list(root.iterdir()) == []


def test_32_bit_raspberry_pi_os_is_refused(tmp_path: Path) -> None:
    """PyAV >= 14 and aiortc have no armhf wheels: say so instead of failing in pip."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text("#!/bin/sh\necho armhf\n")
    (bin_dir / "dpkg").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = install("--dry-run", "--no-apt", "--rendezvous", "ws://h:1",
                     "--prefix", tmp_path / "opt", env=env)
    assert result.returncode == 2
    assert "needs 64-bit Raspberry Pi OS (arm64)" in result.stderr
    assert result.stdout == ""


# --- the shipped config ------------------------------------------------------------


def commented_settings() -> dict[str, dict[str, str]]:
    """table -> setting -> the TOML text of its commented-out line."""
    tables: dict[str, dict[str, str]] = {}
    table = ""
    for line in SHIPPED_CONFIG.read_text().splitlines():
        if line.startswith("["):
            table = line.strip("[]")
            tables[table] = {}
        elif match := SETTING.match(line):
            assert match.group(1) not in tables[table], f"{match.group(1)} listed twice"
            tables[table][match.group(1)] = f"{match.group(1)} = {match.group(2)}"
    return tables


FIELDS: dict[str, Any] = {
    "camera": CameraConfig, "video": VideoSettings, "hardware": HardwareConfig}
DYNAMIC = {"state_dir"}
"""Defaults that depend on the environment ($STATE_DIRECTORY)."""


def test_shipped_config_is_all_defaults() -> None:
    assert load_camera_config(SHIPPED_CONFIG) == load_camera_config(None)


def test_shipped_config_lists_every_setting_with_its_default() -> None:
    tables = commented_settings()
    assert set(tables) == set(FIELDS)
    for table, cls in FIELDS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)
                  if not (cls is CameraConfig and f.name in ("video", "hardware"))}
        assert set(tables[table]) == set(fields), table
        for name, text in tables[table].items():
            field = fields[name]
            if field.default_factory is not dataclasses.MISSING or name in DYNAMIC:
                continue
            if field.default is None:
                continue  # TOML has no null: the line is an example, "(default: none)"
            value = tomllib.loads(text)[name]
            assert value == field.default and type(value) is type(field.default), text


def test_every_example_in_the_shipped_config_is_valid(tmp_path: Path) -> None:
    """Uncommenting every setting at once gives a config the camera accepts."""
    text = "\n".join(
        line[2:] if SETTING.match(line) else line
        for line in SHIPPED_CONFIG.read_text().splitlines()
    )
    path = tmp_path / "camera.toml"
    path.write_text(text)
    config = load_camera_config(path)
    assert config.hardware.led_pin is not None and config.hardware.ptz_port is not None
    assert config.ice_servers == [{"urls": ["stun:stun.example.net:3478"]}]
