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

from camera.errors import BadConfig, PeercamError
from camera.sdnotify import Notifier

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
    demo.add_argument("--tls", action="store_true",
                      help="serve HTTPS with a generated self-signed certificate (phones on a LAN)")
    _add_video_flags(demo)

    rdv = sub.add_parser("rendezvous", help="run the rendezvous server")
    rdv.add_argument("--listen", type=_host_port, default=("0.0.0.0", 8080), metavar="HOST:PORT")
    rdv.add_argument("--ice-server", type=_ice_server, action="append", default=[],
                     metavar="URL", help="STUN server handed to peers (repeatable)")
    rdv.add_argument("--server-name", action="append", default=[], metavar="HOST[:PORT]",
                     help="a name cameras dial this server by (repeatable; default: "
                          "$PEERCAM_SERVER_NAME, comma-separated, else the --listen address)")
    rdv.add_argument("--handshake-timeout", type=float, default=5.0, metavar="S",
                     help="seconds from accept to a WebSocket upgrade (default 5)")
    rdv.add_argument("--max-pending", type=int, default=512, metavar="N",
                     help="connections not yet upgraded, in total (default 512)")
    rdv.add_argument("--max-pending-per-ip", type=int, default=16, metavar="N",
                     help="connections not yet upgraded, per IP address (default 16)")
    rdv.add_argument("--max-connections", type=int, default=0, metavar="N",
                     help="open connections (default 0: the descriptor limit less 64)")
    rdv.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS/WSS")
    rdv.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    rdv.add_argument("--turn-url", action="append", default=[], metavar="URL",
                     help="TURN server URL to mint credentials for (repeatable)")
    rdv.add_argument("--turn-secret-file", type=Path,
                     help="coturn static-auth-secret, in a 0600 file")
    rdv.add_argument("--turn-ttl", type=int, default=600, help="credential lifetime (s)")

    cam = sub.add_parser("camera", help="run the camera agent (or: camera identity)")
    cam.add_argument("action", nargs="?", choices=["run", "identity"], default="run",
                     help="identity: print the device ID and exit")
    cam.add_argument("--config", type=Path, default=_default_config())
    cam.add_argument("--rendezvous", help="rendezvous URL, e.g. ws://host:8080")
    cam.add_argument("--source", choices=["testpattern", "file", "v4l2", "picamera2"])
    cam.add_argument("--file", help="file for the file source")
    cam.add_argument("--device", help="device for the v4l2 source")
    cam.add_argument("--state-dir", type=Path)
    cam.add_argument("--tls-ca", help="CA bundle or certificate to trust for wss://")
    cam.add_argument("--insecure", action="store_true",
                     help="development only: accept any rendezvous certificate")
    _add_video_flags(cam)

    stun = sub.add_parser("stun", help="run the STUN server (RFC 8489; RFC 5780 with two IPs)")
    stun.add_argument("--listen", default="0.0.0.0", metavar="IP[,IP2]",
                      help="one address, or two for RFC 5780 behaviour discovery")
    stun.add_argument("--port", type=int, default=3478)
    stun.add_argument("--alt-port", type=int, default=3479, help="second port (RFC 5780)")

    natcheck = sub.add_parser("natcheck", help="find this network's NAT type (RFC 5780)")
    natcheck.add_argument("--stun", required=True, metavar="HOST[:PORT]",
                          help="a STUN server with RFC 5780 (two addresses)")
    natcheck.add_argument("--json", action="store_true")

    sub.add_parser("lab", help="the NAT lab (root): up|down|status|exec SITE -- CMD")

    status = sub.add_parser("status", help="the running camera's state, network and viewers")
    status.add_argument("--config", type=Path, default=_default_config())
    status.add_argument("--state-dir", type=Path)
    status.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    pair = sub.add_parser("pair", help="open a pairing window; prints a link and a QR code")
    pair.add_argument("--config", type=Path, default=_default_config())
    pair.add_argument("--state-dir", type=Path)
    pair.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    pair.add_argument("--rendezvous", help="rendezvous URL the link points at")
    pair.add_argument("--ttl", type=float, default=600.0, help="window length in seconds")

    viewers = sub.add_parser("viewers", help="list or revoke the camera's paired viewers")
    viewers.add_argument("action", choices=["list", "revoke", "clear"])
    viewers.add_argument("handle", nargs="?", help="revoke: fingerprint or name")
    viewers.add_argument("--config", type=Path, default=_default_config())
    viewers.add_argument("--state-dir", type=Path)
    viewers.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    viewers.add_argument("--json", action="store_true")

    view = sub.add_parser("view", help="watch a camera from the command line")
    view.add_argument("target", help="viewer link or device ID")
    view.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    view.add_argument("--seconds", type=float, help="stop after this long")
    view.add_argument("--record", type=Path, help="save the stream to this MP4 (no transcoding)")
    view.add_argument("--json", action="store_true", help="print one JSON line of stats at the end")
    view.add_argument("--ice-server", type=_ice_server, action="append", default=None,
                      metavar="URL", help="ICE server (default: the rendezvous' list)")
    view.add_argument("--name", help="name to pair under (default: peercam view on HOST)")
    view.add_argument("--tls-ca", help="CA bundle or certificate to trust for wss://")
    view.add_argument("--insecure", action="store_true",
                      help="development only: accept any rendezvous certificate")

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
    ptz.add_argument("--ice-server", type=_ice_server, action="append", default=None,
                     metavar="URL", help="ICE server (default: the rendezvous' list)")
    ptz.add_argument("--name", help="name to pair under (default: peercam view on HOST)")
    ptz.add_argument("--tls-ca", help="CA bundle or certificate to trust for wss://")
    ptz.add_argument("--insecure", action="store_true",
                     help="development only: accept any rendezvous certificate")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        # The lab has its own command line (python -m services.natlab); pass it all on.
        from services.natlab.__main__ import main as lab_main

        return lab_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc/aioice are chatty at INFO about every candidate pair.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    if args.command not in ("rendezvous", "stun", "natcheck"):
        # Only the WebRTC commands need aiortc: the servers stay ~30 MiB smaller.
        from camera.webrtc import host_addresses_from_env, restrict_host_addresses

        restrict_host_addresses(host_addresses_from_env())
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = {
        "demo": _demo,
        "rendezvous": _rendezvous,
        "camera": _camera,
        "view": _view,
        "ptz": _ptz,
        "pair": _pair,
        "status": _status,
        "viewers": _viewers,
        "stun": _stun,
        "natcheck": _natcheck,
    }[args.command]
    try:
        return asyncio.run(handler(args))
    except PeercamError as exc:
        print(f"peercam: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _serve_until_signalled(
    status: str, cleanup: Callable[[], Coroutine[Any, Any, Any]]
) -> None:
    """A server's life under systemd: READY=1, serve until signalled, STOPPING=1, clean up."""
    notifier = Notifier.from_env()
    notifier.ready(status)
    try:
        await _until_signalled()
    finally:
        notifier.stopping()
        await cleanup()


