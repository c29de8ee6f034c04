"""Option groups more than one command takes, defined once, and small parsing helpers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host means all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: need HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def port_number(text: str) -> int:
    """A TCP/UDP port, 0 (any free one) to 65535."""
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"port {text!r}: need 0..65535")
    return int(text)


def ice_server(text: str) -> dict[str, Any]:
    if not text.startswith(("stun:", "turn:", "stuns:", "turns:")):
        raise argparse.ArgumentTypeError(f"{text!r}: need a stun: or turn: URL")
    return {"urls": [text]}


def default_config() -> Path | None:
    path = Path("/etc/peercam/camera.toml")
    return path if path.exists() else None


def add_camera_files(parser: argparse.ArgumentParser, *, socket: bool = True) -> None:
    """--config, --state-dir (and --socket): which camera a device command acts on."""
    parser.add_argument("--config", type=Path, default=None,
                        help="camera config (default: /etc/peercam/camera.toml if present)")
    parser.add_argument("--state-dir", type=Path,
                        help="the camera's state directory (device key, viewers)")
    if socket:
        parser.add_argument("--socket", type=Path,
                            help="control socket (default: the running camera's, "
                                 "else from the config)")


def add_tls_client(parser: argparse.ArgumentParser) -> None:
    """--tls-ca/--insecure for a wss:// rendezvous connection."""
    parser.add_argument("--tls-ca", help="CA bundle or certificate to trust for wss://")
    parser.add_argument("--insecure", action="store_true",
                        help="development only: accept any rendezvous certificate")


def add_ice_servers(parser: argparse.ArgumentParser, default: Any, help_text: str) -> None:
    parser.add_argument("--ice-server", type=ice_server, action="append", default=default,
                        metavar="URL", help=help_text)


def add_video_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--fps", type=int)
    parser.add_argument("--bitrate", type=int, help="bits per second")


def video_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("width", "height", "fps", "bitrate")}


def log_level_default() -> str:
    return os.environ.get("PEERCAM_LOG_LEVEL", "INFO")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
