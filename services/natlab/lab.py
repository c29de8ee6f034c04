"""The NAT lab: build the namespaces, prove each NAT, run programs in them, tear down.

    with Lab(sites=["port-restricted", "symmetric"], conntrack_udp_timeout=20) as lab:
        server = lab.popen("server", ["python", "-m", "http.server"])
        lab.run("symmetric", ["ping", "-c1", lab.server_ips[0]])
        lab.behaviour["symmetric"]   # ("address-and-port-dependent", ...)

The addressing plan is in ``services.natlab.plan``, the NAT rules in
``services.natlab.rules``. Only one lab runs per machine (the names are global):
``up`` takes an flock on ``LOCK_PATH`` and sweeps leftover "pcl-*" namespaces.
``down`` (also run by a finalizer at exit) kills every process in every lab
namespace before deleting them: deleting a namespace does not end its processes.

Faults and impairments of a running lab: ``link_down``, ``flush_conntrack``,
``remap``, ``roam``, ``impair`` and ``watch`` (netlink events), built on
``services.natlab.faults``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from services.natlab import faults, netns
from services.natlab.behaviour import ProbeResult, classify
from services.natlab.errors import (
    CommandFailed,
    LabBusy,
    NatMismatch,
    NeedsRoot,
    UnknownSite,
)
from services.natlab.faults import (
    RUN_DIR,
    LinkFault,
    NetlinkWatcher,
    Remapped,
    WireStats,
)
from services.natlab.netlink import ConntrackEntry
from services.natlab.plan import (
    EXPECTED6,
    INET_NS,
    PREFIX,
    PUBLIC_PREFIXLEN,
    PUBLIC_PREFIXLEN6,
    ROAM_NS,
    ROAM_SITE,
    ROUTER_WIRE_PORT,
    SERVER_INET_PORT,
    SERVER_IPS,
    SERVER_IPS6,
    SERVER_NS,
    SERVER_SITE,
    WIRE_HOST_SIDE,
    WIRE_UPLINK_SIDE,
    Behaviour,
    Carrier,
    Site,
    parse_sites,
)
from services.natlab.rules import carrier_ruleset, router_ruleset
from services.natlab.shaping import BadImpairment, Impairment

logger = logging.getLogger(__name__)

LOCK_PATH = Path("/run/peercam-natlab.lock")
"""flock'ed while a lab is up; holds the owner's pid for ``python -m services.natlab down``."""

STATE_PATH = Path("/run/peercam-natlab.json")
"""The running lab's addresses and probed behaviour, for ``status``."""

PROBE_PORTS = (40001, 40002)
"""Ports of the probe responder in the server namespace (UDP both, TCP the first)."""

