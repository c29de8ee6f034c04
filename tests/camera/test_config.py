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
        ("[video]\nbitrate = 'fast'\n", "bitrate = 'fast': need an integer"),
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[video]\nfps = 30.5\n", "[video] fps = 30.5: need an integer"),
        ('[video]\nwidth = "abc"\n', "[video] width = 'abc': need an integer"),
        ('[video]\nbitrate = "2M"\n', "[video] bitrate = '2M': need an integer"),
        ("[video]\nheight = true\n", "[video] height = True: need an integer"),
        ('[video]\ngop_seconds = "2"\n', "[video] gop_seconds = '2': need a number"),
        ("[camera]\nmax_viewers = 4.0\n", "[camera] max_viewers = 4.0: need an integer"),
        ("[camera]\ntls_insecure = 1\n", "[camera] tls_insecure = 1: need true or false"),
        ("[camera]\nsource = 3\n", "[camera] source = 3: need a string"),
        ("[camera]\nstate_dir = 7\n", "[camera] state_dir = 7: need a path (string)"),
        ("[camera]\nice_servers = [1]\n", "[camera] ice_servers: need a list of tables"),
        ("[camera]\nfile = false\n", "[camera] file = False: need a string"),
        ("[hardware]\nled_pin = 17.0\n", "[hardware] led_pin = 17.0: need an integer"),
        ('[hardware]\nlong_press = "10"\n', "[hardware] long_press = '10': need a number"),
        ("[hardware]\ngpio_mock = 0\n", "[hardware] gpio_mock = 0: need true or false"),
    ],
)
def test_every_setting_is_checked_for_its_type_at_load(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(BadConfig) as caught:
        load_camera_config(write(tmp_path, text))
    assert str(caught.value) == message


def test_a_float_setting_takes_an_integer(tmp_path: Path) -> None:
    config = load_camera_config(write(tmp_path, "[video]\ngop_seconds = 3\n"
                                                "[hardware]\nlong_press = 5\n"))
    assert config.video.gop_seconds == 3.0 and isinstance(config.video.gop_seconds, float)
    assert config.hardware.long_press == 5.0


def test_flags_are_type_checked_too() -> None:
    with pytest.raises(BadConfig, match=r"\[video\] fps = 29.97: need an integer"):
        load_camera_config(None, None, {"fps": 29.97})


def test_the_camera_needs_a_rendezvous_configured(tmp_path: Path) -> None:
    with pytest.raises(BadConfig, match="no rendezvous server configured"):
        load_camera_config(write(tmp_path, "[video]\nfps = 25\n"), {}, require_rendezvous=True)
    config = load_camera_config(None, {"PEERCAM_RENDEZVOUS": "wss://r.example"},
                                require_rendezvous=True)
    assert config.rendezvous == "wss://r.example"
