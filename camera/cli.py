"""``peercam``: the one command. Parsing and wiring only; the work is in the packages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from camera.errors import PeercamError

logger = logging.getLogger("peercam")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: need HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _ice_server(text: str) -> dict[str, Any]:
    if not text.startswith(("stun:", "turn:", "stuns:", "turns:")):
        raise argparse.ArgumentTypeError(f"{text!r}: need a stun: or turn: URL")
    return {"urls": [text]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peercam", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("PEERCAM_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="rendezvous + test-pattern camera; prints the viewer link")
    demo.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--state-dir", type=Path, default=None)
    _add_video_flags(demo)

    rdv = sub.add_parser("rendezvous", help="run the rendezvous server")
    rdv.add_argument("--listen", type=_host_port, default=("0.0.0.0", 8080), metavar="HOST:PORT")
    rdv.add_argument("--ice-server", type=_ice_server, action="append", default=[],
                     metavar="URL", help="ICE server handed to peers (repeatable)")

    cam = sub.add_parser("camera", help="run the camera agent")
    cam.add_argument("--config", type=Path, default=_default_config())
    cam.add_argument("--rendezvous", help="rendezvous URL, e.g. ws://host:8080")
    cam.add_argument("--source", choices=["testpattern", "file", "v4l2", "picamera2"])
    cam.add_argument("--file", help="file for the file source")
    cam.add_argument("--device", help="device for the v4l2 source")
    cam.add_argument("--state-dir", type=Path)
    _add_video_flags(cam)

    view = sub.add_parser("view", help="watch a camera from the command line")
    view.add_argument("target", help="viewer link or device ID")
    view.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    view.add_argument("--seconds", type=float, help="stop after this long")
    view.add_argument("--record", type=Path, help="save the stream to this MP4 (no transcoding)")
    view.add_argument("--json", action="store_true", help="print one JSON line of stats at the end")
    view.add_argument("--ice-server", type=_ice_server, action="append", default=None,
                      metavar="URL", help="ICE server (default: the rendezvous' list)")
    return parser


def _default_config() -> Path | None:
    path = Path("/etc/peercam/camera.toml")
    return path if path.exists() else None


def _add_video_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--fps", type=int)
    parser.add_argument("--bitrate", type=int, help="bits per second")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc/aioice are chatty at INFO about every candidate pair.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    from camera.webrtc import host_addresses_from_env, restrict_host_addresses

    restrict_host_addresses(host_addresses_from_env())
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = {
        "demo": _demo,
        "rendezvous": _rendezvous,
        "camera": _camera,
        "view": _view,
    }[args.command]
    try:
        return asyncio.run(handler(args))
    except PeercamError as exc:
        print(f"peercam: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _rendezvous(args: argparse.Namespace) -> int:
    from services.rendezvous import RendezvousConfig, start_rendezvous

    host, port = args.listen
    _server, runner, bound = await start_rendezvous(
        host, port, RendezvousConfig(ice_servers=args.ice_server)
    )
    print(f"LISTENING {host}:{bound}", flush=True)
    try:
        await _until_signalled()
    finally:
        await runner.cleanup()
    return 0


def _video_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("width", "height", "fps", "bitrate")}


async def _start_camera(config: Any) -> Any:
    from camera.agent import CameraAgent
    from camera.config import make_configured_source
    from camera.identity import DeviceIdentity

    identity = DeviceIdentity.load_or_create(config.state_dir)
    source = make_configured_source(config)
    agent = CameraAgent(config, source, identity)
    await agent.start()
    return agent


async def _camera(args: argparse.Namespace) -> int:
    from camera.config import load_camera_config

    overrides = {
        "rendezvous": args.rendezvous,
        "source": args.source,
        "file": args.file,
        "device": args.device,
        "state_dir": args.state_dir,
        **_video_overrides(args),
    }
    config = load_camera_config(args.config, os.environ, overrides)
    agent = await _start_camera(config)
    print(f"DEVICE {agent.device_id}", flush=True)
    try:
        await _until_signalled()
    finally:
        await agent.close()
    return 0


async def _demo(args: argparse.Namespace) -> int:
    import segno

    from camera.config import DEFAULT_STATE_DIR, load_camera_config
    from services.rendezvous import start_rendezvous

    _server, runner, port = await start_rendezvous(args.host, args.port)
    agent = None
    try:
        config = load_camera_config(
            None,
            None,
            {
                "rendezvous": f"ws://127.0.0.1:{port}",
                "source": "testpattern",
                "state_dir": args.state_dir or DEFAULT_STATE_DIR / "demo",
                **_video_overrides(args),
            },
        )
        agent = await _start_camera(config)
        await asyncio.wait_for(agent.registered.wait(), 10)
        host = args.host if args.host not in ("0.0.0.0", "::", "") else _lan_address()
        link = f"http://{_url_host(host)}:{port}/#device={agent.device_id}"
        with contextlib.suppress(Exception):
            segno.make(link, error="l").terminal(compact=True)
        print(f"DEVICE {agent.device_id}", flush=True)
        print(f"VIEWER {link}", flush=True)
        print("Open the link in a browser on this network; Ctrl-C stops the demo.", flush=True)
        await _until_signalled()
    finally:
        if agent is not None:
            await agent.close()
        await runner.cleanup()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _lan_address() -> str:
    """The first non-loopback IPv4 address of this machine, for a link a phone can open."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith(("127.", "169.254.")):
                return ip.ip
    return "127.0.0.1"


async def _view(args: argparse.Namespace) -> int:
    from camera.viewer import ViewError, view

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        stats = await view(
            args.target,
            rendezvous=args.rendezvous,
            seconds=args.seconds,
            record=args.record,
            ice_servers=args.ice_server,
            stop=stop,
        )
    except (ViewError, OSError, TimeoutError, ValueError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "frames": 0}), flush=True)
        print(f"peercam view: {exc}", file=sys.stderr)
        return 1
    result = stats.as_dict()
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{result['frames']} frames, {result['fps']} fps, first frame after "
            f"{result['ttff_ms']} ms, path {result['local_candidate']} -> "
            f"{result['remote_candidate']}",
            flush=True,
        )
    return 0 if stats.frames > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
