"""The WHEP gateway's settings and state: config file, tokens, its viewer key, its cameras.

The config is TOML (every key optional)::

    listen = "127.0.0.1:8889"          # loopback by default: put a TLS proxy in front
    state_dir = "/var/lib/peercam-whep" # key, tokens, paired cameras (0700)
    tokens_file = "/var/lib/peercam-whep/tokens"  # default: <state_dir>/tokens
    cors_origins = ["https://ha.example"]
    ice_servers = [{urls = ["stun:stun.example:3478"]}]   # overrides the rendezvous' list
    max_sessions = 16
    snapshot_cache = 3.0               # seconds a snapshot is served from memory
    snapshot_warm = 0.0                # seconds a snapshot session stays open afterwards
    tls_ca = "/etc/peercam/ca.pem"     # to trust for wss:// (default: the system's CAs)

    [cameras.front]
    device = "XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXC"
    rendezvous = "wss://rdv.example:8443"

``peercam whep pair`` records cameras in ``<state_dir>/cameras.json`` (the same
fields); a camera in the config file wins over a paired one of the same name.
Bearer tokens are one per line in the tokens file; if it is missing, the first
start writes one random token into it (mode 0600). Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camera.errors import BadConfig
from services.files import write_private
from services.signaling import normalize_device_id

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = ("127.0.0.1", 8889)
DEFAULT_CONFIG = Path("/etc/peercam/whep.toml")
TOKENS_FILE = "tokens"
CAMERAS_FILE = "cameras.json"
KEY_DIR = "viewer"
"""The gateway's own viewer key lives in ``<state_dir>/viewer/viewer_key.pem``."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
"""RFC 6750 b64token characters; at least 16 of them."""