async def _until_signalled(failed: asyncio.Event | None = None) -> None:
    """Until SIGINT/SIGTERM, or until ``failed`` is set."""
    stop = failed or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _turn_credentials(args: argparse.Namespace) -> Any:
    """A credential minter from --turn-url/--turn-secret-file, or None."""
    if not args.turn_url and not args.turn_secret_file:
        return None
    if not (args.turn_url and args.turn_secret_file):
        raise BadConfig("TURN needs both --turn-url and --turn-secret-file")
    import time

    from services.turn import TurnConfig, load_secret, mint

    try:
        turn = TurnConfig(load_secret(args.turn_secret_file), list(args.turn_url), args.turn_ttl)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    return lambda tag: [mint(turn, tag, time.time())]


async def _rendezvous(args: argparse.Namespace) -> int:
    from services.rendezvous import RendezvousConfig, server_names_from_env, start_rendezvous
    from services.tls import server_context

    host, port = args.listen
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise BadConfig("TLS needs both --tls-cert and --tls-key")
        try:
            ssl_context = server_context(args.tls_cert, args.tls_key)
        except ValueError as exc:
            raise BadConfig(str(exc)) from None
    names = tuple(args.server_name) or server_names_from_env(os.environ)
    config = RendezvousConfig(ice_servers=args.ice_server, credentials=_turn_credentials(args),
                              server_names=names, handshake_timeout=args.handshake_timeout,
                              max_pending=args.max_pending,
                              max_pending_per_ip=args.max_pending_per_ip,
                              max_connections=args.max_connections)
    try:
        _server, runner, bound = await start_rendezvous(host, port, config, ssl_context)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    print(f"LISTENING {host}:{bound}", flush=True)
    await _serve_until_signalled(f"listening on {host}:{bound}", runner.cleanup)
    return 0


def _video_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("width", "height", "fps", "bitrate")}


def _camera_config(args: argparse.Namespace, **extra: Any) -> Any:
    from camera.config import load_camera_config

    overrides = {"state_dir": args.state_dir, **extra}
    return load_camera_config(args.config, os.environ, overrides)


