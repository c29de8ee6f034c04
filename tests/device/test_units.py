"""The systemd units: hardened (systemd-analyze security), valid, and honest about health.

Exposure budgets, on systemd's 0-10 scale ("OK" is 1.0-4.9, "SAFE" below 1.0).
Measured with systemd 252 (Debian 12), ``systemd-analyze security --offline=yes``:

    peercam-camera.service      1.6   budget 1.7
    peercam-rendezvous.service  1.4   budget 1.5
    peercam-stun.service        1.1   budget 1.2
    peercam-whep.service        1.1   budget 1.2

Each budget is the measured value plus one step of the printed precision: the
smallest loosening that shows (dropping NoNewPrivileges= or ProtectSystem=
alone adds 0.2; the syscall filter 1.5; the capability set 2.1) fails here.
A network service cannot get below ~1.0: it needs AF_INET, the host's
network and no IP allow list (together 1.0). The camera also keeps its real
devices (DevicePolicy=closed + DeviceAllow=, no PrivateDevices=) and its
device groups; each unit's header says what else it leaves out and why. A
newer systemd may weigh differently: re-measure, then move the budgets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from camera.cli import build_parser
from camera.config import CameraConfig

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
BUDGETS = {
    "peercam-camera.service": 1.7,
    "peercam-rendezvous.service": 1.5,
    "peercam-stun.service": 1.2,
    "peercam-whep.service": 1.2,
}
RESTART_ALLOWANCE = 5.0
"""Seconds one in-process source restart may take (picamera2 close + open on a Pi Zero 2 W)."""


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    return path


def directives(unit: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value, in order (units repeat keys; configparser cannot)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (SYSTEMD / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit}: not a directive: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: str, section: str, key: str) -> str:
    values = directives(unit)[section].get(key, [])
    assert len(values) == 1, f"{unit} [{section}] {key}=: expected once, found {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span as used in these units: 45s, 5min, 10min."""
    match = re.fullmatch(r"(\d+)(s|min)", span)
    assert match, f"unexpected time span {span!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("unit", sorted(BUDGETS))
def test_exposure_within_budget(unit: str) -> None:
    budget = BUDGETS[unit]
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager",
         f"--threshold={round(budget * 10)}", str(SYSTEMD / unit)],
        capture_output=True, text=True, timeout=30,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure, verdict = float(match.group(1)), match.group(2)
    assert exposure <= budget, f"{unit}: exposure {exposure} {verdict} over its budget {budget}"
    assert verdict in ("OK", "SAFE", "PERFECT")
    # --threshold is systemd's own gate (exit status 1 above it), on its 0-100 scale.
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    # Unknown or malformed directives are reported on stderr and then ignored.
    assert result.stderr == ""


