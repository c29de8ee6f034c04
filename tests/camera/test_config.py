"""Config precedence (defaults < TOML < env < flags) and clear errors for broken config."""

from __future__ import annotations

from pathlib import Path

import pytest

from camera.config import CameraConfig, load_camera_config, ws_url
from camera.errors import BadConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "camera.toml"
    path.write_text(text)
    return path


def test_defaults_are_720p30_2mbit_test_pattern() -> None:
    config = CameraConfig()
    assert (config.video.width, config.video.height, config.video.fps) == (1280, 720, 30)
    assert config.video.bitrate == 2_000_000
    assert config.source == "testpattern"
    assert config.ice_servers is None  # use the rendezvous' explicit list


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, """
[camera]
rendezvous = "ws://198.51.100.7:8080"
source = "v4l2"
device = "/dev/video2"

[video]
width = 640
height = 360
fps = 25
""")
    config = load_camera_config(path)
    assert config.rendezvous == "ws://198.51.100.7:8080"
    assert (config.source, config.device) == ("v4l2", "/dev/video2")
    assert (config.video.width, config.video.fps) == (640, 25)

    env = {"PEERCAM_RENDEZVOUS": "wss://203.0.113.9", "PEERCAM_SOURCE": "testpattern"}
    config = load_camera_config(path, env)
    assert config.rendezvous == "wss://203.0.113.9" and config.source == "testpattern"

    config = load_camera_config(path, env, {"rendezvous": "ws://127.0.0.1:1", "fps": 15,
                                            "width": None})
    assert config.rendezvous == "ws://127.0.0.1:1"
    assert (config.video.width, config.video.fps) == (640, 15)  # None leaves the file's value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[camera\nsource=", "not valid TOML"),
        ("[cameras]\n", "unknown table"),
        ("[camera]\nsorce = 'file'\n", "unknown camera setting"),
        ("[camera]\nsource = 'webcam'\n", "source 'webcam'"),
        ("[camera]\nsource = 'file'\n", "needs a file"),
        ("[camera]\nrendezvous = 'ftp://x'\n", "rendezvous 'ftp://x'"),
        ("[video]\nwidth = 641\n", "video size 641x720"),
        ("[video]\nfps = 0\n", "fps 0"),
        ("[video]\nbitrate = 'fast'\n", "bad setting"),
        ("[video]\nframerate = 30\n", "unknown video setting"),
    ],
)
def test_broken_config_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(BadConfig, match=fragment.replace("(", r"\(")):
        load_camera_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadConfig, match="cannot read"):
        load_camera_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("ws://h:1", "ws://h:1/ws/camera"),
        ("http://h:1/", "ws://h:1/ws/camera"),
        ("https://h", "wss://h/ws/camera"),
        ("wss://h/ws/viewer", "wss://h/ws/camera"),
    ],
)
def test_ws_url(base: str, expected: str) -> None:
    assert ws_url(base, "/ws/camera") == expected


def test_every_setting_is_in_the_operations_reference() -> None:
    """docs/operations.md's configuration table names every setting there is."""
    import dataclasses
    from pathlib import Path

    from camera.config import CameraConfig, HardwareConfig
    from camera.sources.base import VideoSettings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    reference = doc[doc.index("## Configuration reference"):doc.index("## Troubleshooting")]
    names = {f.name for cls in (CameraConfig, VideoSettings, HardwareConfig)
             for f in dataclasses.fields(cls)} - {"video", "hardware"}
    missing = sorted(n for n in names if f"`{n}`" not in reference)
    assert missing == []
