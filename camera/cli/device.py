"""The commands that act on this machine's camera: ``camera``, ``status``, ``pair``, ``viewers``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camera.cli import exits
from camera.cli.options import (
    add_camera_files,
    add_tls_client,
    add_video_flags,
    default_config,
    video_overrides,
)
from camera.cli.signals import until_signalled
from camera.config import CameraConfig
from camera.errors import BadConfig
from camera.sdnotify import Notifier
from camera.status import DeviceStatus, format_status

logger = logging.getLogger("peercam")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cam = sub.add_parser("camera", help="run the camera agent (or: camera identity)")
    cam.add_argument("action", nargs="?", choices=["run", "identity"], default="run",
                     help="identity: print the running (or configured) camera's device ID")
    cam.add_argument("--create", action="store_true",
                     help="identity: make the device key if there is none (the installer)")
    add_camera_files(cam, socket=False)
    cam.add_argument("--rendezvous", help="rendezvous URL, e.g. ws://host:8080")
    cam.add_argument("--source", choices=["testpattern", "file", "v4l2", "picamera2"])
    cam.add_argument("--file", help="file for the file source")
    cam.add_argument("--device", help="device for the v4l2 source")
    add_tls_client(cam)
    add_video_flags(cam)
    cam.set_defaults(handler=camera_command, needs_webrtc=True)

    status = sub.add_parser("status", help="the running camera's state, network and viewers")
    add_camera_files(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.set_defaults(handler=status_command, needs_webrtc=True)

    pair = sub.add_parser("pair", help="open a pairing window; prints a link and a QR code")
    add_camera_files(pair)
    pair.add_argument("--rendezvous", help="rendezvous URL the link points at")
    pair.add_argument("--ttl", type=float, default=600.0, help="window length in seconds")
    pair.set_defaults(handler=pair_command, needs_webrtc=True)

    viewers = sub.add_parser("viewers", help="list or revoke the camera's paired viewers")
    viewers.add_argument("action", choices=["list", "revoke", "clear"])
    viewers.add_argument("handle", nargs="?", help="revoke: fingerprint or name")
    add_camera_files(viewers)
    viewers.add_argument("--json", action="store_true")
    viewers.set_defaults(handler=viewers_command, needs_webrtc=True)


def _camera_config(
    args: argparse.Namespace, *, require_rendezvous: bool = False, **extra: Any
) -> CameraConfig:
    from camera.config import load_camera_config

    overrides = {"state_dir": args.state_dir, **extra}
    return load_camera_config(args.config or default_config(), os.environ, overrides,
                              require_rendezvous=require_rendezvous)


@dataclass(frozen=True)
class Target:
    """The camera a device command acts on."""

    config: CameraConfig
    state_dir: Path
    socket: Path
    running: bool
    """A running agent recorded itself with this socket (it may still have stopped since)."""
    device_id: str | None


def find_camera(args: argparse.Namespace, **extra: Any) -> Target:
    """The running camera (its runtime record), else the one the config names.

    Without --socket/--state-dir/--config, a single running camera (the service,
    ``peercam camera`` or ``peercam demo``) is the one; with them, the running
    camera with that state directory, else the config's socket.
    """
    from camera.runtime import find_running

    config = _camera_config(args, **extra)
    socket = getattr(args, "socket", None)
    if socket is not None:
        return Target(config, config.state_dir, socket, False, None)
    running = find_running()
    explicit = args.state_dir is not None or args.config is not None
    if explicit:
        wanted = config.state_dir.resolve()
        running = [r for r in running if r.state_dir == wanted]
    if len(running) > 1:
        listing = ", ".join(f"{r.device_id} (state {r.state_dir}, pid {r.pid})" for r in running)
        raise BadConfig(f"{len(running)} cameras are running here: {listing}; "
                        f"pick one with --state-dir")
    if running:
        found = running[0]
        return Target(config, found.state_dir, found.control_socket, True, found.device_id)
    return Target(config, config.state_dir, config.control_socket_path, False, None)


def _require_key(state_dir: Path) -> str:
    """The device ID of the camera whose state is ``state_dir``; NoCamera if it has none."""
    from camera.identity import DeviceIdentity

    return DeviceIdentity.load(state_dir).device_id


async def camera_command(args: argparse.Namespace) -> int:
    if args.action == "identity":
        return _identity(args)
    if args.create:
        raise BadConfig("--create goes with: peercam camera identity --create")
    config = _camera_config(
        args,
        require_rendezvous=True,
        rendezvous=args.rendezvous,
        source=args.source,
        file=args.file,
        device=args.device,
        tls_ca=args.tls_ca,
        tls_insecure=True if args.insecure else None,
        **video_overrides(args),
    )
    if config.tls_insecure:
        logger.warning("--insecure: the rendezvous certificate is NOT checked (development only)")
    from camera import compat
    from camera.device import Device
    from camera.sdnotify import watchdog_interval

    compat.set_direct_upgrade(config.direct_upgrade)
    compat.set_ice_tcp(config.ice_tcp)

    ready_at = process_age()
    device = Device(config, notifier=Notifier.from_env(), watchdog_interval=watchdog_interval())
    agent = await device.start()
    print(f"DEVICE {agent.device_id}", flush=True)
    if ready_at is not None:  # where a restart's seconds go (the rest: registered, ready)
        logger.info("started %.2f s after the process (imports and config took %.2f s)",
                    process_age() or 0.0, ready_at)
    try:
        await until_signalled(agent.failed)
    finally:
        await device.close()
    return agent.exit_code


def process_age() -> float | None:
    """Seconds since this process began (Linux ``/proc``; None elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (IndexError, ValueError, OSError):
        return None


def _identity(args: argparse.Namespace) -> int:
    """``camera identity``: the device ID; ``--create`` makes the key if missing."""
    from camera.identity import DeviceIdentity

    if args.create:
        config = _camera_config(args)
        print(DeviceIdentity.load_or_create(config.state_dir).device_id, flush=True)
        return exits.OK
    args.socket = None
    target = find_camera(args)
    print(target.device_id or _require_key(target.state_dir), flush=True)
    return exits.OK


async def _ask_agent(target: Target, op: str, **fields: Any) -> dict[str, Any] | None:
    """The running agent's reply over the control socket; None if no agent runs."""
    from camera.control import AgentNotRunning, request

    try:
        reply = await request(target.socket, op, **fields)
    except AgentNotRunning:
        return None
    if not reply.get("ok"):
        raise BadConfig(f"the camera agent says: {reply.get('error')}")
    return reply


async def status_command(args: argparse.Namespace) -> int:
    from camera.control import request

    target = find_camera(args)
    reply = await request(target.socket, "status")
    if not reply.get("ok"):
        raise BadConfig(f"the camera agent says: {reply.get('error')}")
    status = DeviceStatus.from_dict(reply["status"])
    if args.json:
        print(json.dumps(status.as_dict()), flush=True)
        return exits.OK
    for line in format_status(status):
        print(line, flush=True)
    return exits.OK


async def pair_command(args: argparse.Namespace) -> int:
    import segno

    from camera.acl import PairingWindows
    from camera.config import page_url

    target = find_camera(args, rendezvous=args.rendezvous)
    reply = None if args.rendezvous else await _ask_agent(target, "pair", ttl=args.ttl)
    if reply is not None:
        link = reply["link"]  # the running agent opened it: its LED shows "pairing"
    else:
        # No agent: a window in the state directory, which the camera reads when it runs.
        device_id = _require_key(target.state_dir)
        config = _camera_config(args, require_rendezvous=True, rendezvous=args.rendezvous)
        window = PairingWindows(target.state_dir).open(args.ttl)
        link = f"{page_url(config.rendezvous)}/#device={device_id}&pair={window.secret}"
    with contextlib.suppress(Exception):
        segno.make(link, error="l").terminal(compact=True)
    print(f"PAIR {link}", flush=True)
    minutes = args.ttl / 60
    print(f"Open it on the viewer within {minutes:.0f} min; it works once.", flush=True)
    return exits.OK


async def viewers_command(args: argparse.Namespace) -> int:
    if args.action == "revoke" and not args.handle:
        raise BadConfig("revoke needs a fingerprint or name (see peercam viewers list)")
    target = find_camera(args)
    fields = {"handle": args.handle} if args.action == "revoke" else {}
    op = {"list": "viewers"}.get(args.action, args.action)
    reply = await _ask_agent(target, op, **fields)
    if reply is None:
        return _viewers_offline(args, target)
    if args.action == "list":
        _print_viewers(args, reply["viewers"])
        return exits.OK
    if args.action == "clear":
        print(f"revoked {reply['revoked']} viewer(s)", flush=True)
        return exits.OK
    return _print_revoked(args.handle, reply["revoked"])


def _print_revoked(handle: str, revoked: list[dict[str, Any]]) -> int:
    from camera.errors import PeercamError

    if not revoked:
        raise PeercamError(f"no paired viewer is {handle!r} (see peercam viewers list)")
    for viewer in revoked:
        print(f"revoked {viewer['fingerprint']} {viewer['name']}", flush=True)
    return exits.OK


def _print_viewers(args: argparse.Namespace, viewers: list[dict[str, Any]]) -> None:
    import time

    rows = [{"fingerprint": v["fingerprint"], "name": v["name"],
             "added": time.strftime("%Y-%m-%d %H:%M", time.localtime(v["added"])),
             **({"watching": v["watching"]} if "watching" in v else {})}
            for v in viewers]
    if args.json:
        print(json.dumps(rows), flush=True)
        return
    for row in rows:
        watching = "  (watching)" if row.get("watching") else ""
        print(f"{row['fingerprint']}  {row['added']}  {row['name']}{watching}", flush=True)
    if not rows:
        print("no paired viewers", flush=True)


def _viewers_offline(args: argparse.Namespace, target: Target) -> int:
    """No agent running: work on the files directly (it reloads them when it starts)."""
    from camera.acl import ViewerACL

    _require_key(target.state_dir)
    acl = ViewerACL(target.state_dir)
    if args.action == "list":
        _print_viewers(args, [{"fingerprint": v.fingerprint, "name": v.name, "added": v.added}
                              for v in acl.viewers()])
        return exits.OK
    if args.action == "clear":
        print(f"revoked {acl.clear()} viewer(s)", flush=True)
        return exits.OK
    gone = acl.revoke(args.handle)
    return _print_revoked(args.handle, [{"fingerprint": v.fingerprint, "name": v.name}
                                        for v in gone])