def default_state_dir() -> Path:
    """$PEERCAM_WHEP_DIR, else $XDG_STATE_HOME/peercam-whep (~/.local/state/...)."""
    if os.environ.get("PEERCAM_WHEP_DIR"):
        return Path(os.environ["PEERCAM_WHEP_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "peercam-whep"


def check_camera_name(name: str) -> str:
    """A camera name is a URL path segment: letters, digits, ``_.-``, 1-64, not an ID."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadConfig(f"camera name {name!r}: need 1-64 of A-Z a-z 0-9 _ . - "
                        "(starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class CameraEntry:
    """One camera the gateway serves: its name, device ID and rendezvous URL."""

    name: str
    device_id: str
    rendezvous: str
    source: str = "config"
    """Where it was defined: ``config`` or ``paired``."""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "device": self.device_id, "rendezvous": self.rendezvous,
                "source": self.source}


def _camera(name: str, table: Any, source: str) -> CameraEntry:
    check_camera_name(name)
    if not isinstance(table, dict):
        raise BadConfig(f"[cameras.{name}]: need a table with device and rendezvous")
    unknown = set(table) - {"device", "rendezvous"}
    if unknown:
        raise BadConfig(f"[cameras.{name}]: unknown key {sorted(unknown)[0]!r}")
    try:
        device = normalize_device_id(str(table.get("device", "")))
    except (ValueError, TypeError):
        raise BadConfig(f"[cameras.{name}] device = {table.get('device')!r}: "
                        "not a device ID") from None
    url = table.get("rendezvous")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://", "http://",
                                                       "https://")):
        raise BadConfig(f"[cameras.{name}] rendezvous = {url!r}: need a ws(s):// or "
                        "http(s):// URL")
    return CameraEntry(name, device, url.rstrip("/"), source)


def _ice_servers(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadConfig("ice_servers: need a list of tables with urls")
    out: list[dict[str, Any]] = []
    for entry in value:
        if not isinstance(entry, dict) or "urls" not in entry:
            raise BadConfig(f"ice_servers entry {entry!r}: need a table with urls")
        urls = entry["urls"]
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not urls or not all(
                isinstance(u, str) and u.startswith(("stun:", "stuns:", "turn:", "turns:"))
                for u in urls):
            raise BadConfig(f"ice_servers urls {urls!r}: need stun: or turn: URLs")
        server: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if key in entry:
                if not isinstance(entry[key], str):
                    raise BadConfig(f"ice_servers {key}: need a string")
                server[key] = entry[key]
        out.append(server)
    return out


@dataclass(frozen=True)
class GatewayConfig:
    """What ``peercam whep serve`` runs with (see the module's description)."""

    listen: tuple[str, int] = DEFAULT_LISTEN
    state_dir: Path = field(default_factory=default_state_dir)
    tokens_file: Path | None = None
    cameras: tuple[CameraEntry, ...] = ()
    ice_servers: list[dict[str, Any]] | None = None
    """None: the rendezvous' list (as the CLI viewer without --ice-server)."""
    cors_origins: tuple[str, ...] = ()
    max_sessions: int = 16
    max_body: int = 32 * 1024
    """Largest request body (an SDP offer; the signaling protocol's own SDP cap)."""
    rate: float = 5.0
    """Requests per second per client address (bursts of ``burst``)."""
    burst: float = 20.0
    offer_timeout: float = 15.0
    snapshot_cache: float = 3.0
    snapshot_warm: float = 0.0
    snapshot_quality: int = 4
    """JPEG quantiser 2 (best) .. 31 (smallest)."""
    max_session_age: float = 12 * 3600.0
    """A session nobody ended (DELETE or the camera's bye) is forgotten after this."""
    tls_ca: str | None = None
    """CA bundle to trust for wss:// rendezvous URLs (default: the system's)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 1024:
            raise BadConfig(f"max_sessions {self.max_sessions}: need 1..1024")
        if not 0 <= self.snapshot_cache <= 60:
            raise BadConfig(f"snapshot_cache {self.snapshot_cache}: need 0..60 s")
        if not 0 <= self.snapshot_warm <= 300:
            raise BadConfig(f"snapshot_warm {self.snapshot_warm}: need 0..300 s")
        if not 2 <= self.snapshot_quality <= 31:
            raise BadConfig(f"snapshot_quality {self.snapshot_quality}: need 2..31")
        if not 0 < self.rate <= 1000 or not 1 <= self.burst <= 10000:
            raise BadConfig(f"rate {self.rate} / burst {self.burst}: need 0..1000 / 1..10000")
        if not 1 <= self.offer_timeout <= 120:
            raise BadConfig(f"offer_timeout {self.offer_timeout}: need 1..120 s")
        for origin in self.cors_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise BadConfig(f"cors_origins {origin!r}: need scheme://host[:port] or *")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise BadConfig("cameras: a name is used twice")

    @property
    def tokens_path(self) -> Path:
        return self.tokens_file or self.state_dir / TOKENS_FILE

    @property
    def key_dir(self) -> Path:
        return self.state_dir / KEY_DIR

    def with_paired(self) -> GatewayConfig:
        """This config with the cameras ``peercam whep pair`` recorded (config wins)."""
        own = {c.name for c in self.cameras}
        extra = tuple(c for c in load_paired(self.state_dir) if c.name not in own)
        return GatewayConfig(**{**self.__dict__, "cameras": self.cameras + extra})

    def camera(self, name_or_id: str) -> CameraEntry | None:
        """The camera with this name, or this device ID (any case, dashes optional)."""
        for camera in self.cameras:
            if camera.name == name_or_id:
                return camera
        try:
            device = normalize_device_id(name_or_id)
        except (ValueError, TypeError):
            return None
        for camera in self.cameras:
            if camera.device_id == device:
                return camera
        return None


_KEYS = {"listen", "state_dir", "tokens_file", "cameras", "ice_servers", "cors_origins",
         "max_sessions", "max_body", "rate", "burst", "offer_timeout", "snapshot_cache",
         "snapshot_warm", "snapshot_quality", "max_session_age", "tls_ca"}


def _listen(value: Any) -> tuple[str, int]:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit() and 0 <= int(port) < 65536:
            return host.strip("[]") or "127.0.0.1", int(port)
    raise BadConfig(f"listen = {value!r}: need \"HOST:PORT\"")


def load_config(path: Path | None) -> GatewayConfig:
    """The config at ``path`` (None: defaults, or /etc/peercam/whep.toml if present)."""
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    if path is None:
        return GatewayConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadConfig(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadConfig(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - _KEYS
    if unknown:
        raise BadConfig(f"{path}: unknown key {sorted(unknown)[0]!r}")
    kwargs: dict[str, Any] = {}
    if "listen" in data:
        kwargs["listen"] = _listen(data["listen"])
    for key in ("state_dir", "tokens_file", "tls_ca"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise BadConfig(f"{key} = {data[key]!r}: need a path")
            kwargs[key] = data[key] if key == "tls_ca" else Path(data[key])
    cameras = data.get("cameras", {})
    if not isinstance(cameras, dict):
        raise BadConfig("[cameras]: need tables [cameras.NAME]")
    kwargs["cameras"] = tuple(_camera(name, table, "config") for name, table in cameras.items())
    if "ice_servers" in data:
        kwargs["ice_servers"] = _ice_servers(data["ice_servers"])
    if "cors_origins" in data:
        origins = data["cors_origins"]
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise BadConfig(f"cors_origins = {origins!r}: need a list of origins")
        kwargs["cors_origins"] = tuple(o.rstrip("/") for o in origins)
    for key, kind in (("max_sessions", int), ("max_body", int), ("rate", float),
                      ("burst", float), ("offer_timeout", float), ("snapshot_cache", float),
                      ("snapshot_warm", float), ("snapshot_quality", int),
                      ("max_session_age", float)):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and not isinstance(value, int)):
                raise BadConfig(f"{key} = {value!r}: need a number")
            kwargs[key] = kind(value)
    try:
        return GatewayConfig(**kwargs)
    except BadConfig as exc:
        raise BadConfig(f"{path}: {exc}") from None


# -- state: directory, tokens, paired cameras -----------------------------------------


def ensure_state_dir(directory: Path) -> Path:
    """Make the state directory 0700 (and tighten one that is not)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def load_or_create_tokens(path: Path) -> tuple[list[str], bool]:
    """The bearer tokens in ``path`` (one a line, ``#`` comments); (tokens, created).

    A missing file gets one fresh random token, written 0600. Bad lines are a
    :class:`BadConfig` naming the line number, never the token.
    """
    if not path.exists():
        ensure_state_dir(path.parent)
        token = secrets.token_urlsafe(32)
        write_private(path, (token + "\n").encode("ascii"))
        return [token], True
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadConfig(f"{path}: cannot read the tokens ({exc})") from None
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by others; fixing mode to 0600", path)
        path.chmod(0o600)
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _TOKEN.match(line):
            raise BadConfig(f"{path} line {number}: a token is 16-256 of A-Z a-z 0-9 "
                            "._~+/=- (the line is not shown)")
        tokens.append(line)
    if not tokens:
        raise BadConfig(f"{path}: no token in it (one a line)")
    return tokens, False


def load_paired(state_dir: Path) -> list[CameraEntry]:
    path = state_dir / CAMERAS_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadConfig(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise BadConfig(f"{path}: need an object of cameras by name")
    return [_camera(name, table, "paired") for name, table in data.items()]


def save_paired(state_dir: Path, camera: CameraEntry) -> None:
    """Record (or replace) a paired camera under its name."""
    ensure_state_dir(state_dir)
    cameras = {c.name: {"device": c.device_id, "rendezvous": c.rendezvous}
               for c in load_paired(state_dir) if c.name != camera.name}
    cameras[camera.name] = {"device": camera.device_id, "rendezvous": camera.rendezvous}
    write_private(state_dir / CAMERAS_FILE,
                  (json.dumps(cameras, indent=1, sort_keys=True) + "\n").encode("utf-8"))