def test_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify in a scratch root: the host's stock units, a stub peercam.

    verify checks that ExecStart= is executable, so the root holds an empty
    /opt/peercam/venv/bin/peercam; the default dependencies (sysinit.target...)
    come from a copy of the host's unit directory.
    """
    analyze = systemd_analyze()
    stock = Path("/usr/lib/systemd/system")
    if not (stock / "sysinit.target").exists():
        pytest.skip("no /usr/lib/systemd/system/sysinit.target to verify against")
    shutil.copytree(stock, tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in BUDGETS:
        shutil.copy(SYSTEMD / unit, units / unit)
    stub = tmp_path / "opt/peercam/venv/bin/peercam"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", "--man=no", *sorted(BUDGETS)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys are only warnings


@pytest.mark.parametrize("unit", sorted(BUDGETS))
def test_every_unit_is_notify_restarting_and_hardened(unit: str) -> None:
    sections = directives(unit)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"  # children cannot fake READY/WATCHDOG
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) > 0
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > 0
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 2
    # StartLimit* belong in [Unit] (what [Service] accepts is a deprecated alias).
    assert not {"StartLimitIntervalSec", "StartLimitBurst"} & set(sections["Service"])
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    command = one(unit, "Service", "ExecStart").split()
    assert command[0] == "/opt/peercam/venv/bin/peercam"  # the installer rewrites --prefix


def test_camera_unit_owns_its_devices_state_and_runtime() -> None:
    unit = "peercam-camera.service"
    service = directives(unit)["Service"]
    assert one(unit, "Service", "ExecStart").endswith(
        "peercam camera --config /etc/peercam/camera.toml")
    assert one(unit, "Service", "User") == "peercam"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"video", "gpio", "dialout"}
    assert one(unit, "Service", "StateDirectory") == "peercam"  # $STATE_DIRECTORY: device key
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert one(unit, "Service", "RuntimeDirectory") == "peercam"  # control.sock
    assert one(unit, "Service", "RuntimeDirectoryMode") in ("0700", "0750")
    # The real devices, nothing else: no PrivateDevices= (it would hide them).
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert "PrivateDevices" not in service
    allowed = {value.split()[0]: value.split()[1] for value in service["DeviceAllow"]}
    for device in ("char-video4linux", "char-media", "char-dma_heap",  # libcamera
                   "char-gpiochip", "char-ttyUSB", "char-ttyAMA"):    # LED/button, RS-485
        assert allowed.get(device) == "rw", device
    assert one(unit, "Service", "CapabilityBoundingSet") == ""


def test_camera_watchdog_leaves_room_for_the_recovery_ladder() -> None:
    """The ladder (restart the source, then exit 75) runs before the watchdog fires.

    Pings stop once no frame came for frame_stall; the watchdog fires WatchdogSec
    after the last ping, i.e. at least frame_stall + WatchdogSec/2 after the last
    frame. By then the agent must have tried every source restart and exited.
    """
    unit = "peercam-camera.service"
    config = CameraConfig()
    watchdog = seconds(one(unit, "Service", "WatchdogSec"))
    ladder = config.source_restarts * (config.frame_stall + RESTART_ALLOWANCE)
    assert watchdog / 2 > ladder, (watchdog, ladder)
    # ...and a hung event loop is still caught within a minute.
    assert watchdog <= 60


def test_camera_start_limit_stops_a_permanently_stuck_camera() -> None:
    """Every try of a dead camera fails within the ladder: systemd must run out of tries."""
    unit = "peercam-camera.service"
    config = CameraConfig()
    per_try = (config.frame_stall * (config.source_restarts + 1)
               + config.source_restarts * RESTART_ALLOWANCE
               + seconds(one(unit, "Service", "RestartSec")))
    burst = int(one(unit, "Unit", "StartLimitBurst"))
    interval = seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    assert burst * per_try < interval
    # A camera that cannot register (no network at boot) is not a crash loop:
    # one try lasts TimeoutStartSec, so it never reaches the burst.
    assert burst * seconds(one(unit, "Service", "TimeoutStartSec")) > interval


@pytest.mark.parametrize(
    ("unit", "command", "variable"),
    [("peercam-rendezvous.service", "rendezvous", "PEERCAM_RENDEZVOUS_ARGS"),
     ("peercam-stun.service", "stun", "PEERCAM_STUN_ARGS")],
)
def test_server_units_take_their_flags_from_an_env_file(
    unit: str, command: str, variable: str
) -> None:
    service = directives(unit)["Service"]
    assert one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "ExecStart").endswith(f"peercam {command} ${variable}")
    env_file = f"/etc/peercam/{command}.env"
    assert one(unit, "Service", "EnvironmentFile") == f"-{env_file}"  # optional
    # The unit's default flags and every example in the shipped env file parse.
    defaults = [v.strip('"').partition("=")[2] for v in service["Environment"]
                if v.strip('"').startswith(f"{variable}=")]
    examples = [line.partition("=")[2] for line in
                (SYSTEMD / Path(env_file).name).read_text().splitlines()
                if line.startswith(f"#{variable}=")]
    assert len(defaults) == 1 and len(examples) >= 2
    assert defaults[0] == examples[0]  # the file's first line documents the default
    for flags in defaults + examples:
        args = build_parser().parse_args([command, *flags.split()])
        assert args.command == command


def test_rendezvous_may_bind_443_and_nothing_more() -> None:
    unit = "peercam-rendezvous.service"
    assert one(unit, "Service", "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "Service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    # A missing LoadCredential= file fails the start: TLS/TURN credentials go in a drop-in.
    assert "LoadCredential" not in directives(unit)["Service"]


def test_whep_unit_and_its_config_agree(tmp_path: Path) -> None:
    """The unit's state directory is the shipped config's; the service user can pair it."""
    from camera.client.whep_config import DEFAULT_CONFIG, load_config

    unit = "peercam-whep.service"
    assert one(unit, "Service", "ExecStart").endswith(
        f"peercam whep serve --config {DEFAULT_CONFIG}")
    assert one(unit, "Service", "User") == "peercam"  # the installer's service user
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""  # port 8889: no privilege
    config = load_config(SYSTEMD / "whep.toml")
    assert config.state_dir == Path("/var/lib") / one(unit, "Service", "StateDirectory")
    assert config.listen == ("127.0.0.1", 8889)  # loopback unless the owner says otherwise
    assert config.cameras == ()
    # Every commented example in it is valid once uncommented.
    lines = (SYSTEMD / "whep.toml").read_text().splitlines()
    setting = re.compile(r"^# ([a-z_]+ = |\[cameras\.)")
    uncommented = [line[2:] if setting.match(line) else line for line in lines]
    example = tmp_path / "whep.toml"
    example.write_text("\n".join(uncommented) + "\n")
    full = load_config(example)
    assert [c.name for c in full.cameras] == ["front"]
    assert full.cors_origins == ("https://ha.example",)
