"""``peercam``: the one command. Parsing and wiring only; the work is in the packages.

One module per command group (:mod:`.servers`, :mod:`.device`, :mod:`.client`,
:mod:`.network`, :mod:`.whep`; ``lab`` is passed on to the NAT lab's own command line), the
option groups several commands share in :mod:`.options`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from camera.cli import client, device, exits, network, servers, whep
from camera.cli.options import log_level_default
from camera.errors import PeercamError
from hardware.errors import HardwareError
from services.errors import ServiceError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peercam", description=__doc__.split("\n")[0],
                                     epilog=exits.epilog())
    parser.add_argument("--log-level", default=log_level_default())
    sub = parser.add_subparsers(dest="command", required=True)
    servers.add_commands(sub)
    device.add_commands(sub)
    network.add_commands(sub)
    lab = sub.add_parser("lab", help="the NAT lab (root): up|down|status|exec SITE -- CMD")
    lab.set_defaults(handler=None, needs_webrtc=False)
    client.add_commands(sub)
    whep.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        # The lab has its own command line (python -m services.natlab); pass it all on.
        from services.natlab.__main__ import main as lab_main

        return lab_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is None:
        parser.error("lab: put it first (peercam lab ...), it has its own options")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc/aioice are chatty at INFO about every candidate pair.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    if args.needs_webrtc:
        # Only the WebRTC commands need aiortc: the servers stay ~30 MiB smaller.
        from camera import compat
        from camera.webrtc import host_addresses_from_env, restrict_host_addresses

        compat.install(compat.Settings())  # once per process: checks aiortc/aioice first
        restrict_host_addresses(host_addresses_from_env())
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except (PeercamError, ServiceError, HardwareError) as exc:
        # A deliberate error: one line, no traceback, the status that says which kind.
        print(f"peercam: {_one_line(exc)}", file=sys.stderr)
        return exits.exit_code_for(exc)
    except OSError as exc:
        # The machine said no (permissions, a full disk, an address in use): one line too.
        print(f"peercam: {_one_line(exc)}", file=sys.stderr)
        return exits.FAILED
    except KeyboardInterrupt:
        return exits.INTERRUPTED


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:1000]

