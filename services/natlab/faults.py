"""Faults and impairments of a running lab, by site: the adapters around ip(8),
ctnetlink, rtnetlink and the wire forwarder that ``Lab`` and the command line share.

They work on the plan's names (``Site``) rather than on a ``Lab``, so that
``python -m services.natlab link|flush|impair|roam`` can act on a lab that
another process keeps up.

Link faults (``set_link``), each a real change the kernel reports on netlink:

* ``host``: the site's access link drops, as a camera's Wi-Fi does: the host's
  eth0 loses carrier and, as a DHCP client does on carrier loss, its addresses
  and default routes go; on the way back they return (RTM_NEWLINK, RTM_DELADDR,
  RTM_DELROUTE, then RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE in the host's namespace).
* ``carrier``: only the carrier drops (a cable pulled on a statically configured
  host): addresses and routes stay, packets go nowhere.
* ``wan``: the ISP goes away: the router's wan0 (the open site's uplink) loses
  carrier; the host's own link stays up and sees nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.natlab import netlink, netns
from services.natlab.errors import CommandFailed, NatLabError
from services.natlab.netlink import ConntrackEntry, NetlinkEvent, Tuple
from services.natlab.plan import (
    INET_NS,
    LAN_PREFIXLEN,
    LAN_PREFIXLEN6,
    PUBLIC_PREFIXLEN,
    ROAM_NS,
    ROAM_ROUTER_PORT,
    WIRE_HOST_SIDE,
    WIRE_UPLINK_SIDE,
    Kind,
    Site,
)
from services.natlab.shaping import BadImpairment, Impairment, LinkCounters

logger = logging.getLogger(__name__)

RUN_DIR = Path("/run/peercam-natlab")
"""The running lab's sockets and logs (the wire forwarders' control sockets)."""

LINK_PLACES = ("host", "carrier", "wan")
NETLINK_TIMEOUT = 5.0
WIRE_START_TIMEOUT = 10.0
WIRE_REQUEST_TIMEOUT = 5.0
DEFAULT_REMAP_HOLD = 30
"""Seconds a remap keeps a flow's old external port taken (the kernel's UDP timeout)."""


class BadFault(NatLabError, ValueError):
    """A fault that this site cannot have, or a place that is not one."""


class FaultTimeout(NatLabError, TimeoutError):
    """Something the lab waited for did not happen in time."""


# -- addressing (also used to build the lab) ------------------------------------------


def host_addressing(site: Site) -> list[str]:
    """ip(8) commands that give the site's host its addresses and default routes."""
    if not site.natted:
        return [f"addr add {site.host_ip}/{PUBLIC_PREFIXLEN} dev eth0"]
    commands = [f"addr add {site.host_ip}/{LAN_PREFIXLEN} dev eth0"]
    if site.has_ipv6:
        commands.append(f"addr add {site.host_ip6}/{LAN_PREFIXLEN6} dev eth0 nodad")
    commands.append(f"route add default via {site.router_lan_ip}")
    if site.has_ipv6:
        commands.append(f"route add default via {site.router_lan_ip6}")
    return commands


def host_deconfiguring(site: Site) -> list[str]:
    """The reverse of ``host_addressing``: routes first, then addresses."""
    undo = [command.replace(" add ", " del ", 1) for command in host_addressing(site)]
    routes = [command for command in undo if command.startswith("route")]
    return routes + [command for command in undo if not command.startswith("route")]


def router_lan_mac(site: Site) -> str:
    """A fixed, locally administered MAC for a router's LAN bridge."""
    return f"02:70:63:6c:{site.number:02x}:01"


# -- link faults ----------------------------------------------------------------------


def set_link(site: Site, where: str, up: bool) -> None:
    """Take the site's link at ``where`` (see the module doc) down or bring it back."""
    state = "up" if up else "down"
    if where == "wan":
        uplink = INET_NS if site.carrier is None else site.carrier.namespace
        netns.ip_batch([f"link set {site.inet_port} {state}"], uplink)
    elif where == "carrier":
        netns.ip_batch([f"link set {WIRE_HOST_SIDE} {state}"], site.wire_namespace)
    elif where == "host":
        if up:
            netns.ip_batch([f"link set {WIRE_HOST_SIDE} up"], site.wire_namespace)
            netns.ip_batch(host_addressing(site), site.namespace)
        else:
            netns.ip_batch([f"link set {WIRE_HOST_SIDE} down"], site.wire_namespace)
            netns.ip_batch(host_deconfiguring(site), site.namespace)
    else:
        raise BadFault(f"no link place {where!r}: use one of {', '.join(LINK_PLACES)}")


# -- netlink sockets ------------------------------------------------------------------


