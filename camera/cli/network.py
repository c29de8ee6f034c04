"""``natcheck``: this network's NAT type, from a STUN server with RFC 5780."""

from __future__ import annotations

import argparse
import json

from camera.errors import BadConfig


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    natcheck = sub.add_parser("natcheck", help="find this network's NAT type (RFC 5780)")
    natcheck.add_argument("--stun", required=True, metavar="HOST[:PORT]",
                          help="a STUN server with RFC 5780 (two addresses)")
    natcheck.add_argument("--json", action="store_true")
    natcheck.set_defaults(handler=natcheck_command, needs_webrtc=False)


async def natcheck_command(args: argparse.Namespace) -> int:
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
