"""Camera configuration: typed data, parsed from TOML, environment and flags at the edge.

Precedence: defaults < TOML file < environment (``PEERCAM_*``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camera.errors import BadConfig
from camera.sources.base import Source, VideoSettings

if TYPE_CHECKING:
    from camera.compat.playout import PlayoutDelay

DEFAULT_STATE_DIR = Path(os.environ.get("STATE_DIRECTORY", "~/.local/state/peercam")).expanduser()


@dataclass(frozen=True)
class HardwareConfig:
    """GPIO and serial devices (``[hardware]`` in the TOML file); all off by default."""

    led_pin: int | None = None
    """BCM GPIO number of the status LED; None: no LED."""
    led_active_high: bool = True
    """False when the LED is wired between the pin and 3.3 V (lit when the pin is low)."""
    led_pwm: bool = True
    """Dim the LED for "idle" with PWM; False for a plain on/off pattern set."""
    button_pin: int | None = None
    """BCM GPIO number of the pairing button (to ground, internal pull-up); None: no button."""
    button_pull_up: bool = True
    """True: the button shorts the pin to ground (the usual wiring)."""
    button_bounce: float = 0.05
    """Seconds an edge must be stable to count (contact bounce)."""
    long_press: float = 10.0
    """Seconds held before a release clears the viewer list (the LED confirms first)."""
    pairing_ttl: float = 600.0
    """Seconds a pairing window opened by the button or console stays open."""
    ptz_port: str | None = None
    """Serial port (or pyserial URL) of the RS-485 Pelco-D pan/tilt head; None: no head."""
    ptz_address: int = 1
    """Pelco-D address of the head (its DIP switches), 1..255."""
    ptz_baudrate: int = 2400
    """Baud rate set on the head (Pelco-D heads use 2400 or 9600)."""
    ptz_rate: float = 10.0
    """Control messages per second accepted from one viewer (more are dropped)."""
    console_port: str | None = None
    """Serial port for the line console (status, ID, pairing); None: no console."""
    console_baudrate: int = 115200
    """Baud rate of the console port."""
    gpio_mock: bool = False
    """Use gpiozero's mock pins even on a Pi (also the fallback where there is no GPIO)."""

    def __post_init__(self) -> None:
        for name in ("led_pin", "button_pin"):
            pin = getattr(self, name)
            if pin is not None and not 0 <= pin <= 27:
                raise BadConfig(f"{name} {pin}: need a BCM GPIO number 0..27")
        if self.led_pin is not None and self.led_pin == self.button_pin:
            raise BadConfig(f"led_pin and button_pin are both GPIO {self.led_pin}")
        if not 0 <= self.button_bounce < 1:
            raise BadConfig(f"button_bounce {self.button_bounce}: need 0..1 s")
        if not 1 <= self.long_press <= 60:
            raise BadConfig(f"long_press {self.long_press}: need 1..60 s")
        if not 10 <= self.pairing_ttl <= 86400:
            raise BadConfig(f"pairing_ttl {self.pairing_ttl}: need 10..86400 s")
        if not 1 <= self.ptz_address <= 255:
            raise BadConfig(f"ptz_address {self.ptz_address}: need 1..255")
        if not 0 < self.ptz_rate <= 100:
            raise BadConfig(f"ptz_rate {self.ptz_rate}: need 0..100 per second")
        for name in ("ptz_baudrate", "console_baudrate"):
            if getattr(self, name) not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
                raise BadConfig(f"{name} {getattr(self, name)}: not a standard baud rate")
        if self.ptz_port is not None and self.ptz_port == self.console_port:
            raise BadConfig(f"ptz_port and console_port are both {self.ptz_port}")


