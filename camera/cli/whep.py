"""The commands for other apps: ``whep serve|pair|list`` (the WHEP gateway) and ``snapshot``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camera.cli import exits
from camera.cli.options import add_ice_servers, add_tls_client, host_port, url_host
from camera.cli.signals import serve_until_signalled
from camera.errors import BadConfig


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    whep = sub.add_parser("whep", help="WHEP gateway: any WHEP player (Home Assistant, OBS, "
                          "browsers) watches through it as one paired viewer")
    verbs = whep.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="serve /<camera>/whep and /<camera>/snapshot.jpg")
    serve.add_argument("--listen", type=host_port, default=None, metavar="HOST:PORT",
                       help="address (default: the config's listen, else 127.0.0.1:8889)")
    _config(serve)
    serve.set_defaults(handler=serve_command, needs_webrtc=True)

    pair = verbs.add_parser("pair", help="pair the gateway's own viewer key with a camera "
                            "(a pairing link) and record the camera under a name")
    pair.add_argument("link", help="pairing link (…#device=ID&pair=SECRET)")
    pair.add_argument("--name", help="camera name in URLs (default: the first four "
                      "characters of the device ID)")
    pair.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    pair.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS")
    _config(pair)
    pair.set_defaults(handler=pair_command, needs_webrtc=False)

    show = verbs.add_parser("list", help="the cameras the gateway serves, and its state")
    show.add_argument("--json", action="store_true", help="one JSON object")
    _config(show)
    show.set_defaults(handler=list_command, needs_webrtc=False)

    snap = sub.add_parser("snapshot", help="one still picture from a camera, as JPEG")
    snap.add_argument("target", help="viewer link or device ID")
    snap.add_argument("-o", "--output", type=Path, required=True,
                      help="JPEG file to write ('-' for stdout)")
    snap.add_argument("--rendezvous", help="rendezvous URL (default: from the link)")
    snap.add_argument("--quality", type=int, default=4,
                      help="JPEG quantiser 2 (best) .. 31 (smallest), default 4")
    snap.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS")
    snap.add_argument("--name", help="name to pair under (default: peercam view on HOST)")
    add_ice_servers(snap, None, "ICE server (default: the rendezvous' list)")
    add_tls_client(snap)
    snap.set_defaults(handler=snapshot_command, needs_webrtc=True)


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="gateway config, TOML (default: /etc/peercam/whep.toml if "
                             "present, else built-in defaults)")


async def serve_command(args: argparse.Namespace) -> int:
    from camera.client.viewer import ViewerIdentity
    from camera.client.whep import Gateway
    from camera.client.whep_config import ensure_state_dir, load_config, load_or_create_tokens

    config = load_config(args.config).with_paired()
    ensure_state_dir(config.state_dir)
    tokens, created = load_or_create_tokens(config.tokens_path)
    if created:
        # The token itself is never printed or logged: the operator reads the file.
        print(f"made a bearer token in {config.tokens_path} (mode 0600)", file=sys.stderr)
    identity = ViewerIdentity.load_or_create(ensure_state_dir(config.key_dir),
                                             "peercam WHEP gateway")
    gateway = Gateway(config, tokens, identity)
    host, port = args.listen or config.listen
    try:
        bound = await gateway.start(host, port)
    except BaseException:
        await gateway.close()
        raise
    print(f"LISTENING {url_host(host)}:{bound}", flush=True)
    await serve_until_signalled(f"WHEP gateway on {url_host(host)}:{bound}", gateway.close)
    return exits.OK


async def pair_command(args: argparse.Namespace) -> int:
    from camera.client.signaling import SignalingLink, pair
    from camera.client.viewer import ViewerIdentity, parse_target
    from camera.client.whep_config import (
        CameraEntry,
        check_camera_name,
        ensure_state_dir,
        load_config,
        save_paired,
    )
    from camera.config import client_ssl, ws_url

    config = load_config(args.config)
    base, device_id, secret = parse_target(args.link, args.rendezvous)
    if secret is None:
        raise BadConfig(f"{args.link[:80]!r}: not a pairing link (no pair= in it); "
                        "make one on the camera: peercam pair")
    name = check_camera_name(args.name or device_id[:4].lower())
    identity = ViewerIdentity.load_or_create(ensure_state_dir(config.key_dir),
                                             "peercam WHEP gateway")
    link = SignalingLink(ws_url(base, "/ws/viewer"), ssl=client_ssl(config.tls_ca, False),
                         connect_timeout=args.timeout)
    await link.open()
    try:
        await pair(link, device_id, secret, identity.key, identity.private_key, identity.name,
                   args.timeout)
    finally:
        await link.close()
    save_paired(config.state_dir, CameraEntry(name, device_id, base.rstrip("/"), "paired"))
    print(f"paired: {name} = {device_id} via {base}; "
          f"the gateway serves /{name}/whep and /{name}/snapshot.jpg", flush=True)
    return exits.OK


async def list_command(args: argparse.Namespace) -> int:
    from camera.client.whep_config import load_config

    config = load_config(args.config).with_paired()
    cameras = [c.as_dict() for c in config.cameras]
    if args.json:
        print(json.dumps({"listen": f"{config.listen[0]}:{config.listen[1]}",
                          "state_dir": str(config.state_dir),
                          "tokens_file": str(config.tokens_path),
                          "cameras": cameras}), flush=True)
        return exits.OK
    print(f"listen {config.listen[0]}:{config.listen[1]}, state {config.state_dir}, "
          f"tokens in {config.tokens_path}")
    if not cameras:
        print("no cameras: add [cameras.NAME] to the config or run peercam whep pair LINK")
    for c in cameras:
        print(f"{c['name']:<16} {c['device']}  {c['rendezvous']}  ({c['source']})")
    return exits.OK


async def snapshot_command(args: argparse.Namespace) -> int:
    from camera.client.snapshot import snapshot
    from camera.client.viewer import ViewerIdentity

    if not 2 <= args.quality <= 31:
        raise BadConfig(f"--quality {args.quality}: need 2..31")
    if args.timeout <= 0:
        raise BadConfig(f"--timeout {args.timeout}: need more than 0 seconds")
    picture = await snapshot(
        args.target, rendezvous=args.rendezvous,
        identity=ViewerIdentity.load_or_create(name=args.name),
        ice_servers=args.ice_server, timeout=args.timeout, quality=args.quality,
        tls_ca=args.tls_ca, tls_insecure=args.insecure)
    if str(args.output) == "-":
        sys.stdout.buffer.write(picture.jpeg)
        sys.stdout.buffer.flush()
    else:
        args.output.write_bytes(picture.jpeg)
        print(f"{args.output}: {picture.width}x{picture.height}, {len(picture.jpeg)} bytes",
              file=sys.stderr)
    return exits.OK