def _netlink_socket(namespace: str, protocol: int, groups: int = 0) -> socket.socket:
    sock = netns.socket_in_namespace(
        namespace, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, request: bytes, seq: int) -> list[netlink.Message]:
    """Send a request; the answers up to its ack (or the end of a dump)."""
    sock.settimeout(NETLINK_TIMEOUT)
    sock.send(request)
    answers: list[netlink.Message] = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            raise FaultTimeout(f"no netlink answer in {NETLINK_TIMEOUT} s") from None
        for message in netlink.decode(data):
            if message.seq != seq:
                continue
            if message.type == netlink.NLMSG_DONE:
                return answers
            code = netlink.error_code(message)
            if code is not None:
                if code:
                    raise netlink.NetlinkError(code, os.strerror(code))
                return answers
            answers.append(message)


# -- conntrack ------------------------------------------------------------------------


def _router(site: Site) -> str:
    if site.router_namespace is None:
        raise BadFault(f"site {site.name!r} has no NAT, so no conntrack table")
    return site.router_namespace


def conntrack_entries(site: Site) -> list[ConntrackEntry]:
    """The IPv4 TCP and UDP entries of the site's NAT."""
    with contextlib.closing(_netlink_socket(_router(site), netlink.NETLINK_NETFILTER)) as sock:
        answers = _exchange(sock, netlink.conntrack_dump_request(1), 1)
    return [entry for message in answers if (entry := netlink.conntrack_entry(message))]


def flush_conntrack(site: Site) -> int:
    """Forget every flow of the site's NAT, as a reboot of it would; return how many.

    The cone NATs' remembered mappings (their nft ``inbound`` set) go too.
    """
    count = len(conntrack_entries(site))
    with contextlib.closing(_netlink_socket(_router(site), netlink.NETLINK_NETFILTER)) as sock:
        _exchange(sock, netlink.conntrack_flush_request(1), 1)
    if site.kind in (Kind.FULL_CONE, Kind.RESTRICTED):
        flush_set = ["nft", "flush", "set", "inet", "natlab", "inbound"]
        netns.run(netns.in_namespace(_router(site), flush_set))
    return count


@dataclass(frozen=True)
class Remapped:
    """A UDP flow whose NAT mapping a remap took away."""

    host: tuple[str, int]
    remote: tuple[str, int]
    old: tuple[str, int]
    """The external address the flow had; its next packet gets another port."""


def remap(site: Site, hold: int = DEFAULT_REMAP_HOLD) -> list[Remapped]:
    """Flush the NAT and make every UDP flow of its LAN come back on a new external port.

    A flush alone gives a port-keeping NAT's flow its old port again. So for
    ``hold`` seconds an entry that looks like an unanswered inbound flow keeps
    each old (external address, remote) pair taken, and the NAT has to pick
    another port for the flow's next packet; packets the remote still sends to
    the old port are dropped, as a NAT that lost its state drops them. Towards
    other remotes the old port is free again (a port-keeping NAT looks
    address-dependent for those ``hold`` seconds).
    """
    if not 1 <= hold <= 3600:
        raise BadFault(f"hold must be between 1 and 3600 s, not {hold}")
    lan = ipaddress.ip_network(site.lan_cidr)
    flows = [
        entry
        for entry in conntrack_entries(site)
        if entry.original.protocol == socket.IPPROTO_UDP
        and ipaddress.ip_address(entry.original.source[0]) in lan
    ]
    flush_conntrack(site)
    with contextlib.closing(_netlink_socket(_router(site), netlink.NETLINK_NETFILTER)) as sock:
        for seq, entry in enumerate(flows, start=1):
            taken = ConntrackEntry(
                original=entry.reply,
                reply=Tuple(entry.reply.protocol, entry.reply.destination, entry.reply.source),
            )
            try:
                _exchange(sock, netlink.conntrack_create_request(seq, taken, hold), seq)
            except netlink.NetlinkError as exc:
                if exc.errno != errno.EEXIST:  # a packet of the flow came first
                    raise
    return [
        Remapped(host=entry.original.source, remote=entry.original.destination, old=entry.mapped)
        for entry in flows
    ]


# -- netlink events -------------------------------------------------------------------