@dataclass(frozen=True)
class CameraConfig:
    """Everything the camera agent needs."""

    rendezvous: str = "ws://127.0.0.1:8080"
    """Base URL of the rendezvous server (ws:// or wss://, or http(s):// for the same);
    several, separated by commas, for several nodes of one service: tried in order,
    then round robin (see ``rendezvous_urls``)."""
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
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    """Status LED, pairing button, pan/tilt head, serial console."""
    control_socket: Path | None = None
    """Owner-only Unix socket for ``peercam status``/``viewers``/``pair``; None: under
    systemd ``$RUNTIME_DIRECTORY/control.sock``, else ``control.sock`` in the state dir."""
    port_prediction: bool = True
    """Behind a NAT that allocates ports sequentially (``peercam natcheck``), the
    answer also offers the next ports that NAT will likely map, so a viewer behind a
    port-filtering NAT can reach the camera directly; false: plain ICE candidates."""
    direct_upgrade: bool = True
    """A session that ICE put on a TURN relay keeps checking its direct pairs in the
    background (bounded rounds and packets) and moves to one that answers; false: it
    stays on the relay for its whole life, as plain ICE leaves it."""
    ice_tcp: bool = True
    """ICE over TCP (RFC 6544) beside UDP: host candidates that listen (passive) and
    connect (active), so a viewer on a network that lets no UDP out (many offices,
    guest networks) reaches a camera it can connect to directly, not only through
    the TURN relay; false: UDP candidates only, as plain aiortc has them."""
    probe_revert: bool = True
    """A viewer probing the layer above goes back down as soon as it reports picture
    loss (PLI/FIR, a NACK beyond the retransmit history), not only when its receiver
    reports show the loss a second or two later; false: the reports alone decide."""
    probe_padding: bool = True
    """Before a viewer moves up to the layer above, the camera pads its stream to that
    layer's rate for about a second (padding-only RTX packets the viewer drops
    unread) and moves it only if the viewer's link took that without losing more;
    false: the move is tried with the upper layer's IDR at once."""
    playout_delay: bool = True
    """Ask viewers whose offer lists the playout-delay RTP header extension (browsers
    do) to render each frame as soon as it is decoded, by stamping the extension on
    the camera's video; false: the viewer's own jitter buffer decides."""
    playout_delay_max_ms: int = 0
    """The largest playout delay asked for (0..40950 ms in steps of 10; the smallest is 0).
    Chromium renders as soon as possible up to 500 (above 0 pacing its decodes a little);
    above 500 its jitter buffer smooths arrival jitter again, holding frames at most this long."""
    frame_stall: float = 5.0
    """Seconds without a frame before the source counts as stuck (and is restarted)."""
    source_restarts: int = 2
    """Source restarts tried for a stuck camera before the agent exits (systemd restarts it)."""
    metrics_file: str | bool | None = None
    """Prometheus textfile (node_exporter's textfile collector) written every few
    seconds; None or true: ``$RUNTIME_DIRECTORY/metrics.prom`` under systemd, else
    ``metrics.prom`` in the state dir; "" or false: none."""

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What aiohttp needs for the rendezvous connection: the default checks (the
        system's CA store, or ``tls_ca``) in a context that resumes TLS sessions."""
        return resuming_client_ssl(self.tls_ca, self.tls_insecure)

    def __post_init__(self) -> None:
        if self.source not in ("testpattern", "file", "v4l2", "picamera2"):
            raise BadConfig(
                f"source {self.source!r}: choose testpattern, file, v4l2 or picamera2"
            )
        if self.source == "file" and not self.file:
            raise BadConfig("source 'file' needs a file (--file or [camera] file)")
        urls = split_urls(self.rendezvous)
        if not urls:
            raise BadConfig(f"rendezvous {self.rendezvous!r}: need a ws(s):// or http(s):// URL")
        for url in urls:
            if not url.startswith(("ws://", "wss://", "http://", "https://")):
                raise BadConfig(f"rendezvous {url!r}: need a ws(s):// or http(s):// URL")
        if len(urls) > MAX_RENDEZVOUS_URLS:
            raise BadConfig(f"rendezvous: {len(urls)} URLs, at most {MAX_RENDEZVOUS_URLS}")
        if not 1 <= self.max_viewers <= 256:
            raise BadConfig(f"max_viewers {self.max_viewers}: need 1..256")
        if not 0 <= self.playout_delay_max_ms <= 40950 or self.playout_delay_max_ms % 10:
            raise BadConfig(f"playout_delay_max_ms {self.playout_delay_max_ms}: need "
                            "0..40950 in steps of 10")
        if not 0.5 <= self.frame_stall <= 600:
            raise BadConfig(f"frame_stall {self.frame_stall}: need 0.5..600 s")
        if not 0 <= self.source_restarts <= 100:
            raise BadConfig(f"source_restarts {self.source_restarts}: need 0..100")

    @property
    def playout_delay_limits(self) -> PlayoutDelay | None:
        """What the camera asks viewers for (None: the setting is off)."""
        from camera.compat.playout import PlayoutDelay

        return PlayoutDelay(0, self.playout_delay_max_ms) if self.playout_delay else None

    @property
    def control_socket_path(self) -> Path:
        if self.control_socket is not None:
            return self.control_socket
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if runtime:
            return Path(runtime) / "control.sock"
        return self.state_dir / "control.sock"

    @property
    def metrics_path(self) -> Path | None:
        """Where the metrics textfile goes (see ``metrics_file``); None: not written."""
        if self.metrics_file is False or self.metrics_file == "":
            return None
        if isinstance(self.metrics_file, str):
            return Path(self.metrics_file).expanduser()
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(runtime or self.state_dir) / "metrics.prom"

    @property
    def rendezvous_urls(self) -> tuple[str, ...]:
        """Every rendezvous URL configured, in order (one, usually)."""
        return split_urls(self.rendezvous)

    @property
    def camera_ws_url(self) -> str:
        return ws_url(self.rendezvous, "/ws/camera")


#: Rendezvous URLs one camera may list.
MAX_RENDEZVOUS_URLS = 16


def split_urls(text: str) -> tuple[str, ...]:
    """The URLs of a ``rendezvous`` setting: comma-separated, blanks ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


class ResumingContext(ssl.SSLContext):
    """A client TLS context that offers each server name its last session again.

    A camera reconnecting to the same rendezvous (or the load balancer in front of
    it) resumes its TLS session from the server's ticket (TLS 1.3 PSK with a fresh
    ECDHE, so forward secrecy holds): the server skips its certificate and signature,
    the camera skips verifying the chain. Measured in-process on x86 (OpenSSL 3.0,
    P-256 certificate), the client's handshake CPU falls from 0.53 to 0.24 ms and
    the server's from 0.30 to 0.25 ms; on a Pi's cores the client's saving is
    several times larger. A server that does not take the ticket (another
    balancer, keys rotated) simply does a full handshake.
    """

    _sessions: dict[str | None, ssl.SSLSession]

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = self.sessions().get(_name(server_hostname))
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def sessions(self) -> dict[str | None, ssl.SSLSession]:
        try:
            return self._sessions
        except AttributeError:
            self._sessions = {}
            return self._sessions

    def remember(self, ssl_object: Any) -> bool:
        """Keep the session of an established connection (an ``ssl.SSLObject``, from
        the transport's ``ssl_object``) for the next one to its server name; whether
        this connection itself was resumed."""
        if not isinstance(ssl_object, ssl.SSLObject):
            return False
        session = ssl_object.session
        if session is not None and session.has_ticket:
            sessions = self.sessions()
            if len(sessions) >= MAX_RENDEZVOUS_URLS and _name(ssl_object.server_hostname) \
                    not in sessions:
                sessions.clear()
            sessions[_name(ssl_object.server_hostname)] = session
        return bool(ssl_object.session_reused)


def _name(host: str | bytes | None) -> str | None:
    return host.decode() if isinstance(host, bytes) else host


def resuming_client_ssl(ca: str | None, insecure: bool) -> ResumingContext | bool:
    """:func:`client_ssl`'s checks, in a context that resumes sessions (False: no TLS
    checks, for development only, and nothing to resume)."""
    if insecure:
        return False
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
    try:
        if ca:
            context.load_verify_locations(cafile=ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise BadConfig(f"tls_ca {ca}: cannot load ({exc})") from None
    return context


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


def page_url(base: str) -> str:
    """The rendezvous' web page (http/https) for a base URL in any of the four schemes."""
    url = ws_url(base, "")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws):]
    return url