async def _camera(args: argparse.Namespace) -> int:
    config = _camera_config(
        args,
        rendezvous=args.rendezvous,
        source=args.source,
        file=args.file,
        device=args.device,
        tls_ca=args.tls_ca,
        tls_insecure=True if args.insecure else None,
        **_video_overrides(args),
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
        await _until_signalled(agent.failed)
    finally:
        await device.close()
    return agent.exit_code


async def _demo(args: argparse.Namespace) -> int:
    import segno

    from camera.config import DEFAULT_STATE_DIR, load_camera_config
    from services.rendezvous import start_rendezvous

    state_dir = args.state_dir or DEFAULT_STATE_DIR / "demo"
    host = args.host if args.host not in ("0.0.0.0", "::", "") else _lan_address()
    ssl_context, tls_ca, scheme = None, None, "http"
    if args.tls:
        from services.tls import self_signed, server_context

        cert, key = self_signed(state_dir, [host, "127.0.0.1", "localhost"])
        ssl_context, tls_ca, scheme = server_context(cert, key), str(cert), "https"
    # Registrations are checked against the names its own camera and link use.
    _server, runner, port = await start_rendezvous(
        args.host, args.port, None, ssl_context,
        names_for_port=lambda bound: [f"127.0.0.1:{bound}", f"{_url_host(host)}:{bound}"])
    device = None
    try:
        config = load_camera_config(
            None,
            None,
            {
                "rendezvous": f"{'wss' if args.tls else 'ws'}://127.0.0.1:{port}",
                "source": "testpattern",
                "state_dir": state_dir,
                "tls_ca": tls_ca,
                **_video_overrides(args),
            },
        )
        from camera.device import Device

        device = Device(config)
        agent = await device.start()
        async with asyncio.timeout(10):
            await agent.registered.wait()
        # The demo's pairing secret stays valid while it runs, for any number of viewers.
        secret = agent.open_pairing(ttl=365 * 86400, reusable=True)
        fragment = f"#device={agent.device_id}&pair={secret}"
        # Browsers give the page WebCrypto only on https:// or localhost: without
        # TLS the link that works is this machine's loopback address.
        link_host = host if args.tls or args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        link = f"{scheme}://{_url_host(link_host)}:{port}/{fragment}"
        with contextlib.suppress(Exception):
            segno.make(link, error="l").terminal(compact=True)
        print(f"DEVICE {agent.device_id}", flush=True)
        print(f"VIEWER {link}", flush=True)
        print("Open the link in a browser: it pairs that browser and plays.", flush=True)
        if args.tls:
            print("The certificate is self-signed: accept the browser's warning once.",
                  flush=True)
        elif link_host == "127.0.0.1" and host != "127.0.0.1":
            print(f"For a phone or another computer on this network, run with --tls "
                  f"(a browser needs https:// off this machine); LAN address {host}.",
                  flush=True)
        print("Ctrl-C stops the demo.", flush=True)
        await _until_signalled()
    finally:
        if device is not None:
            await device.close()
        await runner.cleanup()
    return 0


async def _stun(args: argparse.Namespace) -> int:
    from services.stun.errors import StunError
    from services.stun.server import run_stun_server

    addresses = [a.strip() for a in args.listen.split(",") if a.strip()]
    if not 1 <= len(addresses) <= 2:
        raise BadConfig(f"--listen {args.listen!r}: one address or two, comma-separated")
    try:
        server = await run_stun_server(
            addresses[0], addresses[1] if len(addresses) > 1 else None, args.port, args.alt_port
        )
    except (StunError, OSError) as exc:
        raise BadConfig(f"cannot serve STUN on {args.listen}: {exc}") from None
    for _index, (host, port) in sorted(server.addresses.items()):
        print(f"LISTENING {_url_host(host)}:{port}", flush=True)
    await _serve_until_signalled(f"serving STUN on {args.listen}", server.close)
    return 0


async def _natcheck(args: argparse.Namespace) -> int:
    from services.stun.natcheck import natcheck, parse_hostport

    try:
        server = parse_hostport(args.stun)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    report = await natcheck(server)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        print(report.summary(), flush=True)
    return 0 if report.nat_type != "udp-blocked" else 1


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


async def _status(args: argparse.Namespace) -> int:
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


async def _pair(args: argparse.Namespace) -> int:
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


async def _viewers(args: argparse.Namespace) -> int:
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


async def _ptz(args: argparse.Namespace) -> int:
    import aiohttp

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
    except (ViewError, BadControlMessage, OSError, TimeoutError, ValueError,
            aiohttp.ClientError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}), flush=True)
        print(f"peercam ptz: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict()), flush=True)
    else:
        counts: dict[str, int] = {}
        for op in result.acks:
            counts[op] = counts.get(op, 0) + 1
        print("acknowledged: " + ", ".join(
            f"{op}" + (f" x{n}" if n > 1 else "") for op, n in counts.items()), flush=True)
    return 0


async def _view(args: argparse.Namespace) -> int:
    import aiohttp

    from camera.client.viewer import ViewError, view

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from camera.client.viewer import ViewerIdentity

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
        )
    except (ViewError, OSError, TimeoutError, ValueError, aiohttp.ClientError) as exc:
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
