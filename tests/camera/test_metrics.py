"""The camera's Prometheus textfile: rendering (checked by promtool), writing, settings."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from camera.config import CameraConfig, load_camera_config
from camera.errors import BadConfig
from camera.metrics import (
    MAX_VIEWER_SERIES,
    CameraCounters,
    MetricsFile,
    render,
    write_textfile,
)
from camera.status import DeviceStatus, LinkStatus, NatStatus, SourceStatus, ViewerStatus
from tests.prometheus import assert_lint_clean, value


def viewer(session: str, *, relayed: bool = False, connected: bool = True,
           phase: str = "live", rtt_ms: float | None = 12.0) -> ViewerStatus:
    return ViewerStatus(session=session, name="kitchen", fingerprint="ab:cd", connected=connected,
                        pair="host->relay" if relayed else "host->srflx", relayed=relayed,
                        bitrate=800_000 if connected else None, rtt_ms=rtt_ms, phase=phase)


STATUS = DeviceStatus(
    state="fault",
    device_id="AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGG",
    uptime=120.5,
    rendezvous=LinkStatus(url="wss://rdv.example", state="fault", connected=False,
                          reconnects=4, network_down=False, last_error="boom", recoveries=2),
    nat=NatStatus(type="port-restricted-cone", summary="port-restricted cone NAT"),
    source=SourceStatus(kind="testpattern", fps=29.9, frames=3600, last_frame_age=0.03,
                        restarts=1, size="1280x720"),
    viewers=(viewer("direct01"), viewer("relay001", relayed=True, rtt_ms=None),
             viewer("waiting1", connected=False, phase="answering")),
    pairing_open=True,
    viewers_paired=3,
    refusals=5,
    errors=1,
)
COUNTERS = CameraCounters(keyframes_published=40, keyframe_requests=9, keyframe_requests_sent=6,
                          source_restarts=1, link_reconnects=1, link_rebuilds=1,
                          watchdog_stopped=False, replaced=0)


def test_the_textfile_passes_promtool_and_says_what_the_status_says() -> None:
    text = render(STATUS, COUNTERS, 1_700_000_000.0)
    assert_lint_clean(text)
    assert value(text, "peercam_camera_info", device_id=STATUS.device_id,
                 source="testpattern", size="1280x720") == 1
    assert value(text, "peercam_camera_last_update_timestamp_seconds") == 1_700_000_000.0
    assert value(text, "peercam_camera_frames_published_total") == 3600
    assert value(text, "peercam_camera_keyframe_requests_total") == 9
    assert value(text, "peercam_camera_keyframe_requests_sent_total") == 6
    assert value(text, "peercam_camera_source_frames_per_second") == 29.9
    assert value(text, "peercam_camera_viewers", phase="live") == 2
    assert value(text, "peercam_camera_viewers", phase="answering") == 1
    assert value(text, "peercam_camera_viewers", phase="waiting") == 0
    assert value(text, "peercam_camera_viewers_connected", path="direct") == 1
    assert value(text, "peercam_camera_viewers_connected", path="relayed") == 1
    assert value(text, "peercam_camera_viewer_path_info", session="relay001", path="relayed",
                 pair="host->relay") == 1
    assert value(text, "peercam_camera_viewer_rtt_seconds", session="direct01") == 0.012
    assert value(text, "peercam_camera_viewer_sent_bytes_per_second",
                 session="direct01") == 100_000
    assert "waiting1" not in text  # not connected: in the totals only
    assert 'peercam_camera_viewer_rtt_seconds{session="relay001"}' not in text  # no RTT yet
    assert value(text, "peercam_camera_nat_type_info", type="port-restricted-cone") == 1
    assert value(text, "peercam_camera_rendezvous_registered") == 0
    assert value(text, "peercam_camera_rendezvous_state", state="fault") == 1
    assert value(text, "peercam_camera_rendezvous_state", state="registered") == 0
    assert value(text, "peercam_camera_rendezvous_reconnects_total") == 4
    assert value(text, "peercam_camera_rendezvous_recoveries_total") == 2
    assert value(text, "peercam_camera_recovery_actions_total", action="link_rebuild") == 1
    assert value(text, "peercam_camera_recovery_actions_total", action="watchdog_stop") == 0
    assert value(text, "peercam_camera_refusals_total") == 5
    assert value(text, "peercam_camera_errors_total") == 1
    assert value(text, "peercam_camera_pairing_open") == 1


def test_before_the_first_frame_and_nat_check_the_file_is_still_valid() -> None:
    status = replace(STATUS, nat=NatStatus(), viewers=(),
                     source=replace(STATUS.source, frames=0, fps=0.0, last_frame_age=None))
    text = render(status, CameraCounters(), 0.0)
    assert_lint_clean(text)
    assert value(text, "peercam_camera_nat_type_info", type="unknown") == 1
    assert "\npeercam_camera_last_frame_age_seconds " not in text


def test_per_viewer_series_are_bounded() -> None:
    many = tuple(viewer(f"v{i:07d}", relayed=i % 2 == 1) for i in range(300))
    text = render(replace(STATUS, viewers=many), COUNTERS, 0.0)
    assert_lint_clean(text)
    assert text.count("peercam_camera_viewer_path_info{") == MAX_VIEWER_SERIES
    assert value(text, "peercam_camera_viewers", phase="live") == 300
    assert value(text, "peercam_camera_viewers_connected", path="relayed") == 150


def test_label_values_from_outside_are_escaped() -> None:
    hostile = replace(STATUS, state='a"b\\c\nd', nat=NatStatus(type='x"}\n# TYPE evil gauge'))
    text = render(hostile, COUNTERS, 0.0)
    assert_lint_clean(text)
    assert value(text, "peercam_camera_state_info", state='a"b\\c\nd') == 1
    assert "\n# TYPE evil" not in text


def test_the_file_is_replaced_atomically_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    old = os.umask(0o077)
    try:
        write_textfile(path, "a 1\n")
        first = path.stat().st_ino
        write_textfile(path, "a 2\n")
    finally:
        os.umask(old)
    assert path.read_text() == "a 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != first  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.prom"]
    with pytest.raises(FileNotFoundError):
        write_textfile(tmp_path / "missing" / "metrics.prom", "a 1\n")
    assert not (tmp_path / "missing").exists()


def test_where_the_file_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert CameraConfig(state_dir=tmp_path).metrics_path == tmp_path / "metrics.prom"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/peercam")
    assert CameraConfig(state_dir=tmp_path).metrics_path == Path("/run/peercam/metrics.prom")
    assert CameraConfig(metrics_file=True).metrics_path == Path("/run/peercam/metrics.prom")
    assert CameraConfig(metrics_file=False).metrics_path is None
    assert CameraConfig(metrics_file="").metrics_path is None
    assert MetricsFile.for_config(CameraConfig(metrics_file=False)).path is None
    assert CameraConfig(metrics_file="/x/y.prom").metrics_path == Path("/x/y.prom")


def test_metrics_file_settings_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "camera.toml"
    for setting, expected in (("false", None), ('""', None),
                              (f'"{tmp_path}/m.prom"', tmp_path / "m.prom")):
        toml.write_text(f"[camera]\nmetrics_file = {setting}\n")
        assert load_camera_config(toml).metrics_path == expected
    toml.write_text("[camera]\nmetrics_file = 5\n")
    with pytest.raises(BadConfig, match="metrics_file = 5: need a string or true or false"):
        load_camera_config(toml)


def test_a_configured_path_that_cannot_work_fails_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "metrics.prom"
    with pytest.raises(BadConfig, match=f"directory '{missing.parent}' does not exist"):
        MetricsFile.for_config(CameraConfig(metrics_file=str(missing)))
    with pytest.raises(BadConfig, match=r"reads only files named \*\.prom"):
        MetricsFile.for_config(CameraConfig(metrics_file=str(tmp_path / "metrics.txt")))
    good = MetricsFile.for_config(CameraConfig(metrics_file=str(tmp_path / "cam.prom")))
    assert good.path == tmp_path / "cam.prom"
