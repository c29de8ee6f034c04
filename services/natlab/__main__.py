"""Command line of the NAT lab, for users reproducing a field problem (needs root).

    python -m services.natlab up [--sites open,symmetric,...] [--conntrack-udp-timeout S]
    python -m services.natlab status [--json]
    python -m services.natlab exec SITE -- CMD [ARG...]
    python -m services.natlab down
    python -m services.natlab link SITE down|up [--where host|carrier|wan] [--for SECONDS]
    python -m services.natlab flush SITE [--remap [--hold SECONDS]]
    python -m services.natlab conntrack SITE
    python -m services.natlab impair SITE [--loss 5%] [--delay 100ms] [--jitter 30ms]
        [--rate 600kbit] [--reorder 1%] [--queue BYTES] [--direction up|down|both]
    python -m services.natlab impair SITE --clear
    python -m services.natlab roam SITE [--gap SECONDS]

``up`` stays in the foreground until Ctrl-C, SIGTERM or ``down`` from another
shell, then removes everything. SITE is a site name, "server", "inet", "roam"
(the roaming host), "<site>-nat" (the site's router) or "<site>-wire". The fault
and impairment commands act on the running lab and return at once (``link
--for`` waits); ``impair SITE`` without settings shows the site's impairment.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from services.natlab import faults, netns
from services.natlab.errors import NatLabError
from services.natlab.lab import LOCK_PATH, STATE_PATH, Lab, check_prerequisites
from services.natlab.plan import (
    ALL_SITES,
    INET_NS,
    ROAM_NS,
    ROAM_SITE,
    SERVER_IPS,
    SERVER_IPS6,
    SERVER_NS,
    SERVER_SITE,
    Site,
    parse_site,
)
from services.natlab.shaping import (
    Impairment,
    parse_duration,
    parse_fraction,
    parse_rate,
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
        shutil.rmtree(faults.RUN_DIR, ignore_errors=True)
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
    if where == ROAM_SITE:
        return ROAM_NS
    if where.endswith("-wire"):
        return parse_site(where[: -len("-wire")]).wire_namespace
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


def _running_site(name: str) -> Site:
    """A site of the running lab; NatLabError if the lab or the site is not up."""
    site = parse_site(name)
    if site.namespace not in netns.lab_namespaces():
        raise NatLabError(f"{site.namespace} does not exist: is the lab up with site {name!r}?")
    return site


def _running_sites() -> list[Site]:
    names = netns.lab_namespaces()
    found = []
    for name in names:
        try:
            site = parse_site(name[len("pcl-") :])
        except ValueError:
            continue
        if site.namespace == name:
            found.append(site)
    return found


def _link(args: argparse.Namespace) -> int:
    site = _running_site(args.site)
    if args.seconds is not None:
        if args.state != "down":
            raise NatLabError("--for goes with `down`: the link comes back after SECONDS")
        fault = faults.LinkFault(site, args.where, args.seconds)
        _out(f"{site.name}: {args.where} link down for {args.seconds:g} s")
        fault.wait(args.seconds + DOWN_WAIT_SECONDS)
        _out(f"{site.name}: {args.where} link up")
        return 0
    faults.set_link(site, args.where, up=args.state == "up")
    _out(f"{site.name}: {args.where} link {args.state}")
    return 0


def _flush(args: argparse.Namespace) -> int:
    site = _running_site(args.site)
    if args.remap:
        moved = faults.remap(site, args.hold)
        for flow in moved:
            _out(
                f"{site.name}: {flow.host[0]}:{flow.host[1]} -> {flow.remote[0]}:{flow.remote[1]} "
                f"loses {flow.old[0]}:{flow.old[1]}"
            )
        _out(f"{site.name}: conntrack flushed; {len(moved)} UDP flows get new ports")
        return 0
    _out(f"{site.name}: conntrack flushed ({faults.flush_conntrack(site)} entries)")
    return 0


def _conntrack(args: argparse.Namespace) -> int:
    site = _running_site(args.site)
    for entry in faults.conntrack_entries(site):
        proto = {6: "tcp", 17: "udp"}.get(entry.original.protocol, str(entry.original.protocol))
        src, dst = entry.original.source, entry.original.destination
        mapped = entry.mapped
        _out(f"{proto} {src[0]}:{src[1]} -> {dst[0]}:{dst[1]} as {mapped[0]}:{mapped[1]}")
    return 0


def _impair(args: argparse.Namespace) -> int:
    site = _running_site(args.site)
    if args.clear:
        if faults.wire_running(site):
            faults.stop_wire(site)
        _out(f"{site.name}: not impaired")
        return 0
    given = {
        "loss": args.loss, "delay": args.delay, "jitter": args.jitter,
        "rate_kbit": args.rate, "reorder": args.reorder, "queue_bytes": args.queue,
    }
    settings = {key: value for key, value in given.items() if value is not None}
    if not settings:
        if not faults.wire_running(site):
            _out(f"{site.name}: not impaired")
            return 0
        stats = faults.wire_stats(site)
        for name, direction in (("up", stats.up), ("down", stats.down)):
            c = direction.counters
            _out(
                f"{site.name} {name:<4} {direction.settings.describe()}: {c.offered} frames, "
                f"{c.lost} lost, {c.overflowed} over the queue, {c.reordered} reordered"
            )
        return 0
    impairment = Impairment(**settings)
    if faults.wire_running(site):
        current = faults.wire_stats(site)
        up, down = current.up.settings, current.down.settings
    else:
        up = down = Impairment()
        _start_detached_wire(site, args.seed)
    if args.direction in ("up", "both"):
        up = impairment
    if args.direction in ("down", "both"):
        down = impairment
    faults.set_impairment(site, up, down)
    _out(f"{site.name}: up {up.describe()}; down {down.describe()}")
    return 0


def _start_detached_wire(site: Site, seed: int | None) -> None:
    """Start the site's forwarder so that it outlives this command (`down` ends it)."""
    faults.RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    log = (faults.RUN_DIR / f"{site.name}.wire.log").open("ab")
    source_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": source_root + (os.pathsep + path if path else "")}
    try:
        process = subprocess.Popen(
            netns.in_namespace(site.wire_namespace, faults.wire_argv(site, sys.executable, seed)),
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True,
        )
    finally:
        log.close()
    faults.start_wire(site, process)
    assert process.stdout is not None
    process.stdout.close()