class NetlinkWatcher:
    """Link, address and route events of one namespace, as a program there sees them."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._sock = _netlink_socket(namespace, netlink.NETLINK_ROUTE, netlink.EVENT_GROUPS)
        self._sock.setblocking(False)
        self.events: list[NetlinkEvent] = []
        """Every event read so far, oldest first."""

    def __enter__(self) -> NetlinkWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def poll(self, timeout: float = 0.0) -> list[NetlinkEvent]:
        """Events that arrive within ``timeout`` (at least those already queued)."""
        new: list[NetlinkEvent] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    data = self._sock.recv(1 << 20)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not selector.select(left):
                        break
                    continue
                new += [
                    event
                    for message in netlink.decode(data)
                    if (event := netlink.rtnetlink_event(message)) is not None
                ]
        self.events += new
        return new

    def wait_for(
        self, predicate: Callable[[NetlinkEvent], bool], timeout: float = NETLINK_TIMEOUT
    ) -> NetlinkEvent:
        """The first event (already seen or new) that ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if predicate(event):
                return event
        while (left := deadline - time.monotonic()) > 0:
            for event in self.poll(min(left, 0.1)):
                if predicate(event):
                    return event
        raise FaultTimeout(
            f"no such netlink event in {self.namespace} within {timeout} s; saw {self.events}"
        )


# -- the wire forwarder ---------------------------------------------------------------


def wire_control_path(site: Site) -> Path:
    return RUN_DIR / f"{site.name}.wire"


@dataclass(frozen=True)
class DirectionStats:
    """One direction of an impaired site, as its forwarder reports it."""

    settings: Impairment
    counters: LinkCounters
    delivered: int
    send_errors: int


@dataclass(frozen=True)
class WireStats:
    up: DirectionStats
    down: DirectionStats
    pending: int
    """Frames held back (delayed or queued) right now."""


def wire_request(site: Site, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the site's forwarder; BadImpairment if it refused it."""
    path = wire_control_path(site)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WIRE_REQUEST_TIMEOUT)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65_536)
                if not chunk:
                    break
                reply += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            raise CommandFailed(f"site {site.name!r} is not impaired (no forwarder)") from None
        except TimeoutError:
            raise FaultTimeout(f"the forwarder of {site.name!r} did not answer") from None
    answer = json.loads(reply or b"{}")
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise BadImpairment(f"the forwarder of {site.name!r} refused {request}: {error}")
    return answer


def wire_running(site: Site) -> bool:
    try:
        wire_request(site, {"op": "stats"})
    except (CommandFailed, FaultTimeout):
        return False
    return True


def wire_stats(site: Site) -> WireStats:
    answer = wire_request(site, {"op": "stats"})

    def direction(name: str) -> DirectionStats:
        data = answer[name]
        return DirectionStats(
            settings=Impairment.from_json(data["settings"]),
            counters=LinkCounters.from_json(data),
            delivered=int(data["delivered"]),
            send_errors=int(data["send_errors"]),
        )

    return WireStats(up=direction("up"), down=direction("down"), pending=int(answer["pending"]))


Spawn = Callable[[list[str]], "subprocess.Popen[str]"]
"""Starts argv in a namespace with stdout piped; the caller owns the process."""


def wire_argv(site: Site, python: str, seed: int | None = None) -> list[str]:
    argv = [python, "-m", "services.natlab.wire", "--host-side", WIRE_HOST_SIDE]
    argv += ["--uplink-side", WIRE_UPLINK_SIDE, "--control", str(wire_control_path(site))]
    return argv + ([] if seed is None else ["--seed", str(seed)])


def start_wire(site: Site, process: subprocess.Popen[str]) -> None:
    """Wait for a just-started forwarder's "ready", then take the bridge out of the way.

    Between the two, a frame can pass both ways (bridged and forwarded): a
    duplicate in the few milliseconds it takes.
    """
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(WIRE_START_TIMEOUT):
            process.kill()
            raise FaultTimeout(f"the forwarder of {site.name!r} did not start")
    line = process.stdout.readline().strip()
    if line != "ready":
        process.kill()
        raise CommandFailed(f"the forwarder of {site.name!r} did not start: {line!r}")
    netns.ip_batch(
        [f"link set {WIRE_HOST_SIDE} nomaster", f"link set {WIRE_UPLINK_SIDE} nomaster"],
        site.wire_namespace,
    )


def stop_wire(site: Site) -> None:
    """Send what is delayed at once, stop the forwarder and put the bridge back.

    Frames that arrive between the two are lost (a few milliseconds).
    """
    with contextlib.suppress(CommandFailed):
        wire_request(site, {"op": "stop"})
    netns.ip_batch(
        [f"link set {WIRE_HOST_SIDE} master br0", f"link set {WIRE_UPLINK_SIDE} master br0"],
        site.wire_namespace,
    )


def set_impairment(site: Site, up: Impairment, down: Impairment) -> None:
    wire_request(site, {"op": "set", "up": up.to_json(), "down": down.to_json()})


# -- the roaming host -----------------------------------------------------------------


