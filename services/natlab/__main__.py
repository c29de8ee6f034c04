"""Command line of the NAT lab, for users reproducing a field problem (needs root).

    python -m services.natlab up [--sites open,symmetric,...] [--conntrack-udp-timeout S]
    python -m services.natlab status [--json]
    python -m services.natlab exec SITE -- CMD [ARG...]
    python -m services.natlab down

``up`` stays in the foreground until Ctrl-C, SIGTERM or ``down`` from another
shell, then removes everything. SITE is a site name, "server", "inet" or
"<site>-nat" (the site's router).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from services.natlab import netns
from services.natlab.errors import NatLabError
from services.natlab.lab import LOCK_PATH, STATE_PATH, Lab, check_prerequisites
from services.natlab.plan import (
    ALL_SITES,
    INET_NS,
    SERVER_IPS,
    SERVER_IPS6,
    SERVER_NS,
    SERVER_SITE,
    parse_site,
)

logger = logging.getLogger(__name__)

DOWN_WAIT_SECONDS = 15.0


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _describe(lab: Lab) -> None:
    _out(f"NAT lab up in {lab.up_seconds:.2f} s")
    _out(f"  {'server':<18} {', '.join(SERVER_IPS + SERVER_IPS6)}  (ns {SERVER_NS})")
    for name in lab.sites:
        site = lab.site(name)
        addresses = site.host_ip
        if site.natted:
            addresses += f" -> {site.public_ip}"
        if site.has_ipv6:
            addresses += f", {site.host_ip6}"
        behaviour = lab.behaviour.get(name)
        probed = ""
        if behaviour is not None:
            probed = f"mapping {behaviour.mapping}, filtering {behaviour.filtering}"
        _out(f"  {name:<18} {addresses:<40} {probed}  (ns {site.namespace})")
    _out("run a program in a site: python -m services.natlab exec SITE -- CMD ...")
    _out("stop: Ctrl-C here, or python -m services.natlab down")


def _up(args: argparse.Namespace) -> int:
    sites = [name.strip() for name in args.sites.split(",")] if args.sites else None
    lab = Lab(sites, args.conntrack_udp_timeout, verify=not args.no_verify)
    with lab:
        _describe(lab)
        # Block the stop signals only now: children started during up() would
        # inherit a blocked mask.
        stop = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            received = signal.sigwait(stop)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
        _out(f"{signal.Signals(received).name}: taking the lab down")
    _out(f"NAT lab down in {lab.down_seconds or 0:.2f} s")
    return 0


def _try_lock() -> int | None:
    """The lab lock if no live lab holds it, else None."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _owner() -> int | None:
    try:
        return int(LOCK_PATH.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _down(_: argparse.Namespace) -> int:
    check_prerequisites()
    fd = _try_lock()
    if fd is None:
        owner = _owner()
        if owner is None:
            raise NatLabError(f"a lab holds {LOCK_PATH} but its pid is unknown")
        _out(f"asking the lab (pid {owner}) to stop")
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_SECONDS
        while (fd := _try_lock()) is None:
            if time.monotonic() > deadline:
                raise NatLabError(f"the lab (pid {owner}) did not stop in {DOWN_WAIT_SECONDS} s")
            time.sleep(0.05)
    try:
        swept = netns.sweep()
        STATE_PATH.unlink(missing_ok=True)
    finally:
        os.close(fd)
    _out(f"removed leftovers: {', '.join(swept)}" if swept else "NAT lab is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    namespaces = netns.lab_namespaces()
    fd = _try_lock()
    running = fd is None
    if fd is not None:
        os.close(fd)
    state = json.loads(STATE_PATH.read_text()) if running and STATE_PATH.exists() else None
    if args.json:
        _out(json.dumps({"running": running, "namespaces": namespaces, "state": state}))
        return 0 if running else 1
    if not running:
        _out("NAT lab is not running" + (f"; leftovers: {namespaces}" if namespaces else ""))
        return 1
    _out(f"NAT lab is up (pid {_owner()})")
    if state is not None:
        _out(f"  {'server':<18} {', '.join(state['server']['ipv4'] + state['server']['ipv6'])}")
        for name, site in state["sites"].items():
            addresses = site["host_ip"]
            if site["router_namespace"]:
                addresses += f" -> {site['public_ip']}"
            if site["host_ip6"]:
                addresses += f", {site['host_ip6']}"
            behaviour = site["behaviour"]
            probed = f"mapping {behaviour[0]}, filtering {behaviour[1]}" if behaviour else ""
            _out(f"  {name:<18} {addresses:<40} {probed}")
    _out(f"  namespaces: {' '.join(namespaces)}")
    return 0


def namespace_of(where: str) -> str:
    """The namespace name for a site, "server", "inet" or "<site>-nat"."""
    if where == SERVER_SITE:
        return SERVER_NS
    if where == "inet":
        return INET_NS
    if where.endswith("-nat"):
        site = parse_site(where[: -len("-nat")])
        if site.router_namespace is not None:
            return site.router_namespace
    return parse_site(where).namespace


def _exec(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise NatLabError("exec needs a command: exec SITE -- CMD [ARG...]")
    namespace = namespace_of(args.site)
    if namespace not in netns.lab_namespaces():
        raise NatLabError(f"{namespace} does not exist: is the lab up with site {args.site!r}?")
    argv = netns.in_namespace(namespace, command)
    os.execvp(argv[0], argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.natlab",
        description="Real-kernel NAT lab in network namespaces (needs root and nftables).",
    )
    commands = parser.add_subparsers(dest="action", required=True)
    up = commands.add_parser("up", help="build the lab and keep it until Ctrl-C or `down`")
    up.add_argument(
        "--sites", help=f"comma-separated, default all: {','.join(ALL_SITES)} (append -2 for a "
        "second site of a kind)"
    )
    up.add_argument(
        "--conntrack-udp-timeout", type=int, metavar="SECONDS",
        help="UDP conntrack (and cone mapping) timeout in the routers; default the kernel's",
    )
    up.add_argument("--no-verify", action="store_true", help="skip the NAT behaviour probes")
    up.set_defaults(handler=_up)
    down = commands.add_parser("down", help="stop a running lab and remove any leftovers")
    down.set_defaults(handler=_down)
    status = commands.add_parser("status", help="show the running lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    execute = commands.add_parser("exec", help="run a command in a site's namespace")
    execute.add_argument("site", help=f"a site, {SERVER_SITE!r}, 'inet' or '<site>-nat'")
    execute.add_argument("command", nargs=argparse.REMAINDER)
    execute.set_defaults(handler=_exec)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; also what ``peercam lab`` calls with its arguments."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.handler(args)
    except (NatLabError, ValueError) as exc:
        sys.stderr.write(f"natlab: {exc}\n")
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())

