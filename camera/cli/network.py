"""``natcheck``: this network's NAT type, from a STUN server with RFC 5780."""

from __future__ import annotations

import argparse
import json
import sys

from camera.cli import exits
from camera.errors import BadConfig


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    natcheck = sub.add_parser(
        "natcheck", help="find this network's NAT type (RFC 5780)",
        description="One silent STUN server is reported as no answer from it; "
                    "with a second --stun also silent, the network blocks UDP (exit 1).")
    natcheck.add_argument("--stun", required=True, action="append", metavar="HOST[:PORT]",
                          help="a STUN server with RFC 5780 (two addresses); repeat to give "
                               "a second one that tells a silent server from blocked UDP")
    natcheck.add_argument("--json", action="store_true")
    natcheck.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                          help="keep what port prediction needs in the viewer's directory "
                          "($PEERCAM_VIEWER_DIR or ~/.config/peercam/nat.json): `peercam "
                          "view` on this network then offers the ports a sequential NAT "
                          "maps next (--no-save: just report)")
    natcheck.set_defaults(handler=natcheck_command, needs_webrtc=False)


async def natcheck_command(args: argparse.Namespace) -> int:
    from services.stun.natcheck import natcheck_servers, parse_hostport

    try:
        servers = [parse_hostport(text) for text in args.stun]
    except ValueError as exc:
        raise BadConfig(f"--stun: {exc}") from None
    report = await natcheck_servers(servers)
    if args.save and report.nat_type != "udp-blocked":
        import time

        from camera.client import natprofile
        from camera.client.viewer import default_viewer_dir

        try:
            natprofile.save(default_viewer_dir(), report, time.time())
        except OSError as exc:
            print(f"natcheck: not saved for port prediction: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        print(report.summary(), flush=True)
    return exits.OK if report.nat_type != "udp-blocked" else exits.FAILED
