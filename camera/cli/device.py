"""The commands that act on this machine's camera: ``camera``, ``status``, ``pair``, ``viewers``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any

from camera.cli.options import add_camera_files, add_tls_client, add_video_flags, video_overrides
from camera.cli.signals import until_signalled
from camera.errors import BadConfig
from camera.sdnotify import Notifier

logger = logging.getLogger("peercam")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cam = sub.add_parser("camera", help="run the camera agent (or: camera identity)")
    cam.add_argument("action", nargs="?", choices=["run", "identity"], default="run",
                     help="identity: print the device ID and exit")
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


def _camera_config(args: argparse.Namespace, **extra: Any) -> Any:
    from camera.config import load_camera_config

    overrides = {"state_dir": args.state_dir, **extra}
    return load_camera_config(args.config, os.environ, overrides)


async def camera_command(args: argparse.Namespace) -> int:
    config = _camera_config(
        args,
        rendezvous=args.rendezvous,
        source=args.source,
        file=args.file,
        device=args.device,
        tls_ca=args.tls_ca,
        tls_insecure=True if args.insecure else None,
        **video_overrides(args),
    )
    if args.action == "identity":
        from camera.identity import DeviceIdentity

        print(DeviceIdentity.load_or_create(config.state_dir).device_id, flush=True)
        return 0
    if config.tls_insecure:
        logger.warning("--insecure: the rendezvous certificate is NOT checked (development only)")
    from camera.device import Device
    from camera.sdnotify import watchdog_interval

    device = Device(config, notifier=Notifier.from_env(), watchdog_interval=watchdog_interval())
    agent = await device.start()
    print(f"DEVICE {agent.device_id}", flush=True)
    try:
        await until_signalled(agent.failed)
    finally:
        await device.close()
    return agent.exit_code




async def _ask_agent(args: argparse.Namespace, op: str, **fields: Any) -> dict[str, Any] | None:
    """The running agent's reply over the control socket; None if no agent runs."""
    from camera.control import AgentNotRunning, request

    path = args.socket or _camera_config(args).control_socket_path
    try:
        reply = await request(path, op, **fields)
    except AgentNotRunning:
        if args.socket is not None:
            raise
        return None
    if not reply.get("ok"):
        raise BadConfig(f"the camera agent says: {reply.get('error')}")
    return reply


async def status_command(args: argparse.Namespace) -> int:
    from camera.control import request

    path = args.socket or _camera_config(args).control_socket_path
    reply = await request(path, "status")
    if not reply.get("ok"):
        raise BadConfig(f"the camera agent says: {reply.get('error')}")
    status = reply["status"]
    if args.json:
        print(json.dumps(status), flush=True)
        return 0
    for line in format_status(status):
        print(line, flush=True)
    return 0


def format_status(status: dict[str, Any]) -> list[str]:
    """``peercam status`` for people: one fact per line, then one line per viewer."""
    rdv, nat, src = status["rendezvous"], status["nat"], status["source"]
    link = "connected" if rdv["connected"] else (
        "no network" if rdv["network_down"] else "not connected")
    lines = [
        f"state:       {status['state']}",
        f"device:      {status['device_id']}",
        f"rendezvous:  {rdv['url']} ({link}, {rdv['reconnects']} reconnects)",
        f"nat:         {nat['summary'] or 'not checked yet'}",
        f"source:      {src['kind']} {src['size']} at {src['fps']} fps "
        f"({src['frames']} frames, {src['restarts']} restarts)",
        f"pairing:     {'open' if status['pairing_open'] else 'closed'}; "
        f"{status['viewers_paired']} paired viewer(s)",
        f"uptime:      {status['uptime']:.0f} s",
        f"viewers:     {len(status['viewers'])}",
    ]
    for v in status["viewers"]:
        rate = "-" if v["bitrate"] is None else f"{v['bitrate'] / 1e6:.2f} Mbit/s"
        rtt = "-" if v["rtt_ms"] is None else f"{v['rtt_ms']:.0f} ms"
        state = v["pair"] if v["connected"] else "connecting"
        lines.append(f"  {v['name'] or '?'} [{v['fingerprint'] or '-'}] {state} "
                     f"{'(relayed) ' if v['relayed'] else ''}{rate} rtt {rtt}")
    return lines


async def pair_command(args: argparse.Namespace) -> int:
    import segno

    from camera.acl import PairingWindows
    from camera.config import page_url
    from camera.identity import DeviceIdentity

    config = _camera_config(args, rendezvous=args.rendezvous)
    reply = None if args.rendezvous else await _ask_agent(args, "pair", ttl=args.ttl)
    if reply is not None:
        link = reply["link"]  # the running agent opened it: its LED shows "pairing"
    else:
        identity = DeviceIdentity.load_or_create(config.state_dir)
        window = PairingWindows(config.state_dir).open(args.ttl)
        link = f"{page_url(config.rendezvous)}/#device={identity.device_id}&pair={window.secret}"
    with contextlib.suppress(Exception):
        segno.make(link, error="l").terminal(compact=True)
    print(f"PAIR {link}", flush=True)
    minutes = args.ttl / 60
    print(f"Open it on the viewer within {minutes:.0f} min; it works once.", flush=True)
    return 0


async def viewers_command(args: argparse.Namespace) -> int:
    if args.action == "revoke" and not args.handle:
        raise BadConfig("revoke needs a fingerprint or name (see peercam viewers list)")
    fields = {"handle": args.handle} if args.action == "revoke" else {}
    op = {"list": "viewers"}.get(args.action, args.action)
    reply = await _ask_agent(args, op, **fields)
    if reply is None:
        return _viewers_offline(args)
    if args.action == "list":
        _print_viewers(args, reply["viewers"])
        return 0
    if args.action == "clear":
        print(f"revoked {reply['revoked']} viewer(s)", flush=True)
        return 0
    if not reply["revoked"]:
        print(f"peercam: no paired viewer is {args.handle!r}", file=sys.stderr)
        return 1
    for viewer in reply["revoked"]:
        print(f"revoked {viewer['fingerprint']} {viewer['name']}", flush=True)
    return 0


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


def _viewers_offline(args: argparse.Namespace) -> int:
    """No agent running: work on the files directly (it reloads them when it starts)."""
    from camera.acl import ViewerACL

    acl = ViewerACL(_camera_config(args).state_dir)
    if args.action == "list":
        _print_viewers(args, [{"fingerprint": v.fingerprint, "name": v.name, "added": v.added}
                              for v in acl.viewers()])
        return 0
    if args.action == "clear":
        print(f"revoked {acl.clear()} viewer(s)", flush=True)
        return 0
    gone = acl.revoke(args.handle)
    if not gone:
        print(f"peercam: no paired viewer is {args.handle!r}", file=sys.stderr)
        return 1
    for viewer in gone:
        print(f"revoked {viewer.fingerprint} {viewer.name}", flush=True)
    return 0