def _roam(args: argparse.Namespace) -> int:
    site = _running_site(args.site)
    left = faults.roam(site, _running_sites(), args.gap)
    _out(
        f"roam: {left.name if left else 'new'} -> {site.name}: {site.roamer_ip}, seen outside as "
        f"{site.public_ip} (run programs there: exec roam -- CMD)"
    )
    return 0


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

    link = commands.add_parser("link", help="take a site's link down or bring it back")
    link.add_argument("site")
    link.add_argument("state", choices=("down", "up"))
    link.add_argument(
        "--where", choices=faults.LINK_PLACES, default="host",
        help="host: the host's Wi-Fi drops (carrier, address, routes); carrier: carrier only; "
        "wan: the NAT's internet line goes away (default host)",
    )
    link.add_argument("--for", dest="seconds", type=float, metavar="SECONDS",
                      help="down for SECONDS, then up again (waits)")
    link.set_defaults(handler=_link)

    flush = commands.add_parser("flush", help="flush a site's NAT conntrack table")
    flush.add_argument("site")
    flush.add_argument("--remap", action="store_true",
                       help="and make each UDP flow's next packet get a new external port")
    flush.add_argument("--hold", type=int, default=faults.DEFAULT_REMAP_HOLD, metavar="SECONDS",
                       help="how long the old ports stay taken (default %(default)s)")
    flush.set_defaults(handler=_flush)

    track = commands.add_parser("conntrack", help="list a site's NAT flows and external ports")
    track.add_argument("site")
    track.set_defaults(handler=_conntrack)

    impair = commands.add_parser(
        "impair", help="loss, delay, jitter, reordering and a rate cap on a site's link"
    )
    impair.add_argument("site")
    impair.add_argument("--loss", type=parse_fraction, help="e.g. 5%% or 0.05")
    impair.add_argument("--delay", type=parse_duration, help="one-way, e.g. 100ms")
    impair.add_argument("--jitter", type=parse_duration, help="uniform +-, e.g. 30ms")
    impair.add_argument("--rate", type=parse_rate, help="cap, e.g. 600kbit or 2mbit")
    impair.add_argument("--reorder", type=parse_fraction, help="fraction that skips the delay")
    impair.add_argument("--queue", type=int, metavar="BYTES",
                        help="the cap's queue (default 100 ms at the rate)")
    impair.add_argument("--direction", choices=("up", "down", "both"), default="both")
    impair.add_argument("--seed", type=int, help="random seed of a newly started forwarder")
    impair.add_argument("--clear", action="store_true", help="remove the impairment")
    impair.set_defaults(handler=_impair)

    roam = commands.add_parser("roam", help="plug the roaming host into a NAT site's LAN")
    roam.add_argument("site")
    roam.add_argument("--gap", type=float, default=0.0, metavar="SECONDS",
                      help="offline time between the old site and the new one")
    roam.set_defaults(handler=_roam)
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