def ws_url(base: str, path: str) -> str:
    """Turn a rendezvous base URL (ws/wss/http/https) into a WebSocket endpoint URL
    (of a list of several, the first)."""
    base = (split_urls(base) or ("",))[0].rstrip("/")
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
    "PEERCAM_CONTROL_SOCKET": "control_socket",
}
_VIDEO_KEYS = {f.name for f in dataclasses.fields(VideoSettings)}
_HARDWARE_KEYS = {f.name for f in dataclasses.fields(HardwareConfig)}


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               Path: "a path (string)", list: "a list"}


def _type_error(table: str, name: str, value: Any, allowed: list[Any]) -> BadConfig:
    words = " or ".join(_TYPE_WORDS.get(t, getattr(t, "__name__", str(t))) for t in allowed)
    return BadConfig(f"[{table}] {name} = {value!r}: need {words}"[:300])


def _checked(table: str, name: str, value: Any, declared: Any) -> Any:
    """``value`` if it is of the setting's declared type (a float setting takes an int)."""
    options = list(typing.get_args(declared)) if isinstance(declared, types.UnionType) else [
        declared]
    if value is None and type(None) in options:
        return None
    allowed = [typing.get_origin(t) or t for t in options if t is not type(None)]
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is Path and isinstance(value, str | Path):
            return Path(value).expanduser()
        if kind is list and isinstance(value, list):
            if all(isinstance(item, dict) for item in value):
                return value
            raise BadConfig(f"[{table}] {name}: need a list of tables")
    raise _type_error(table, name, value, allowed)