PROBE_TIMEOUT = 10.0
CONNTRACK_SYSCTLS = (
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
# The package's parent, so probe programs import it even from an uninstalled checkout.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


def check_prerequisites() -> None:
    """Raise NeedsRoot unless we can make namespaces and nft rules."""
    if os.geteuid() != 0:
        raise NeedsRoot("the NAT lab needs root (network namespaces, nftables)")
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise NeedsRoot(f"the NAT lab needs {tool!r}: apt-get install iproute2 nftables procps")


def sweep() -> list[str]:
    """Remove leftovers of a dead lab; refuses (LabBusy) while a live lab holds the lock."""
    check_prerequisites()
    fd = _lock()
    try:
        return netns.sweep()
    finally:
        os.close(fd)


def _lock() -> int:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LabBusy(
            f"another NAT lab is up (pid {owner}); stop it with `python -m services.natlab down`"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class _Resources:
    """What a lab owns, kept apart from the Lab so a finalizer can release it."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    faults: list[LinkFault] = field(default_factory=list)
    lock_fd: int | None = None

    def release(self) -> None:
        try:
            for fault in self.faults:
                fault.cancel()
            ids = netns.namespace_ids(self.namespaces)
            # Ours directly: one started a moment ago may not have entered its
            # namespace yet, so a scan of the namespace would miss it.
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
            netns.kill_processes(ids)
            netns.delete_namespaces(self.namespaces)
            # Anyone else's that was entering a namespace during the first pass.
            netns.kill_processes(ids)
            for process in self.processes:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    logger.warning("pid %d outlived SIGKILL", process.pid)
        finally:
            self.processes.clear()
            self.namespaces.clear()
            self.faults.clear()
            shutil.rmtree(RUN_DIR, ignore_errors=True)
            STATE_PATH.unlink(missing_ok=True)
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None


class Lab:
    """A set of NAT sites, a public segment and a two-address server, on the real kernel."""

    def __init__(
        self,
        sites: Sequence[str] | None = None,
        conntrack_udp_timeout: int | None = None,
        *,
        verify: bool = True,
    ) -> None:
        """``sites``: names from ``ALL_SITES`` (default all), "-2" for a second instance.

        ``conntrack_udp_timeout``: seconds for nf_conntrack_udp_timeout and
        _udp_timeout_stream in every router (and the cone NATs' mapping sets);
        None keeps the kernel's defaults (30 s and 120 s).
        ``verify``: probe every NAT on ``up`` and raise NatMismatch if one misbehaves.
        """
        self._sites = {site.name: site for site in parse_sites(sites)}
        if conntrack_udp_timeout is not None and conntrack_udp_timeout < 1:
            raise ValueError(f"conntrack_udp_timeout must be >= 1 s, not {conntrack_udp_timeout}")
        self.conntrack_udp_timeout = conntrack_udp_timeout
        self.verify = verify
        self.behaviour: dict[str, Behaviour] = {}
        """Probed IPv4 UDP behaviour per site (filled by ``up``)."""
        self.behaviour6: dict[str, Behaviour] = {}
        """Probed IPv6 UDP behaviour per site that has IPv6."""
        self.probes: dict[str, ProbeResult] = {}
        """Raw probe results per site ("<site>/6" for IPv6)."""
        self.up_seconds: float | None = None
        self.down_seconds: float | None = None
        self._resources = _Resources()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._impaired: dict[str, Impaired] = {}

    # -- addresses ---------------------------------------------------------------

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self._sites)

    @property
    def server_ips(self) -> tuple[str, str]:
        """The server's two public IPv4 addresses (RFC 5780 needs two)."""
        return SERVER_IPS

    @property
    def server_ips6(self) -> tuple[str, str]:
        """The server's two public IPv6 addresses."""
        return SERVER_IPS6

    @property
    def carriers(self) -> tuple[Carrier, ...]:
        """The shared NATs (CGNATs, two-LAN routers) the lab's sites sit behind."""
        found = (site.carrier for site in self._sites.values() if site.carrier is not None)
        return tuple(dict.fromkeys(found))

    def site(self, name: str) -> Site:
        try:
            return self._sites[name]
        except KeyError:
            raise UnknownSite(
                f"no site {name!r} in this lab (it has {', '.join(self._sites)})"
            ) from None

    def site_ip(self, site: str) -> str:
        """The site host's own IPv4 address (private behind a NAT)."""
        if site == SERVER_SITE:
            return SERVER_IPS[0]
        return self.site(site).host_ip

    def site_ip6(self, site: str) -> str | None:
        """The site host's public IPv6 address, None if the site has no IPv6."""
        if site == SERVER_SITE:
            return SERVER_IPS6[0]
        found = self.site(site)
        return found.host_ip6 if found.has_ipv6 else None

    def public_ip(self, site: str) -> str:
        """The IPv4 address the public segment sees for the site (its NAT's)."""
        if site == SERVER_SITE:
            return SERVER_IPS[0]
        return self.site(site).public_ip

    def namespace(self, where: str) -> str:
        """The namespace of a site's host, "server", "inet", "roam" (the roaming host),
        "<site>-nat" (its router) or "<site>-wire" (between host and router)."""
        if where == SERVER_SITE:
            return SERVER_NS
        if where == "inet":
            return INET_NS
        if where == ROAM_SITE:
            return ROAM_NS
        if where.endswith("-wire") and where[:-5] in self._sites:
            return self._sites[where[:-5]].wire_namespace
        if where.endswith("-cgn"):
            for carrier in self.carriers:
                if carrier.namespace == PREFIX + where:
                    return carrier.namespace
        if where.endswith("-nat") and where[:-4] in self._sites:
            router = self._sites[where[:-4]].router_namespace
            if router is not None:
                return router
        return self.site(where).namespace

    # -- processes ---------------------------------------------------------------

    def popen(self, where: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in a namespace (see ``namespace``); ``down`` kills it."""
        self._require_up()
        process: subprocess.Popen[Any] = subprocess.Popen(
            netns.in_namespace(self.namespace(where), list(argv)), **kwargs
        )
        self._resources.processes.append(process)
        return process

    def run(
        self,
        where: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in a namespace, capturing text output.

        With ``check``, a non-zero status raises CommandFailed carrying stderr.
        """
        self._require_up()
        command = netns.in_namespace(self.namespace(where), list(argv))
        done = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise CommandFailed(
                f"{' '.join(argv)} in {where} failed with status {done.returncode}: "
                f"{done.stderr.strip()}"
            )
        return done

    # -- faults ------------------------------------------------------------------

    def link_down(
        self, site: str, seconds: float | None = None, where: str = "host"
    ) -> LinkFault:
        """Take a site's link down now; back after ``seconds``, on ``restore()``, or
        when the ``with`` block ends. ``where``: "host" (the host's Wi-Fi drops:
        carrier, addresses and routes go), "carrier" (carrier only) or "wan" (the
        ISP goes away); see ``services.natlab.faults``."""
        self._require_up()
        fault = LinkFault(self.site(site), where, seconds)
        self._resources.faults.append(fault)
        return fault

    def conntrack(self, site: str) -> list[ConntrackEntry]:
        """The IPv4 TCP/UDP flows the site's NAT tracks (with their external ports)."""
        self._require_up()
        return faults.conntrack_entries(self.site(site))

    def flush_conntrack(self, site: str) -> int:
        """``conntrack -F`` in the site's NAT (and the cones' mapping sets); how many went."""
        self._require_up()
        return faults.flush_conntrack(self.site(site))

    def remap(self, site: str, hold: int | None = None) -> list[Remapped]:
        """Flush the site's NAT so that each UDP flow's next packet gets a new
        external port, even on a NAT that keeps ports (see ``faults.remap``)."""
        self._require_up()
        return faults.remap(
            self.site(site), hold or self.conntrack_udp_timeout or faults.DEFAULT_REMAP_HOLD
        )

    def watch(self, where: str) -> NetlinkWatcher:
        """Link, address and route events in a namespace (see ``namespace``), from now on."""
        self._require_up()
        return NetlinkWatcher(self.namespace(where))

    # -- the roaming host -------------------------------------------------------

    def roam(self, site: str, gap: float = 0.0) -> str | None:
        """Plug the roaming host ("roam") into a NAT site's LAN; return the site it left.

        The host keeps its eth0 and sees real carrier, address and route changes;
        ``gap``: seconds it is plugged in nowhere on the way.
        """
        self._require_up()
        left = faults.roam(self.site(site), self._sites.values(), gap)
        return None if left is None else left.name

    @property
    def roamer_site(self) -> str | None:
        """Where the roaming host is plugged in (None: nowhere yet)."""
        found = faults.roamer_site(self._sites.values())
        return None if found is None else found.name

    @property
    def roamer_ip(self) -> str | None:
        site = self.roamer_site
        return None if site is None else self.site(site).roamer_ip

    # -- impairment -------------------------------------------------------------

    def impair(
        self, site: str, direction: str = "both", *, seed: int | None = None, **settings: Any
    ) -> Impaired:
        """Impair a site's link: ``settings`` are ``Impairment`` fields (loss, delay,
        jitter, rate_kbit, reorder, queue_bytes, burst_bytes); ``direction`` "up"
        (host -> internet), "down" or "both". The other direction keeps what it had.
        Returns the site's handle: ``change``, ``clear``, ``stats``."""
        self._require_up()
        if direction not in ("up", "down", "both"):
            raise BadImpairment(f"direction must be up, down or both, not {direction!r}")
        target = self.site(site)
        handle = self._impaired.get(site)
        if handle is None:
            impairment = Impairment(**settings)  # bad settings fail before anything starts
            process = self.popen(
                f"{site}-wire",
                faults.wire_argv(target, sys.executable, seed),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=self._probe_env(),
            )
            try:
                faults.start_wire(target, process)
            except BaseException:
                process.kill()
                process.wait()
                raise
            handle = Impaired(self, target, process)
            self._impaired[site] = handle
            handle.change(direction, **impairment.to_json())
        else:
            handle.change(direction, **settings)
        return handle

    def clear_impairment(self, site: str) -> None:
        """Put the site's plain wire back (no-op if it is not impaired)."""
        handle = self._impaired.pop(site, None)
        if handle is None:
            return
        faults.stop_wire(handle.site)
        try:
            handle.process.wait(timeout=faults.WIRE_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait()
        if handle.process.stdout is not None:
            handle.process.stdout.close()
        if handle.process in self._resources.processes:
            self._resources.processes.remove(handle.process)

    # -- life cycle --------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Build the lab and (with ``verify``) prove every NAT; tear down again on failure."""
        if self.is_up:
            return self
        check_prerequisites()
        started = time.monotonic()
        resources = _Resources(lock_fd=_lock())
        self._resources = resources
        # Also at interpreter exit, and if the Lab is dropped without down().
        self._finalizer = weakref.finalize(self, resources.release)
        try:
            leftovers = netns.sweep()
            if leftovers:
                logger.warning("removed leftovers of an earlier lab: %s", leftovers)
            self._build(resources)
            if self.verify:
                self._probe_all()
            self._write_state()
        except BaseException:
            self.down()
            raise
        self.up_seconds = time.monotonic() - started
        logger.info("NAT lab up in %.2f s: %s", self.up_seconds, ", ".join(self._sites))
        return self

    def down(self) -> None:
        """Kill every process in every lab namespace and delete the namespaces. Idempotent."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        self._impaired.clear()
        started = time.monotonic()
        self._finalizer()
        self.down_seconds = time.monotonic() - started
        logger.info("NAT lab down in %.2f s", self.down_seconds)

    def _require_up(self) -> None:
        if not self.is_up:
            raise CommandFailed("the NAT lab is not up: call up() or use it as a context manager")

    # -- building ----------------------------------------------------------------

    def _public_members(self) -> list[tuple[str, str, str]]:
        """(bridge port, namespace, interface) of everything on the public bridge."""
        members = [(SERVER_INET_PORT, SERVER_NS, "eth0")]
        members += [(carrier.inet_port, carrier.namespace, "wan0") for carrier in self.carriers]
        for site in self._sites.values():
            if site.carrier is not None:
                continue  # its router's uplink is on the carrier's inside bridge
            if site.router_namespace is None:
                members.append((site.inet_port, site.wire_namespace, WIRE_UPLINK_SIDE))
            else:
                members.append((site.inet_port, site.router_namespace, "wan0"))
        return members

    def _build(self, resources: _Resources) -> None:
        sites = list(self._sites.values())
        names = [INET_NS, SERVER_NS, *(carrier.namespace for carrier in self.carriers)]
        for site in sites:
            names += [site.namespace, site.wire_namespace]
            if site.router_namespace is not None:
                names.append(site.router_namespace)
        # Record them before creating, so a failure half-way still removes them;
        # the roaming host is made on demand, but goes with the rest.
        resources.namespaces.extend([*names, ROAM_NS])
        netns.ip_batch(f"netns add {name}" for name in names)
        RUN_DIR.mkdir(mode=0o755, exist_ok=True)

        # The public segment: a bridge with one veth per public namespace. No
        # address in pcl-inet and no link to the host's namespace: nothing leaves.
        inet = ["link add br0 type bridge stp_state 0 mcast_snooping 0", "link set br0 up"]
        for port, namespace, interface in self._public_members():
            inet += [
                f"link add {port} type veth peer name {interface} netns {namespace}",
                f"link set {port} master br0",
                f"link set {port} addrgenmode none",
                f"link set {port} up",
            ]
        netns.ip_batch(inet, INET_NS)

        ipv6_sites = [site for site in sites if site.has_ipv6]
        routes6 = [
            f"route add {site.lan_prefix6} via {site.router_public_ip6}" for site in ipv6_sites
        ]
        # No link-local addresses anywhere: ICE agents then see exactly the plan's
        # addresses, and neighbour discovery does not wait ~1 s for a link-local
        # address to finish duplicate address detection (nodad globals suffice).
        server = ["link set lo up", "link set eth0 addrgenmode none", "link set eth0 up"]
        server += [f"addr add {ip}/{PUBLIC_PREFIXLEN} dev eth0" for ip in SERVER_IPS]
        # nodad: usable at once instead of after ~1 s of duplicate address detection.
        server += [f"addr add {ip}/{PUBLIC_PREFIXLEN6} dev eth0 nodad" for ip in SERVER_IPS6]
        server += routes6

        def configure_server() -> None:
            netns.ip_batch(server, SERVER_NS)

        def configure_site(site: Site) -> None:
            wire = site.wire_namespace
            # The wire: the host's eth0 and a bridge, which the impairment
            # forwarder replaces while the site is impaired.
            netns.ip_batch(
                [
                    "link set lo up",
                    f"link add {WIRE_HOST_SIDE} type veth peer name eth0 netns {site.namespace}",
                    "link add br0 type bridge stp_state 0 mcast_snooping 0",
                    f"link set {WIRE_HOST_SIDE} addrgenmode none",
                    "link set br0 addrgenmode none",
                    "link set br0 up",
                ],
                wire,
            )
            host = ["link set lo up", "link set eth0 addrgenmode none", "link set eth0 up"]
            host += faults.host_addressing(site)
            router = site.router_namespace
            if router is not None:
                self._configure_router(site, ipv6_sites, routes6)
            # u0 exists now: made by the router, or by pcl-inet for the open site.
            netns.ip_batch(
                [
                    f"link set {WIRE_UPLINK_SIDE} addrgenmode none",
                    f"link set {WIRE_HOST_SIDE} master br0",
                    f"link set {WIRE_UPLINK_SIDE} master br0",
                    f"link set {WIRE_HOST_SIDE} up",
                    f"link set {WIRE_UPLINK_SIDE} up",
                ],
                wire,
            )
            netns.ip_batch(host, site.namespace)

        if self.conntrack_udp_timeout is not None and not Path(
            "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
        ).exists():
            raise CommandFailed("this kernel has no nf_conntrack_udp_timeout sysctl")
        for carrier in self.carriers:
            # Before the sites: it makes their routers' wan0.
            self._configure_carrier(carrier)
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(configure_server)]
            futures += [pool.submit(configure_site, site) for site in sites]
            for future in futures:
                future.result()

    def _configure_carrier(self, carrier: Carrier) -> None:
        """The shared NAT: ``wan0`` on the public bridge, a bridge ``isp0`` inside with a
        port (veth) per site router behind it, whose other end is that router's wan0."""
        homes = [site for site in self._sites.values() if site.carrier == carrier]
        inside_len = carrier.inside_cidr.split("/")[1]
        commands = [
            "link set lo up",
            "link add isp0 type bridge stp_state 0 mcast_snooping 0",
            "link set isp0 addrgenmode none",
            f"addr add {carrier.inside_ip}/{inside_len} dev isp0",
            f"addr add {carrier.public_ip}/{PUBLIC_PREFIXLEN} dev wan0",
            "link set wan0 addrgenmode none",
            "link set wan0 up",
            "link set isp0 up",
        ]
        for site in homes:
            assert site.router_namespace is not None
            commands += [
                f"link add {site.inet_port} type veth peer name wan0 netns {site.router_namespace}",
                f"link set {site.inet_port} master isp0",
                # A hairpinned packet goes back out of the port it came in by:
                # with br_netfilter loaded the bridge forwards it at layer 2,
                # which it does to the ingress port only in hairpin mode.
                f"link set {site.inet_port} type bridge_slave hairpin on",
                f"link set {site.inet_port} addrgenmode none",
                f"link set {site.inet_port} up",
            ]
        netns.ip_batch(commands, carrier.namespace)
        sysctls = ["net.ipv4.ip_forward=1"]
        if self.conntrack_udp_timeout is not None:
            sysctls += [f"{key}={self.conntrack_udp_timeout}" for key in CONNTRACK_SYSCTLS]
        netns.run(netns.in_namespace(carrier.namespace, ["sysctl", "-q", "-w", *sysctls]))
        netns.run(
            netns.in_namespace(carrier.namespace, ["nft", "-f", "-"]),
            stdin=carrier_ruleset(carrier, self.conntrack_udp_timeout),
        )

    def _configure_router(self, site: Site, ipv6_sites: list[Site], routes6: list[str]) -> None:
        router = site.router_namespace
        assert router is not None
        own_routes6 = [
            route for other, route in zip(ipv6_sites, routes6, strict=True) if other != site
        ]
        prefix = site.lan_cidr.split("/")[1]
        commands = [
            "link set lo up",
            # The LAN is a bridge, so the roaming host can plug in beside the
            # wire; a fixed MAC keeps the hosts' ARP entries valid when it does.
            "link add lan0 type bridge stp_state 0 mcast_snooping 0",
            f"link set lan0 address {faults.router_lan_mac(site)}",
            f"link add {ROUTER_WIRE_PORT} type veth peer name {WIRE_UPLINK_SIDE} "
            f"netns {site.wire_namespace}",
            f"link set {ROUTER_WIRE_PORT} master lan0",
            f"link set {ROUTER_WIRE_PORT} addrgenmode none",
            f"link set {ROUTER_WIRE_PORT} up",
            f"addr add {site.wan_ip}/{PUBLIC_PREFIXLEN} dev wan0",
            f"addr add {site.router_lan_ip}/{prefix} dev lan0",
        ]
        if site.has_ipv6:
            commands += [
                f"addr add {site.router_public_ip6}/{PUBLIC_PREFIXLEN6} dev wan0 nodad",
                f"addr add {site.router_lan_ip6}/{site.lan_prefix6.split('/')[1]} "
                "dev lan0 nodad",
                # A router solicits a neighbour for a forwarded packet only from a
                # settled link-local address (ndisc_send_ns gives up otherwise).
                f"addr add {site.router_link_local6} dev wan0 nodad",
                "addr add fe80::1/64 dev lan0 nodad",
            ]
        commands += ["link set wan0 addrgenmode none", "link set lan0 addrgenmode none"]
        commands += ["link set wan0 up", "link set lan0 up"]
        if site.has_ipv6:
            # Routes to the other IPv6 sites' prefixes: their gateways are
            # reachable only once wan0 is up.
            commands += own_routes6
        if site.carrier is not None:
            commands.append(f"route add default via {site.carrier.inside_ip}")
        netns.ip_batch(commands, router)
        if site.carrier is not None and not site.translates:
            # The carrier reaches an untranslated LAN through its router (now up).
            netns.ip_batch([f"route add {site.lan_cidr} via {site.wan_ip}"],
                           site.carrier.namespace)

        sysctls = ["net.ipv4.ip_forward=1"]
        if site.has_ipv6:
            sysctls.append("net.ipv6.conf.all.forwarding=1")
        if self.conntrack_udp_timeout is not None:
            sysctls += [f"{key}={self.conntrack_udp_timeout}" for key in CONNTRACK_SYSCTLS]
        netns.run(netns.in_namespace(router, ["sysctl", "-q", "-w", *sysctls]))
        netns.run(
            netns.in_namespace(router, ["nft", "-f", "-"]),
            stdin=router_ruleset(site, self.conntrack_udp_timeout),
        )

    # -- probing -----------------------------------------------------------------

    def _probe_argv(self, role: str, addresses: Iterable[str], tcp: bool = False) -> list[str]:
        argv = [sys.executable, "-m", "services.natlab.probe", role, "--addresses", *addresses]
        argv += ["--ports", *(str(port) for port in PROBE_PORTS)]
        return argv + (["--tcp"] if tcp else [])

    def _probe_env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": _SOURCE_ROOT + (os.pathsep + path if path else "")}

    def _probe_all(self) -> None:
        server = self.popen(
            SERVER_SITE,
            self._probe_argv("server", [*SERVER_IPS, *SERVER_IPS6]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._probe_env(),
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                _, err = server.communicate(timeout=PROBE_TIMEOUT)
                raise CommandFailed(f"probe responder did not start: {err.strip()}")
            jobs = [(site, False) for site in self._sites.values()]
            jobs += [(site, True) for site in self._sites.values() if site.has_ipv6]
            results = self._run_probes(jobs)
            failures: list[str] = []
            for (site, v6), result in zip(jobs, results, strict=True):
                expected = EXPECTED6 if v6 else site.expected
                seen = classify(result)
                if seen != expected:
                    # A symmetric NAT's random ports can collide by chance: ask again.
                    result = self._run_probes([(site, v6)])[0]
                    seen = classify(result)
                ok_tcp = result.tcp is not None
                label = f"{site.name}{' (IPv6)' if v6 else ''}"
                if seen != expected:
                    failures.append(
                        f"{label}: expected mapping/filtering {tuple(expected)}, probed "
                        f"{tuple(seen)} (mapped {result.mapped}, filtered {result.filtered})"
                    )
                if not ok_tcp:
                    failures.append(f"{label}: TCP to {SERVER_IPS[0]}:{PROBE_PORTS[0]} failed")
                self.probes[f"{site.name}/6" if v6 else site.name] = result
                (self.behaviour6 if v6 else self.behaviour)[site.name] = seen
            if failures:
                raise NatMismatch("NAT lab probe: " + "; ".join(failures))
        finally:
            server.kill()
            server.wait()
            for stream in (server.stdout, server.stderr):
                if stream is not None:
                    stream.close()
            self._resources.processes.remove(server)

    def _run_probes(self, jobs: list[tuple[Site, bool]]) -> list[ProbeResult]:
        clients = []
        for site, v6 in jobs:
            addresses = SERVER_IPS6 if v6 else SERVER_IPS
            clients.append(
                self.popen(
                    site.name,
                    self._probe_argv("client", addresses, tcp=True),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=self._probe_env(),
                )
            )
        results = []
        for (site, _), client in zip(jobs, clients, strict=True):
            out, err = client.communicate(timeout=PROBE_TIMEOUT)
            self._resources.processes.remove(client)
            if client.returncode != 0:
                raise CommandFailed(f"probe client in {site.name} failed: {err.strip()}")
            results.append(ProbeResult.from_json(json.loads(out)))
        return results

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "server": {"ipv4": list(SERVER_IPS), "ipv6": list(SERVER_IPS6), "namespace": SERVER_NS},
            "sites": {
                site.name: {
                    "kind": site.kind.value,
                    "namespace": site.namespace,
                    "router_namespace": site.router_namespace,
                    "host_ip": site.host_ip,
                    "public_ip": site.public_ip,
                    "host_ip6": site.host_ip6 if site.has_ipv6 else None,
                    "behaviour": list(self.behaviour.get(site.name, ())),
                    "behaviour6": list(self.behaviour6.get(site.name, ())),
                }
                for site in self._sites.values()
            },
            "conntrack_udp_timeout": self.conntrack_udp_timeout,
        }
        STATE_PATH.write_text(json.dumps(state, indent=2) + "\n")


class Impaired:
    """A site's impairment, from ``Lab.impair``: change it, read its counters, clear it."""

    def __init__(self, lab: Lab, site: Site, process: subprocess.Popen[str]) -> None:
        self._lab = lab
        self.site = site
        self.process = process
        self.up = Impairment()
        """What the host -> internet direction does now."""
        self.down = Impairment()
        """What the internet -> host direction does now."""

    def __enter__(self) -> Impaired:
        return self

    def __exit__(self, *_: object) -> None:
        self.clear()

    def change(self, direction: str = "both", **settings: Any) -> None:
        """Set ``direction`` ("up", "down", "both") to exactly ``settings``."""
        if direction not in ("up", "down", "both"):
            raise BadImpairment(f"direction must be up, down or both, not {direction!r}")
        impairment = Impairment(**settings)
        up = impairment if direction in ("up", "both") else self.up
        down = impairment if direction in ("down", "both") else self.down
        faults.set_impairment(self.site, up, down)
        self.up, self.down = up, down

    def stats(self) -> WireStats:
        return faults.wire_stats(self.site)

    def clear(self) -> None:
        """Back to the plain wire; delayed frames are sent at once."""
        if self._lab.is_up:
            self._lab.clear_impairment(self.site.name)