def roamer_site(sites: Iterable[Site]) -> Site | None:
    """The site whose LAN the roaming host is plugged into, None if none (or no host)."""
    if not (netns.NETNS_DIR / ROAM_NS).exists():
        return None
    shown = netns.run(["ip", "-n", ROAM_NS, "-o", "-4", "addr", "show", "dev", "eth0"])
    for site in sites:
        if site.natted and f" {site.roamer_ip}/" in shown:
            return site
    return None


def roam(to: Site, sites: Iterable[Site], gap: float = 0.0) -> Site | None:
    """Plug the roaming host into ``to``'s LAN, unplugging it from where it was.

    The host keeps its eth0: it loses carrier and its address and route, and
    ``gap`` seconds later gets the new site's carrier, address and default route,
    as a camera carried to another Wi-Fi does. Makes the host on first use.
    Returns the site it left.
    """
    router = to.router_namespace
    if router is None:
        raise BadFault(f"site {to.name!r} has no LAN to roam into (it has no NAT)")
    if not 0 <= gap <= 600:
        raise BadFault(f"gap must be between 0 and 600 s, not {gap}")
    sites = list(sites)
    left = roamer_site(sites)
    if left == to:
        return left
    if not (netns.NETNS_DIR / ROAM_NS).exists():
        netns.ip_batch([f"netns add {ROAM_NS}"])
        netns.ip_batch(
            [
                "link set lo up",
                f"link add eth0 type veth peer name {ROAM_ROUTER_PORT} netns {router}",
                "link set eth0 addrgenmode none",
                "link set eth0 up",
            ],
            ROAM_NS,
        )
    elif left is not None and left.router_namespace is not None:
        netns.ip_batch(
            [
                f"route del default via {left.router_lan_ip}",
                f"addr del {left.roamer_ip}/{LAN_PREFIXLEN} dev eth0",
            ],
            ROAM_NS,
        )
        netns.ip_batch(
            [f"link set {ROAM_ROUTER_PORT} down", f"link set {ROAM_ROUTER_PORT} netns {router}"],
            left.router_namespace,
        )
        if gap:
            time.sleep(gap)
    netns.ip_batch(
        [
            f"link set {ROAM_ROUTER_PORT} addrgenmode none",
            f"link set {ROAM_ROUTER_PORT} master lan0",
            f"link set {ROAM_ROUTER_PORT} up",
        ],
        router,
    )
    netns.ip_batch(
        [
            f"addr add {to.roamer_ip}/{LAN_PREFIXLEN} dev eth0",
            f"route add default via {to.router_lan_ip}",
        ],
        ROAM_NS,
    )
    return left


@contextlib.contextmanager
def watching(namespace: str) -> Iterator[NetlinkWatcher]:
    watcher = NetlinkWatcher(namespace)
    try:
        yield watcher
    finally:
        watcher.close()


class LinkFault:
    """A link taken down by ``Lab.link_down``; up again on ``restore``, after
    ``seconds`` if given, and at the latest when its ``with`` block ends."""

    def __init__(self, site: Site, where: str, seconds: float | None) -> None:
        if where not in LINK_PLACES:
            raise BadFault(f"no link place {where!r}: use one of {', '.join(LINK_PLACES)}")
        if seconds is not None and not 0 < seconds <= 3600:
            raise BadFault(f"seconds must be between 0 and 3600, not {seconds}")
        self.site = site
        self.where = where
        self.seconds = seconds
        self._lock = threading.Lock()
        self._restored = threading.Event()
        self._cancelled = False
        set_link(site, where, up=False)
        self.down_at = time.monotonic()
        """When the link went down (time.monotonic)."""
        self.up_at: float | None = None
        """When it came back, None while it is down."""
        self._timer: threading.Timer | None = None
        if seconds is not None:
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def __enter__(self) -> LinkFault:
        return self

    def __exit__(self, *_: object) -> None:
        self.restore()

    def _expire(self) -> None:
        try:
            self.restore()
        except NatLabError:
            logger.exception("could not bring %s's %s link back", self.site.name, self.where)

    def restore(self) -> None:
        """Bring the link back now (no-op if it is back already)."""
        if self._timer is not None and threading.current_thread() is not self._timer:
            self._timer.cancel()
        with self._lock:
            if self.up_at is not None or self._cancelled:
                return
            set_link(self.site, self.where, up=True)
            self.up_at = time.monotonic()
            self._restored.set()

    def wait(self, timeout: float) -> float:
        """Block until the link is back (the ``seconds`` ran out); return ``up_at``."""
        if not self._restored.wait(timeout):
            raise FaultTimeout(f"{self.site.name}'s {self.where} link still down after {timeout} s")
        assert self.up_at is not None
        return self.up_at

    def cancel(self) -> None:
        """Forget the fault without touching the link (the lab is going away)."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._cancelled = True
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(NETLINK_TIMEOUT)
