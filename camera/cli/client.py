"""The viewer-side commands: ``view`` and ``ptz``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from camera.cli import exits
from camera.cli.options import add_ice_servers, add_tls_client
from camera.errors import BadConfig


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    view = sub.add_parser("view", help="watch a camera from the command line (heals until "
                          "Ctrl-C: a camera or rendezvous that comes back is watched again)")
    view.add_argument("target", help="viewer link or device ID")
    view.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    view.add_argument("--seconds", type=float,
                      help="stop this long after the first frame (healing happens inside it)")
    view.add_argument("--record", type=Path,
                      help="save the stream to this MP4 (no transcoding; goes on across heals)")
    view.add_argument("--stall", type=float, default=1.5, metavar="SECONDS",
                      help="a session with no frame for this long is replaced (default 1.5)")
    view.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="a camera that is offline or restarting: keep trying this long "
                      "for the first frame, at once when the rendezvous says it is back "
                      "(default 0: fail at once)")
    view.add_argument("--quality", choices=["auto", "high", "low"],
                      help="ask the camera for a layer: auto (it follows the link), high or "
                      "low (default: the camera's, auto)")
    view.add_argument("--playout", action=argparse.BooleanOptionalAction, default=True,
                      help="bounded waits for lost packets, skipping to the next keyframe "
                      "(--no-playout: wait for every retransmission, as before)")
    view.add_argument("--nack", action=argparse.BooleanOptionalAction, default=True,
                      help="NACK a gap at once and again at RTT intervals "
                      "(--no-nack: aiortc's NACKs, as before)")
    view.add_argument("--port-prediction", action=argparse.BooleanOptionalAction, default=True,
                      help="behind a NAT that `peercam natcheck` found allocating ports "
                      "sequentially (saved for this network), offer the ports it will map "
                      "next, so a camera behind a port-restricted NAT reaches us directly")
    view.add_argument("--direct-upgrade", action=argparse.BooleanOptionalAction, default=True,
                      help="a session that starts on a TURN relay keeps checking for a "
                      "direct path and moves to it (--no-direct-upgrade: stay on the "
                      "relay, as plain ICE does)")
    view.add_argument("--ice-tcp", action=argparse.BooleanOptionalAction, default=True,
                      help="offer ICE candidates over TCP too (listening and connecting), "
                      "for networks that let no UDP out (--no-ice-tcp: UDP only)")
    view.add_argument("--json", action="store_true", help="print one JSON line of stats at the end")
    add_ice_servers(view, None, "ICE server (default: the rendezvous' list)")
    view.add_argument("--name", help="name to pair under (default: peercam view on HOST)")
    add_tls_client(view)
    view.set_defaults(handler=view_command, needs_webrtc=True)

    ptz = sub.add_parser("ptz", help="pan/tilt/zoom a camera's head (over the data channel)")
    ptz.add_argument("target", help="viewer link or device ID")
    ptz.add_argument("action", choices=["left", "right", "up", "down", "zoom-in", "zoom-out",
                                        "stop", "goto", "set", "clear"])
    ptz.add_argument("preset", nargs="?", type=int, help="goto/set/clear: preset number")
    ptz.add_argument("--for", dest="hold", type=float, default=0.5, metavar="SECONDS",
                     help="moves: keep moving this long, then stop (default 0.5)")
    ptz.add_argument("--speed", type=int, default=32, help="pan/tilt speed 1..63 (default 32)")
    ptz.add_argument("--json", action="store_true", help="print one JSON line at the end")
    ptz.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    add_ice_servers(ptz, None, "ICE server (default: the rendezvous' list)")
    ptz.add_argument("--name", help="name to pair under (default: peercam view on HOST)")
    add_tls_client(ptz)
    ptz.set_defaults(handler=ptz_command, needs_webrtc=True)


async def ptz_command(args: argparse.Namespace) -> int:
    from camera.client.ptz import PtzResult, command_for, control
    from camera.client.viewer import ViewerIdentity, ViewError
    from camera.ptz_protocol import MAX_SPEED, MIN_SPEED, BadControlMessage

    if not MIN_SPEED <= args.speed <= MAX_SPEED:
        raise BadConfig(f"--speed {args.speed}: need {MIN_SPEED}..{MAX_SPEED}")
    if args.hold < 0:
        raise BadConfig(f"--for {args.hold}: need 0 or more seconds")
    try:
        command = command_for(args.action, args.preset, args.speed)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    try:
        result: PtzResult = await control(
            args.target,
            command,
            hold=args.hold,
            rendezvous=args.rendezvous,
            ice_servers=args.ice_server,
            identity=ViewerIdentity.load_or_create(name=args.name),
            tls_ca=args.tls_ca,
            tls_insecure=args.insecure,
        )
    except (ViewError, BadControlMessage) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}), flush=True)
        raise
    if args.json:
        print(json.dumps(result.as_dict()), flush=True)
    else:
        counts: dict[str, int] = {}
        for op in result.acks:
            counts[op] = counts.get(op, 0) + 1
        print("acknowledged: " + ", ".join(
            f"{op}" + (f" x{n}" if n > 1 else "") for op, n in counts.items()), flush=True)
    return exits.OK


async def view_command(args: argparse.Namespace) -> int:
    """Exit status: 0 video until --seconds or Ctrl-C (healing as needed); 1 no video at
    all, or a recording that failed; 3 the camera refused to go on (revoked)."""
    from camera.client.viewer import ReceiveSettings, ViewerIdentity, ViewError, view

    if args.stall <= 0:
        raise BadConfig(f"--stall {args.stall}: need more than 0 seconds")
    if args.wait < 0:
        raise BadConfig(f"--wait {args.wait}: need 0 or more seconds")
    from camera import compat

    compat.set_direct_upgrade(args.direct_upgrade)
    compat.set_ice_tcp(args.ice_tcp)
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
            identity=ViewerIdentity.load_or_create(name=args.name),
            tls_ca=args.tls_ca,
            tls_insecure=args.insecure,
            stall=args.stall,
            wait=args.wait,
            quality=args.quality,
            receive=ReceiveSettings(playout=args.playout, nack=args.nack),
            port_prediction=args.port_prediction,
        )
    except ViewError as exc:
        if args.json:
            measured = exc.stats.as_dict() if exc.stats is not None else {"frames": 0}
            print(json.dumps({**measured, "error": str(exc)}), flush=True)
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    result = stats.as_dict()
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{result['frames']} frames, {result['fps']} fps, first frame after "
            f"{result['ttff_ms']} ms, path {result['local_candidate']} -> "
            f"{result['remote_candidate']}"
            + (f", layer {result['layer']} ({result['layer_switches']} switches)"
               if result["layer"] else "")
            + (f", {result['sessions']} sessions (last healed after: {result['last_cause']})"
               if result["sessions"] > 1 else ""),
            flush=True,
        )
    return exits.OK if stats.frames > 0 else exits.FAILED