def _check_types(table: str, cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {name: _checked(table, name, value, hints[name]) for name, value in values.items()}


def load_camera_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    require_rendezvous: bool = False,
) -> CameraConfig:
    """Build the config from a TOML file (``[camera]``, ``[video]``, ``[hardware]``), env, flags.

    Every setting is checked against its declared type here, naming the setting.
    ``require_rendezvous``: the file, environment or flags must set ``rendezvous``
    (the camera agent has no sensible default server to register with).
    """
    values: dict[str, Any] = {}
    video: dict[str, Any] = {}
    hardware: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise BadConfig(f"{path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise BadConfig(f"{path}: not valid TOML ({exc})") from None
        unknown = set(data) - {"camera", "video", "hardware"}
        if unknown:
            raise BadConfig(f"{path}: unknown table(s) {sorted(unknown)}")
        for table, into in (("camera", values), ("video", video), ("hardware", hardware)):
            if not isinstance(data.get(table, {}), dict):
                raise BadConfig(f"{path}: [{table}] must be a table")
            into.update(data.get(table, {}))
    for name, key in _ENV.items():
        if env is not None and env.get(name):
            values[key] = env[name]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in _VIDEO_KEYS:
            video[key] = value
        elif key in _HARDWARE_KEYS:
            hardware[key] = value
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(CameraConfig)}
    unknown = set(values) - known
    if unknown:
        raise BadConfig(f"unknown camera setting(s) {sorted(unknown)}")
    unknown = set(video) - _VIDEO_KEYS
    if unknown:
        raise BadConfig(f"unknown video setting(s) {sorted(unknown)}")
    unknown = set(hardware) - _HARDWARE_KEYS
    if unknown:
        raise BadConfig(f"unknown hardware setting(s) {sorted(unknown)}")
    values = _check_types("camera", CameraConfig, values)
    video = _check_types("video", VideoSettings, video)
    hardware = _check_types("hardware", HardwareConfig, hardware)
    try:
        config = CameraConfig(
            **values, video=VideoSettings(**video), hardware=HardwareConfig(**hardware)
        )
    except TypeError as exc:
        raise BadConfig(f"bad setting: {exc}") from None
    if require_rendezvous and not values.get("rendezvous"):
        where = f"[camera] rendezvous in {path}" if path else "[camera] rendezvous in --config"
        raise BadConfig(f"no rendezvous server configured: set {where}, PEERCAM_RENDEZVOUS "
                        f"or --rendezvous (e.g. wss://rendezvous.example.net)")
    return config


def make_configured_source(config: CameraConfig) -> Source:
    """The source the config names, with the options that source takes."""
    from camera.sources.registry import make_source

    options: dict[str, Any] = {}
    if config.source == "file":
        options["path"] = config.file
    elif config.source == "v4l2":
        options["device"] = config.device
    return make_source(config.source, config.video, **options)
