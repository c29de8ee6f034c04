"""Camera configuration: typed data, parsed from TOML, environment and flags at the edge.

Precedence: defaults < TOML file < environment (``PEERCAM_*``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camera.errors import BadConfig
from camera.sources.base import Source, VideoSettings

DEFAULT_STATE_DIR = Path(os.environ.get("STATE_DIRECTORY", "~/.local/state/peercam")).expanduser()


@dataclass(frozen=True)
class CameraConfig:
    """Everything the camera agent needs."""

    rendezvous: str = "ws://127.0.0.1:8080"
    """Base URL of the rendezvous server (ws:// or wss://, or http(s):// for the same)."""
    source: str = "testpattern"
    """Camera source: testpattern, file, v4l2 or picamera2."""
    file: str | None = None
    """For the file source: the MP4 or H.264 file to loop."""
    device: str = "/dev/video0"
    """For the v4l2 source: the video device."""
    video: VideoSettings = field(default_factory=VideoSettings)
    """Resolution, frame rate, bitrate, safety-net GOP."""
    state_dir: Path = DEFAULT_STATE_DIR
    """Where the device key lives (mode 0600)."""
    ice_servers: list[dict[str, Any]] | None = None
    """ICE servers for viewer connections; None: use the list the rendezvous sends."""
    max_viewers: int = 16
    """Viewers served at once; more are refused with a bye."""
    connect_timeout: float = 10.0
    """Seconds to wait for the rendezvous WebSocket and its hello."""
    backoff_base: float = 0.5
    """First reconnect delay cap in seconds (full jitter below it)."""
    backoff_cap: float = 30.0
    """Longest reconnect delay cap in seconds."""
    ice_timeout: float = 30.0
    """Seconds a viewer's peer connection may take to connect before it is dropped."""
    tls_ca: str | None = None
    """CA bundle (or the server's own certificate) to trust for wss://; None: the system's."""
    tls_insecure: bool = False
    """Development only: accept any server certificate. Never on a real camera."""

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What aiohttp needs for the rendezvous connection (True: default checks)."""
        return client_ssl(self.tls_ca, self.tls_insecure)

    def __post_init__(self) -> None:
        if self.source not in ("testpattern", "file", "v4l2", "picamera2"):
            raise BadConfig(
                f"source {self.source!r}: choose testpattern, file, v4l2 or picamera2"
            )
        if self.source == "file" and not self.file:
            raise BadConfig("source 'file' needs a file (--file or [camera] file)")
        if not self.rendezvous.startswith(("ws://", "wss://", "http://", "https://")):
            raise BadConfig(f"rendezvous {self.rendezvous!r}: need a ws(s):// or http(s):// URL")
        if not 1 <= self.max_viewers <= 256:
            raise BadConfig(f"max_viewers {self.max_viewers}: need 1..256")

    @property
    def camera_ws_url(self) -> str:
        return ws_url(self.rendezvous, "/ws/camera")


def client_ssl(ca: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """TLS for a client connection: verify by default (True); a CA file; or (dev) not at all."""
    if insecure:
        return False
    if ca:
        try:
            return ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise BadConfig(f"tls_ca {ca}: cannot load ({exc})") from None
    return True


def ws_url(base: str, path: str) -> str:
    """Turn a rendezvous base URL (ws/wss/http/https) into a WebSocket endpoint URL."""
    base = base.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http) :]
    if base.endswith(("/ws/camera", "/ws/viewer")):
        base = base.rsplit("/ws/", 1)[0]
    return base + path


_ENV = {
    "PEERCAM_RENDEZVOUS": "rendezvous",
    "PEERCAM_SOURCE": "source",
    "PEERCAM_FILE": "file",
    "PEERCAM_DEVICE": "device",
    "PEERCAM_STATE_DIR": "state_dir",
    "PEERCAM_TLS_CA": "tls_ca",
}
_VIDEO_KEYS = {f.name for f in dataclasses.fields(VideoSettings)}


def load_camera_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CameraConfig:
    """Build the config from a TOML file (``[camera]`` and ``[video]`` tables), env and flags."""
    values: dict[str, Any] = {}
    video: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise BadConfig(f"{path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise BadConfig(f"{path}: not valid TOML ({exc})") from None
        unknown = set(data) - {"camera", "video"}
        if unknown:
            raise BadConfig(f"{path}: unknown table(s) {sorted(unknown)}")
        values.update(data.get("camera", {}))
        video.update(data.get("video", {}))
    for name, key in _ENV.items():
        if env is not None and env.get(name):
            values[key] = env[name]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in _VIDEO_KEYS:
            video[key] = value
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(CameraConfig)}
    unknown = set(values) - known
    if unknown:
        raise BadConfig(f"unknown camera setting(s) {sorted(unknown)}")
    unknown = set(video) - _VIDEO_KEYS
    if unknown:
        raise BadConfig(f"unknown video setting(s) {sorted(unknown)}")
    try:
        if "state_dir" in values:
            values["state_dir"] = Path(values["state_dir"]).expanduser()
        return CameraConfig(**values, video=VideoSettings(**video))
    except TypeError as exc:
        raise BadConfig(f"bad setting: {exc}") from None


def make_configured_source(config: CameraConfig) -> Source:
    """The source the config names, with the options that source takes."""
    from camera.sources.registry import make_source

    options: dict[str, Any] = {}
    if config.source == "file":
        options["path"] = config.file
    elif config.source == "v4l2":
        options["device"] = config.device
    return make_source(config.source, config.video, **options)
