"""Rendezvous nodes on Redis behind HAProxy: session starts across nodes, and a node killed.

Every component is real and in its own process: ``redis-server`` (no
persistence), ``peercam rendezvous`` nodes (``python -m camera.cli rendezvous
--redis-url``, with the same loop and collector probes as the scale benchmark),
and HAProxy running the configuration printed in docs/operations.md (addresses,
certificate and ``maxconn`` replaced, one ``server`` line per node, and an admin
``stats socket`` the benchmark uses to read and set the servers' states). The
simulated cameras of ``bench/scale_cameras.py`` (real P-256 keys, the signed
``register`` on the node's nonce, an immediate signed answer to every offer)
connect through HAProxy over TLS, as a fleet would.

Session starts: for each topology (one process without Redis, the embedded
default; then two and four nodes on one Redis), the cameras register through
HAProxy, and the node each one landed on is read from its presence key in Redis
(the node's own claim). Viewers connect to each node directly, so the benchmark
knows where they are, and every offer goes to a random camera on ANOTHER node:
viewer → node A → Redis → node B → HAProxy → camera, and the answer back. The
single process runs behind the same HAProxy with the viewers connected to it
directly, so the only difference is the hop between nodes. Redis' memory and CPU
are read with the cameras held (idle, leases renewed) and under the load.

Node kill: the cameras register while HAProxy holds every node but the first in
maintenance (so all of them land on that node), the others are then put back,
and the first node is killed with SIGKILL. The cameras re-register through
HAProxy with the agent's backoff; each reports when it lost its connection and
when it was registered again. Meanwhile viewers on the survivors keep offering
to a random sample of the victims until each answers (an offer is "reachable"
only when the camera's own signed answer comes back). Afterwards every victim
gets one offer: the answer's signature is checked against the device ID the
offer named (a misrouted offer would be answered by another key or not at all),
and no presence key may still name the dead node.

Signaling only: no WebRTC, no media, no bitrate; what is timed is the
rendezvous tier.

What is stored (``cluster.json``) is what the page and the plot use: the round
trips' summaries, not every sample; the re-home curves at 1% steps
(``percent_times``), not one time per camera; the machine's busy cores per half
second as a summary, not the timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import loop_probe
from bench.common import ROOT, cpu_seconds, need_executable, pyplot, rss_kib, summary
from bench.scale import (
    DRAIN_SECONDS,
    MachineLoad,
    RendezvousProcess,
    ViewerPool,
    WorkerProcess,
    healthz,
    tail,
)
from bench.scale_cameras import fake_sdp, raise_nofile

NAME = "cluster"
HELP = "rendezvous nodes on Redis behind HAProxy: cross-node session starts, a node killed"
SMOKE = ["--cameras", "40", "--topologies", "1,2", "--rates", "10,20", "--step-seconds", "1",
         "--idle-seconds", "1", "--settle", "0.3", "--viewers", "4", "--workers", "1",
         "--kill-nodes", "2", "--kill-cameras", "0", "--probe-sample", "10",
         "--recover-timeout", "20", "--kill-variants", "after"]
NEEDS = ["redis-server", "haproxy"]

DOCS = ROOT / "docs" / "operations.md"
PREFIX = "peercam"
#: HAProxy's own descriptors besides two per connection (listeners, checks, logs).
HAPROXY_RESERVE = 200
#: Per-IP limits for the nodes: behind the balancer every camera comes from its
#: address (docs/operations.md says to raise them there).
REASK = 0.5
"""Seconds after which a probe with no answer is sent again: an ``unavailable`` error
carries no session ID, so which probe it answers is not known (an answer takes ms)."""
NODE_LIMITS = ["--connection-rate", "100000", "--connection-burst", "100000",
               "--max-pending-per-ip", "512"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, default=0,
                   help="cameras held (default: as many as HAProxy's descriptors allow)")
    p.add_argument("--topologies", default="1,2,4",
                   help="node counts for the session starts (1: one process, no Redis)")
    p.add_argument("--rates", default="50,200,400", help="session starts per second")
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each rate step")
    p.add_argument("--idle-seconds", type=float, default=15.0,
                   help="idle window for Redis' CPU (one lease: every key renewed 3 times)")
    p.add_argument("--settle", type=float, default=2.0, help="pause after each ramp")
    p.add_argument("--workers", type=int, default=2, help="camera worker processes")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight, total")
    p.add_argument("--per-address", type=int, default=16,
                   help="connections per loopback source address")
    p.add_argument("--viewers", type=int, default=64,
                   help="viewer connections in all (split over the nodes)")
    p.add_argument("--kill-nodes", type=int, default=3,
                   help="nodes in the kill test: the victim and the survivors (0: no kill test)")
    p.add_argument("--kill-cameras", default="2400,0",
                   help="cameras on the killed node, one kill each (0: --cameras)")
    p.add_argument("--probe-sample", type=int, default=100,
                   help="victims the viewers keep offering to while they re-home")
    p.add_argument("--probe-interval", type=float, default=0.5,
                   help="seconds between offers to a victim not yet answering")
    p.add_argument("--recover-timeout", type=float, default=60.0,
                   help="seconds after the kill to wait for every camera")
    p.add_argument("--verify-rate", type=float, default=500.0,
                   help="offers/s of the check after re-homing (one per victim)")
    p.add_argument("--log-level", default="INFO", help="the nodes' log level (INFO ships)")
    p.add_argument("--tls-resume", action=argparse.BooleanOptionalAction, default=True,
                   help="the simulated cameras resume their TLS sessions, as the agent does "
                        "(--no-tls-resume: a full handshake every time, as before)")
    p.add_argument("--ssl-buffer", type=int, default=32,
                   help="KiB of TLS read buffer per simulated camera (0: asyncio's 256 KiB, "
                        "as before)")
    p.add_argument("--kill-variants", default="before,after",
                   help="each kill once per variant, in this order: after (the simulated "
                        "cameras as given) and before (full TLS handshakes, asyncio's 256 KiB "
                        "buffers, as they were): one run compares them")
    p.add_argument("--profile", action="store_true",
                   help="sample a survivor and a camera worker with py-spy (and HAProxy with "
                        "perf, if there) while the killed node's cameras re-home")
    p.add_argument("--profile-seconds", type=float, default=8.0,
                   help="how long the profilers sample after the kill")
    p.add_argument("--seed", type=int, default=1)


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def haproxy_config(port: int, pem: Path, nodes: list[int], maxconn: int, stats: Path) -> str:
    """The HAProxy configuration of docs/operations.md for these ports (one ``server``
    per node), with ``maxconn`` to fit the descriptor limit and an admin stats socket."""
    found = re.search(r"```haproxy\n(.*?)```", DOCS.read_text(), re.S)
    if not found:
        raise SystemExit("bench: docs/operations.md has no haproxy block; nothing was measured")
    config = found.group(1)
    doc_servers = re.findall(r"^ *server node\d+ .*\n", config, re.M)
    for old, new in (("maxconn 200000", f"maxconn {maxconn}"),
                     ("bind :443 ssl crt /etc/haproxy/peercam.pem",
                      f"bind 127.0.0.1:{port} ssl crt {pem}"),
                     ("global\n", f"global\n    stats socket {stats} level admin\n")):
        if old not in config or not doc_servers:
            raise SystemExit(f"bench: the haproxy block of docs/operations.md has no {old!r}")
        config = config.replace(old, new, 1)
    indent = doc_servers[0][:len(doc_servers[0]) - len(doc_servers[0].lstrip())]
    lines = "".join(f"{indent}server node{i + 1} 127.0.0.1:{p} check\n"
                    for i, p in enumerate(nodes))
    config = config.replace(doc_servers[0], lines)
    for extra in doc_servers[1:]:
        config = config.replace(extra, "")
    return config


class Haproxy:
    """``haproxy -db`` with the docs' configuration; its admin socket."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, stats: Path, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.stats = stats
        self.log = log

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    async def command(self, text: str) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.stats)), 5)
        try:
            writer.write(text.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()

    async def states(self) -> dict[str, str]:
        """The backend's servers: name -> status (UP, DOWN, MAINT, ...)."""
        rows = (await self.command("show stat")).lstrip("# ").splitlines()
        head = rows[0].split(",")
        out = {}
        for row in rows[1:]:
            cells = dict(zip(head, row.split(","), strict=False))
            if cells.get("pxname") == "rendezvous" and cells.get("svname", "").startswith("node"):
                out[cells["svname"]] = cells.get("status", "?")
        return out

    async def until(self, want: dict[str, str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = await self.states()
            if all(now.get(k, "").startswith(v) for k, v in want.items()):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: haproxy's servers are {now}, not {want}")
            await asyncio.sleep(0.2)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc.poll() is None else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Redis:
    """A real ``redis-server`` on a free port, no persistence."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._client: Any = None

    @classmethod
    async def start(cls, state: Path) -> Redis:
        need_executable("redis-server", "scripts/setup --test installs it")
        port = free_port()
        state.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(state), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self = cls(proc, port)
        await wait_port(port)
        return self

    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=10)
        return self._client

    async def memory(self) -> dict[str, int]:
        info = await self.client().info("memory")
        return {"used_kib": int(info["used_memory"]) // 1024,
                "rss_kib": rss_kib(self.proc.pid)}

    async def holders(self, devices: list[str]) -> dict[str, str | None]:
        """device ID -> the node its presence key names (None: no key)."""
        out: dict[str, str | None] = {}
        for i in range(0, len(devices), 1000):
            chunk = devices[i:i + 1000]
            values = await self.client().mget([f"{PREFIX}:camera:{d}" for d in chunk])
            for device, value in zip(chunk, values, strict=True):
                out[device] = value.split("/")[0] if value else None
        return out

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc.poll() is None else 0.0

    async def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Tier:
    """Redis (for two nodes or more), the nodes, HAProxy in front, camera workers behind it."""

    def __init__(self, state: Path, nodes: int, args: argparse.Namespace) -> None:
        self.state = state
        self.n = nodes
        self.args = args
        self.redis: Redis | None = None
        self.nodes: list[RendezvousProcess] = []
        self.haproxy: Haproxy | None = None
        self.workers: list[WorkerProcess] = []
        self.ca: Path | None = None
        """HAProxy's self-signed certificate: what the cameras trust."""

    async def start(self, front_port: int) -> None:
        """Redis and the nodes; the nodes answer to the name ``127.0.0.1:<front_port>``."""
        self.state.mkdir(parents=True, exist_ok=True)
        if self.n > 1:
            self.redis = await Redis.start(self.state / "redis")
        for i in range(self.n):
            where = self.state / f"node{i + 1}"
            where.mkdir(parents=True, exist_ok=True)
            extra = ["--server-name", f"127.0.0.1:{front_port}", *NODE_LIMITS]
            if self.redis is not None:
                extra += ["--redis-url", self.redis.url, "--node-id", f"node{i + 1}"]
            self.nodes.append(await RendezvousProcess.start(where, self.args.log_level, extra))
        deadline = time.monotonic() + 30
        for node in self.nodes:
            # Registrations claim presence only once the node reached Redis.
            while self.redis is not None and not (await healthz(node.url)).get(
                    "cluster", {}).get("redis_ok"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {node.url} never reached Redis; its log ends:\n"
                                     f"{tail(node.log)}")
                await asyncio.sleep(0.1)
            await healthz(node.url)

    async def cameras(self, count: int, reconnect: bool) -> None:
        assert self.haproxy is not None and self.ca is not None
        n = max(1, min(self.args.workers, math.ceil(count / self.args.per_address)))
        (self.state / "cameras").mkdir(parents=True, exist_ok=True)
        extra = ["--tls-ca", str(self.ca), "--ssl-buffer", str(self.args.ssl_buffer),
                 "--tls-resume" if self.args.tls_resume else "--no-tls-resume"]
        if reconnect:
            extra.append("--reconnect")
        for i in range(n):
            self.workers.append(await WorkerProcess.start(
                self.haproxy.url, i, n, self.args.per_address,
                max(1, self.args.concurrency // n), self.state, extra=extra))

    def cpu_each(self) -> dict[str, float]:
        """CPU seconds so far of every live process of the tier, by name."""
        out = {f"node{i + 1}": node.cpu() for i, node in enumerate(self.nodes)
               if node.proc.returncode is None}
        out |= {f"camera worker {i}": w.cpu() for i, w in enumerate(self.workers)}
        out["haproxy"] = self.haproxy.cpu() if self.haproxy else 0.0
        out["redis"] = self.redis.cpu() if self.redis else 0.0
        out["viewers (the benchmark)"] = cpu_seconds(os.getpid())
        return out

    def cpu(self) -> dict[str, float]:
        return {"nodes": sum(node.cpu() for node in self.nodes if node.proc.returncode is None),
                "redis": self.redis.cpu() if self.redis else 0.0,
                "haproxy": self.haproxy.cpu() if self.haproxy else 0.0,
                "cameras": sum(w.cpu() for w in self.workers),
                "viewers": cpu_seconds(os.getpid())}

    async def stop(self) -> None:
        for w in self.workers:
            await w.stop()
        if self.haproxy is not None:
            # HAProxy logs a tunnel as it closes: let it see every camera gone first.
            deadline = time.monotonic() + 5
            with contextlib.suppress(OSError, TimeoutError):
                while time.monotonic() < deadline and "CurrConns: 0\n" not in \
                        await self.haproxy.command("show info"):
                    await asyncio.sleep(0.1)
            self.haproxy.stop()
        for node in self.nodes:
            await node.stop()
        if self.redis is not None:
            await self.redis.stop()


def log_events(state: Path) -> dict[str, int]:
    """What the nodes and HAProxy logged that matters here: a node's "redis unreachable
    (<why>)", cameras a node closed because Redis named another connection for them,
    and HAProxy marking a node DOWN (its open sessions are then cut)."""
    out: dict[str, int] = {}
    logs = sorted(state.glob("node*/rendezvous.log")) + [state / "haproxy.log"]
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                found = re.search(r"redis unreachable \((\w+): (\w+)", line)
                down = re.search(r"Server rendezvous/(node\d+) is DOWN, reason: ([^,]+)", line)
                if found:
                    key = f"redis unreachable ({found.group(1)}: {found.group(2)})"
                elif "is registered on another node now; closing" in line:
                    key = "closed: presence named another connection"
                elif down and not line.startswith("["):  # haproxy prints each twice
                    key = f"haproxy: a node DOWN ({down.group(2)})"
                else:
                    continue
                out[key] = out.get(key, 0) + 1
    return out


def rates_of(c0: dict[str, float], c1: dict[str, float], seconds: float) -> dict[str, float]:
    return {k: round((c1[k] - c0[k]) / seconds, 3) for k in c0}


# -- the benchmark ---------------------------------------------------------------------


def fits(nofile: int) -> int:
    """Cameras HAProxy can carry under this descriptor limit (two per connection)."""
    return ((nofile - HAPROXY_RESERVE) // 2 - 300) // 100 * 100


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for need in NEEDS:
        need_executable(need, "scripts/setup --test installs it")
    nofile = raise_nofile()
    room = fits(nofile)
    cameras = args.cameras or room
    if cameras > room:
        raise SystemExit(f"bench: {cameras} cameras need {2 * cameras + HAPROXY_RESERVE} "
                         f"descriptors in HAProxy; RLIMIT_NOFILE is {nofile}")
    maxconn = (nofile - HAPROXY_RESERVE) // 2
    topologies = [int(x) for x in args.topologies.split(",") if x.strip()]
    rates = [float(x) for x in args.rates.split(",")]
    started = time.monotonic()
    result: dict[str, Any] = {
        "cameras": cameras, "nofile": nofile, "haproxy_maxconn": maxconn,
        "rates": rates, "step_seconds": args.step_seconds, "idle_seconds": args.idle_seconds,
        "viewers": args.viewers, "workers": args.workers, "per_address": args.per_address,
        "tls_resume": args.tls_resume, "ssl_buffer_kib": args.ssl_buffer or 256,
        "log_level": args.log_level, "sdp_bytes": len(fake_sdp("recvonly")),
        "node_limits": NODE_LIMITS, "topologies": [],
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True,
                                  text=True).stdout.splitlines()[0],
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True,
                                text=True).stdout.strip(),
    }
    result["failed"] = []
    for n in topologies:
        try:
            result["topologies"].append(await _topology(args, n, cameras, maxconn, rates))
        except SystemExit as exc:
            # The machine is shared: a run that breaks is reported, the others kept.
            result["failed"].append({"what": f"{n} node(s)", "why": str(exc)[:600],
                                     "events": log_events(Path(args.state) / f"cluster-{n}")})
            print(f"cluster: {n} node(s) failed: {exc}", file=sys.stderr, flush=True)
    if args.kill_nodes >= 2:
        sizes = [int(x) or cameras for x in args.kill_cameras.split(",") if x.strip()]
        result["kills"] = []
        runs = [(size, variant) for size in sorted(set(sizes))
                for variant in _variants(args.kill_variants)]
        for size, variant in runs:
            if size > room:
                raise SystemExit(f"bench: a kill with {size} cameras does not fit ({room})")
            try:
                result["kills"].append(await _kill(_variant(args, variant), size, maxconn))
            except SystemExit as exc:
                result["failed"].append({
                    "what": f"kill with {size} cameras", "why": str(exc)[:600],
                    "events": log_events(Path(args.state) / f"cluster-kill-{size}-{variant}")})
                print(f"cluster: the kill with {size} failed: {exc}", file=sys.stderr,
                      flush=True)
                continue
            k = result["kills"][-1]
            print(f"cluster: node killed with {size} cameras ({variant}): registered again "
                  f"{k['registered_again_s']}, reachable {k['reachable_s']}, "
                  f"misrouted {k['check']['misrouted']}", file=sys.stderr, flush=True)
    if not result["topologies"] and not result.get("kills"):
        raise SystemExit("bench: nothing was measured: " + "; ".join(
            f"{f['what']}: {f['why'].splitlines()[0]}" for f in result["failed"]))
    result["measure_seconds"] = round(time.monotonic() - started, 1)
    return result


def _variants(text: str) -> list[str]:
    out = [v.strip() for v in text.split(",") if v.strip()]
    if not out or set(out) - {"before", "after"}:
        raise SystemExit(f"bench: --kill-variants {text!r}: before and/or after")
    return out


def _variant(args: argparse.Namespace, variant: str) -> argparse.Namespace:
    """``args`` for one side of the comparison: "before", the simulated cameras as
    they were (a full TLS handshake on every connection, asyncio's 256 KiB buffer);
    "after", as given."""
    out = argparse.Namespace(**vars(args))
    out.variant = variant
    if variant == "before":
        out.tls_resume, out.ssl_buffer = False, 0
    return out


async def _grow(tier: Tier, count: int) -> tuple[list[str], dict[str, Any]]:
    t0, c0 = time.monotonic(), tier.cpu()
    replies = await asyncio.gather(*(w.command({"cmd": "grow", "to": count}, 900)
                                     for w in tier.workers))
    ramp = time.monotonic() - t0
    devices: list[str] = []
    failed: dict[str, int] = {}
    ms: list[float] = []
    for reply in replies:
        devices += reply["ids"]
        ms += reply["register_ms"]
        for k, v in reply["failed"].items():
            failed[k] = failed.get(k, 0) + v
    if failed:
        why = "; ".join(f"{v}x {k}" for k, v in list(failed.items())[:3])
        raise SystemExit(f"bench: {sum(failed.values())} of {count} cameras could not register "
                         f"through haproxy ({why})")
    return devices, {"ramp_seconds": round(ramp, 2),
                     "registrations_per_s": round(len(devices) / ramp, 1),
                     "register_ms": summary(ms) if ms else None,
                     "refused": sum(r["refused"] for r in replies),
                     "cpu": rates_of(c0, tier.cpu(), ramp)}


async def _placement(tier: Tier, devices: list[str]) -> dict[str, str]:
    """device -> node name, from each camera's presence key (one process: node1)."""
    if tier.redis is None:
        return {d: "node1" for d in devices}
    deadline = time.monotonic() + 10
    while True:  # each claim follows its "registered" by a moment
        holders = await tier.redis.holders(devices)
        missing = [d for d, h in holders.items() if h is None]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {len(missing)} registered cameras have no presence key")
        await asyncio.sleep(0.2)
    return {d: str(h) for d, h in holders.items()}


async def _topology(args: argparse.Namespace, n: int, cameras: int, maxconn: int,
                    rates: list[float]) -> dict[str, Any]:
    label = "one process, no Redis" if n == 1 else f"{n} nodes on Redis"
    state = Path(args.state) / f"cluster-{n}"
    tier = Tier(state, n, args)
    pools: list[ViewerPool] = []
    port = free_port()
    try:
        await tier.start(port)
        await _front_on(tier, maxconn, port)
        await asyncio.sleep(args.settle)
        redis_empty = await tier.redis.memory() if tier.redis else None
        await tier.cameras(cameras, reconnect=False)
        devices, ramp = await _grow(tier, cameras)
        where = await _placement(tier, devices)
        per_node = {f"node{i + 1}": 0 for i in range(n)}
        for node in where.values():
            per_node[node] += 1
        # The nodes' own count agrees with what their presence keys say.
        own = {f"node{i + 1}": (await healthz(node.url)).get("cameras")
               for i, node in enumerate(tier.nodes)}
        if own != per_node:
            raise SystemExit(f"bench: the nodes hold {own}, their presence keys say {per_node}")
        await asyncio.sleep(args.settle)
        # Idle: Redis renews every presence key every third of a lease.
        load, t0, c0 = MachineLoad(), time.monotonic(), tier.cpu()
        await asyncio.sleep(args.idle_seconds)
        idle = rates_of(c0, tier.cpu(), time.monotonic() - t0)
        idle["other"] = round(max(0.0, load.cores() - sum(idle.values())), 2)
        redis_held = await tier.redis.memory() if tier.redis else None
        per_pool = max(1, math.ceil(args.viewers / n))
        for node in tier.nodes:
            pools.append(ViewerPool(node.url, per_pool, args.per_address))
            await pools[-1].open()
        gc.collect()
        gc.freeze()
        await asyncio.sleep(args.settle)
        steps = []
        rng = random.Random(args.seed)
        for rate in rates:
            steps.append(await _step(tier, pools, where, rate, args, rng))
            s = steps[-1]
            print(f"cluster: {label}: {rate:g} starts/s: p50 {(s['rtt'] or {}).get('p50')} ms, "
                  f"p99 {(s['rtt'] or {}).get('p99')} ms, errors {s['errors'] or 0}, "
                  f"cross-node {s['cross_node']}/{s['sent']}", file=sys.stderr, flush=True)
            for node in tier.nodes:
                await _quiesce(node.url)
        redis_after = await tier.redis.memory() if tier.redis else None
        health = [await healthz(node.url) for node in tier.nodes]
        for node in tier.nodes:
            node.alive()
        events = log_events(tier.state)
    finally:
        for pool in pools:
            await pool.close()
        await tier.stop()
        gc.unfreeze()
    row: dict[str, Any] = {
        "nodes": n, "label": label, "cameras": cameras, "per_node": per_node,
        "viewers_per_node": per_pool, "ramp": ramp, "idle_cpu": idle, "steps": steps,
        "health_at_end": health, "node_events": events,
    }
    if redis_empty and redis_held:
        row["redis_memory"] = {"empty": redis_empty, "held": redis_held, "after": redis_after,
                               "used_kib_per_10k": round((redis_held["used_kib"]
                                                          - redis_empty["used_kib"])
                                                         * 10_000 / cameras, 1),
                               "rss_kib_per_10k": round((redis_held["rss_kib"]
                                                         - redis_empty["rss_kib"])
                                                        * 10_000 / cameras, 1)}
        row["redis_idle_cpu_per_10k"] = round(idle["redis"] * 10_000 / cameras, 4)
    print(f"cluster: {label}: {cameras} cameras ({per_node}), registered at "
          f"{ramp['registrations_per_s']}/s; idle CPU {idle}", file=sys.stderr, flush=True)
    return row


async def _front_on(tier: Tier, maxconn: int, port: int) -> None:
    """HAProxy on ``port`` (the name the nodes were told), every server up."""
    from services.tls import self_signed

    ports = [int(node.url.rsplit(":", 1)[1]) for node in tier.nodes]
    cert, key = self_signed(tier.state / "tls", ["127.0.0.1"])
    tier.ca = cert
    pem = tier.state / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    stats = tier.state / "haproxy.sock"
    config = tier.state / "haproxy.cfg"
    config.write_text(haproxy_config(port, pem, ports, maxconn, stats))
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        raise SystemExit(f"bench: haproxy refuses the configuration:\n{check.stderr}")
    log = tier.state / "haproxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    tier.haproxy = Haproxy(proc, port, stats, log)
    try:
        await wait_port(port)
        await tier.haproxy.until({f"node{i + 1}": "UP" for i in range(tier.n)})
    except SystemExit as exc:
        raise SystemExit(f"{exc}; haproxy's log ends:\n{tail(log)}") from None


async def _step(tier: Tier, pools: list[ViewerPool], where: dict[str, str], rate: float,
                args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Session starts at ``rate``/s in all, each viewer pool offering to cameras on the
    other nodes (all cameras with one node)."""
    n = len(pools)
    targets = []
    for i in range(n):
        here = f"node{i + 1}"
        others = [d for d, node in where.items() if node != here] if n > 1 else list(where)
        if not others:
            raise SystemExit(f"bench: every camera is on {here}: no cross-node target")
        targets.append(others)
    load, t0, c0 = MachineLoad(), time.monotonic(), tier.cpu()
    parts = await asyncio.gather(*(
        pool.step(rate / n, args.step_seconds, targets[i], random.Random(rng.random()))
        for i, pool in enumerate(pools)))
    elapsed = time.monotonic() - t0
    cpu = rates_of(c0, tier.cpu(), elapsed)
    cpu["other"] = round(max(0.0, load.cores() - sum(cpu.values())), 2)
    rtt = sorted(x for p in parts for x in p["rtt_ms"])
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    sent = sum(p["sent"] for p in parts)
    achieved = [p["achieved_rate"] for p in parts if p["achieved_rate"]]
    return {
        "rate": rate, "sent": sent, "answered": len(rtt),
        "cross_node": sent if n > 1 else 0,
        "signatures_checked": sum(p["signatures_checked"] for p in parts),
        "achieved_rate": round(sum(achieved), 1) if achieved else None,
        "errors": errors, "rtt": summary(rtt) if rtt else None,
        "cpu": cpu,
        "loop_max_ms": max((node.longest_pause(t0, time.monotonic())["wall_ms"]
                            for node in tier.nodes), default=0.0),
    }


async def _quiesce(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int((await healthz(url)).get("sessions", 0)) == 0:
            return
        await asyncio.sleep(0.3)


# -- node kill ---------------------------------------------------------------------------


def _signed_offer(pool: ViewerPool, link: int, device: str) -> tuple[str, str, str]:
    """(session, sdp, text) of a signed offer from viewer ``link`` of ``pool``."""
    from services.signaling import Role, encode
    from services.signatures import offer_statement, sign

    _ws, key, key_text = pool._links[link]
    session = secrets.token_urlsafe(16)
    sdp = fake_sdp("recvonly")
    ts = int(time.time() * 1000)
    signature = sign(key, offer_statement(device, session, ts, key_text, sdp))
    return session, sdp, encode(Role.VIEWER, "offer", device_id=device, session_id=session,
                                sdp=sdp, viewer_key=key_text, timestamp=ts, signature=signature)


class Prober:
    """Viewers on the survivors offering to victims; when each first answered."""

    def __init__(self, pools: list[ViewerPool]) -> None:
        self.pools = pools
        self.links = [(p, i) for p in pools for i in range(len(p._links))]
        self._next = 0
        self.sent = 0
        for pool in pools:
            pool.verify_left = 10**9  # every answer's signature is checked
            pool.verified = 0
            pool.errors.clear()

    async def offer(self, device: str, sink: list[float]) -> tuple[ViewerPool, str]:
        pool, link = self.links[self._next % len(self.links)]
        self._next += 1
        session, sdp, text = _signed_offer(pool, link, device)
        pool.pending[session] = (time.perf_counter(), device, sdp, sink)
        self.sent += 1
        await pool._links[link][0].send_str(text)
        return pool, session

    async def until_reached(self, sample: list[str], t0: float, timeout: float,
                            interval: float) -> dict[str, float]:
        """Offer to each device of ``sample`` every ``interval`` until it answers; the
        seconds from ``t0`` (monotonic) to its first answer."""
        reached: dict[str, float] = {}
        sinks: dict[str, list[float]] = {d: [] for d in sample}
        inflight: dict[str, tuple[ViewerPool, str, float]] = {}
        deadline = t0 + timeout
        while len(reached) < len(sample) and time.monotonic() < deadline:
            for device in sample:
                if device in reached:
                    continue
                if sinks[device]:
                    reached[device] = round(inflight[device][2] + sinks[device][0] / 1000 - t0, 3)
                    continue
                flying = inflight.get(device)
                if flying and flying[1] in flying[0].pending:
                    if time.monotonic() - flying[2] < REASK:
                        continue
                    flying[0].pending.pop(flying[1], None)
                sent_at = time.monotonic()
                pool, session = await self.offer(device, sinks[device])
                inflight[device] = (pool, session, sent_at)
            await asyncio.sleep(interval)
        return reached


async def _kill(args: argparse.Namespace, cameras: int, maxconn: int) -> dict[str, Any]:
    n = args.kill_nodes
    state = Path(args.state) / f"cluster-kill-{cameras}-{getattr(args, 'variant', 'after')}"
    tier = Tier(state, n, args)
    pools: list[ViewerPool] = []
    port = free_port()
    try:
        await tier.start(port)
        await _front_on(tier, maxconn, port)
        assert tier.haproxy is not None and tier.redis is not None
        others = [f"node{i + 1}" for i in range(1, n)]
        for name in others:
            await tier.haproxy.command(f"set server rendezvous/{name} state maint")
        await tier.haproxy.until({name: "MAINT" for name in others})
        await tier.cameras(cameras, reconnect=True)
        devices, ramp = await _grow(tier, cameras)
        where = await _placement(tier, devices)
        on_victim = [d for d, node in where.items() if node == "node1"]
        if len(on_victim) != cameras:
            raise SystemExit(f"bench: {cameras - len(on_victim)} cameras missed node1")
        for name in others:
            await tier.haproxy.command(f"set server rendezvous/{name} state ready")
        await tier.haproxy.until({name: "UP" for name in others})
        per_pool = max(1, math.ceil(args.viewers / (n - 1)))
        for node in tier.nodes[1:]:
            pools.append(ViewerPool(node.url, per_pool, args.per_address))
            await pools[-1].open()
        prober = Prober(pools)
        sample = random.Random(args.seed).sample(on_victim, min(args.probe_sample,
                                                                len(on_victim)))
        gc.collect()
        gc.freeze()
        await asyncio.sleep(args.settle)
        victim = tier.nodes[0]
        load = MachineLoad()
        profilers = _Profilers(tier, state / "profile", args.profile_seconds) \
            if args.profile else None
        killed_wall = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await victim.proc.wait()
        c0 = tier.cpu()  # the survivors' (a dead process has no CPU to read)
        each0 = tier.cpu_each()
        busy_samples: list[float] = []
        sampler = asyncio.create_task(_machine_cores(busy_samples))
        if profilers is not None:
            await profilers.start()
        reached = await prober.until_reached(sample, killed, args.recover_timeout,
                                             args.probe_interval)
        # Every camera's own account: lost, then registered again.
        back: dict[str, float] = {}
        lost: dict[str, float] = {}
        attempts: list[int] = []
        while time.monotonic() < killed + args.recover_timeout:
            back.clear()
            attempts.clear()
            for w in tier.workers:
                reply = await w.command({"cmd": "rehomed"}, 60)
                for device, at in reply["lost"]:
                    lost.setdefault(device, round(at - killed, 3))
                for device, at, tries in reply["back"]:
                    back[device] = round(at - killed, 3)
                    attempts.append(tries)
            if len(back) >= cameras:
                break
            await asyncio.sleep(0.5)
        recovery_window = time.monotonic() - killed
        cpu = rates_of(c0, tier.cpu(), recovery_window)
        busy = load.cores()
        cpu["other"] = round(max(0.0, busy - sum(cpu.values())), 2)
        each1 = tier.cpu_each()
        cpu_each = {k: round((each1[k] - each0[k]) / recovery_window, 3) for k in each1}
        cpu_each["machine (all processes)"] = round(busy, 3)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        profile = await profilers.finish() if profilers is not None else None
        probe_errors = {k: v for p in pools for k, v in p.errors.items()}
        probe_verified = sum(p.verified for p in pools)
        # After re-homing: who holds each victim now, and one offer to each.
        holders = await tier.redis.holders(on_victim)
        check = await _check_all(prober, on_victim, args.verify_rate)
        health = [await healthz(node.url) for node in tier.nodes[1:]]
        camera_side = [await w.command({"cmd": "stats"}, 60) for w in tier.workers]
        events = log_events(tier.state)
    finally:
        for pool in pools:
            await pool.close()
        await tier.stop()
        gc.unfreeze()
    landed: dict[str, int] = {}
    for node in holders.values():
        landed[str(node)] = landed.get(str(node), 0) + 1
    reached_times = sorted(reached.values())
    back_times = sorted(back.values())
    return {
        "nodes": n, "cameras": cameras, "ramp": ramp,
        "variant": getattr(args, "variant", "after"), "tls_resume": args.tls_resume,
        "ssl_buffer_kib": args.ssl_buffer or 256,
        "victim_cameras": len(on_victim), "probe_sample": len(sample),
        "probe_interval": args.probe_interval,
        "lost_s": summary(sorted(lost.values())) if lost else None,
        "lost_count": len(lost),
        "registered_again": len(back_times),
        "registered_again_s": _quantiles(back_times, cameras),
        "attempts": summary([float(a) for a in attempts]) if attempts else None,
        "reachable": len(reached_times),
        "reachable_s": _quantiles(reached_times, len(sample)),
        "reachable_percent_s": percent_times(reached_times, len(sample)),
        "registered_percent_s": percent_times(back_times, cameras),
        "probe_offers": prober.sent, "probe_answers_verified": probe_verified,
        "probe_errors": probe_errors,
        "recovery_cpu": cpu, "recovery_window_s": round(recovery_window, 1),
        "recovery_cpu_each": cpu_each, "profile": profile,
        "machine_cores_per_half_second": machine_summary(busy_samples),
        "haproxy_after_kill": _haproxy_requests(state / "haproxy.log", killed_wall),
        "cameras_loop_max": [_worst_iterations(w.loop_log, killed, killed + recovery_window)
                             for w in tier.workers],
        "nodes_loop_max": [node.longest_pause(killed, killed + recovery_window)
                           for node in tier.nodes[1:]],
        "nodes_longest_iteration": [node.longest_iteration(killed, killed + recovery_window)
                                    for node in tier.nodes[1:]],
        "holders_after": landed,
        "still_on_victim": sum(1 for node in holders.values() if node == "node1"),
        "check": check, "health_after": health, "camera_side": camera_side,
        "node_events": events,
    }


async def _machine_cores(out: list[float], every: float = 0.5) -> None:
    """Every ``every`` s until cancelled: the cores the whole machine used since the
    last sample."""
    while True:
        load = MachineLoad()
        await asyncio.sleep(every)
        out.append(round(load.cores(), 2))


def machine_summary(samples: list[float]) -> dict[str, float] | None:
    """What is stored of the machine's busy cores per half second while re-homing."""
    return summary(samples) if samples else None


def percent_times(times: list[float], total: int) -> list[float]:
    """What is stored of a re-home timeline (sorted seconds after the kill, one per
    camera): item k-1 is when k% of ``total`` were done, for the percents reached.
    The plot draws it as the cumulative curve, 1% a step."""
    out = []
    for pct in range(1, 101):
        need = max(1, -(-pct * total // 100))
        if need > len(times):
            break
        out.append(times[need - 1])
    return out


def _worst_iterations(path: Path | None, since: float, until: float) -> dict[str, float]:
    """A camera worker's longest loop iteration in a window (its loop probe's)."""
    _at, wall, cpu, runq = max(loop_probe.read(path, since, until).iterations,
                               key=lambda it: it[1], default=(0.0, 0.0, 0.0, 0.0))
    return {"wall_ms": wall, "cpu_ms": cpu, "runq_ms": runq}


def _haproxy_requests(log: Path, since_wall: float) -> dict[str, Any]:
    """The cameras' WebSocket requests HAProxy accepted after ``since_wall`` (its httplog,
    written as each tunnel closes: all of them by the end): which server took them,
    status, connect time and retries (``+N``: redispatched to another server)."""
    import datetime

    servers: dict[str, int] = {}
    statuses: dict[str, int] = {}
    retried = redispatched = 0
    connect_ms: list[float] = []
    wait_ms: list[float] = []
    pattern = re.compile(r"\[(\d+/\w+/\d+:\d+:\d+:\d+\.\d+)\] \S+ rendezvous/(\S+) "
                         r"(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+) (\d+) .* "
                         r"\d+/\d+/\d+/\d+/(\+?\d+) .*\"GET /ws/camera")
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if not m:
                continue
            at = datetime.datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S.%f")
            if at.timestamp() < since_wall - 0.001:  # HAProxy logs local time
                continue
            servers[m.group(2)] = servers.get(m.group(2), 0) + 1
            statuses[m.group(8)] = statuses.get(m.group(8), 0) + 1
            if int(m.group(4)) >= 0:
                wait_ms.append(float(m.group(4)))
            if int(m.group(5)) >= 0:
                connect_ms.append(float(m.group(5)))
            retries = m.group(9)
            retried += retries.lstrip("+") != "0"
            redispatched += retries.startswith("+")
    return {"requests": sum(servers.values()), "servers": servers, "statuses": statuses,
            "retried": retried, "redispatched": redispatched,
            "connect_ms": summary(connect_ms) if connect_ms else None,
            "queue_ms": summary(wait_ms) if wait_ms else None}


class _Profilers:
    """py-spy on a survivor and on camera worker 0, perf on HAProxy, for ``seconds``."""

    def __init__(self, tier: Tier, where: Path, seconds: float) -> None:
        self.tier = tier
        self.where = where
        self.seconds = seconds
        self.procs: list[tuple[str, Path, asyncio.subprocess.Process]] = []

    async def start(self) -> None:
        import shutil

        self.where.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
        targets = [("node2", self.tier.nodes[1].proc.pid),
                   ("camera worker 0", self.tier.workers[0].proc.pid)]
        for name, pid in targets:
            out = self.where / f"{name.replace(' ', '-')}.txt"
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(math.ceil(self.seconds)),
                "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            self.procs.append((name, out, proc))
        perf = shutil.which("perf")
        if perf and self.tier.haproxy is not None:
            out = self.where / "haproxy.perf"
            proc = await asyncio.create_subprocess_exec(
                perf, "record", "-F", "499", "-g", "-o", str(out), "-p",
                str(self.tier.haproxy.proc.pid), "--", "sleep", str(self.seconds),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            self.procs.append(("haproxy", out, proc))

    async def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.seconds}
        for name, path, proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), self.seconds + 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if name == "haproxy":
                out[name] = await _perf_top(path)
            else:
                out[name] = _collapsed_top(path)
        return out


def _collapsed_top(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's collapsed stacks: the share of samples in each function (self, and
    anywhere on the stack)."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [re.sub(r" \((?:.*/)?([^/]+?)(?::\d+)?\)$", r" (\1)", f)
                      for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                anywhere[f] = anywhere.get(f, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in
                sorted(d.items(), key=lambda kv: -kv[1])[:top]] if total else []

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(anywhere)}


async def _perf_top(path: Path, top: int = 15) -> dict[str, Any]:
    """``perf report``'s self shares by symbol (and by library) for HAProxy."""
    out: dict[str, Any] = {}
    for key, sort in (("symbols", "sym"), ("libraries", "dso")):
        proc = await asyncio.create_subprocess_exec(
            "perf", "report", "-i", str(path), "--stdio", "--no-children", "--sort", sort,
            "-g", "none", "--percent-limit", "0.5", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        text, _ = await asyncio.wait_for(proc.communicate(), 120)
        rows = []
        for line in text.decode(errors="replace").splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.*)$", line)
            if m:
                rows.append((m.group(2).strip()[:80], float(m.group(1))))
        out[key] = rows[:top]
    return out


def _quantiles(times: list[float], total: int) -> dict[str, float | None]:
    """Seconds until 50/95/100 % of ``total`` were done (None: never got there)."""
    out: dict[str, float | None] = {}
    for label, q in (("p50", 0.5), ("p95", 0.95), ("all", 1.0)):
        need = max(1, math.ceil(q * total))
        out[label] = times[need - 1] if len(times) >= need else None
    return out


async def _check_all(prober: Prober, devices: list[str], rate: float) -> dict[str, Any]:
    """One offer to every device, paced: answered (signature checked against the device
    ID offered) or not; the unanswered get a second offer, once."""
    rate = min(rate, 6.0 * len(prober.links))  # well under each viewer's 20 messages/s
    for pool in prober.pools:
        pool.pending.clear()  # the probes' leftovers
        pool.errors.clear()
        pool.verified = 0
    sinks: dict[str, list[float]] = {d: [] for d in devices}
    await _paced(prober, devices, sinks, rate)
    first = [d for d in devices if sinks[d]]
    errors: dict[str, int] = {}
    for pool in prober.pools:
        for k, v in pool.errors.items():
            errors[k] = errors.get(k, 0) + v
        pool.errors.clear()
    again = [d for d in devices if not sinks[d]]
    if again:
        await _paced(prober, again, sinks, rate)
    second_errors: dict[str, int] = {}
    for pool in prober.pools:
        for k, v in pool.errors.items():
            second_errors[k] = second_errors.get(k, 0) + v
    rtt = [sinks[d][0] for d in first]
    verified = sum(p.verified for p in prober.pools)
    misrouted = errors.get("answer signature does not verify", 0) + second_errors.get(
        "answer signature does not verify", 0)
    return {"offered": len(devices), "answered": len(first), "errors": errors,
            "second_offers": len(again), "second_answered": sum(1 for d in again if sinks[d]),
            "second_errors": second_errors,
            "verified": verified, "misrouted": misrouted, "rate": rate,
            "rtt": summary(rtt) if rtt else None}


async def _paced(prober: Prober, devices: list[str], sinks: dict[str, list[float]],
                 rate: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, device in enumerate(devices):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await prober.offer(device, sinks[device])
    deadline = loop.time() + DRAIN_SECONDS
    while loop.time() < deadline and any(p.pending for p in prober.pools):
        await asyncio.sleep(0.05)
    for pool in prober.pools:
        pool.pending.clear()


# -- reporting -------------------------------------------------------------------------


def _step_at(row: dict[str, Any], rate: float) -> dict[str, Any] | None:
    return next((s for s in row["steps"] if s["rate"] == rate), None)


def headline(result: dict[str, Any]) -> str:
    parts = []
    for row in result["topologies"]:
        s = _step_at(row, 200.0) or row["steps"][-1]
        r = s["rtt"] or {}
        parts.append(f"{row['label']}: p50 {r.get('p50')} / p99 {r.get('p99')} ms at "
                     f"{s['rate']:g}/s")
    for kill in result.get("kills", []):
        parts.append(f"node killed with {kill['victim_cameras']} cameras: 95% registered "
                     f"again in {kill['registered_again_s']['p95']} s, all in "
                     f"{kill['registered_again_s']['all']} s, misrouted "
                     f"{kill['check']['misrouted']}")
    return "cluster: " + "; ".join(parts)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for i, (row, marker) in enumerate(zip(result["topologies"], "os^D", strict=False)):
        steps = [s for s in row["steps"] if s["rtt"]]
        rates = [s["rate"] for s in steps]
        left.plot(rates, [s["rtt"]["p50"] for s in steps], marker + "-", color=f"C{i}",
                  label=f"{row['label']} p50")
        left.plot(rates, [s["rtt"]["p99"] for s in steps], marker + ":", color=f"C{i}",
                  mfc="none", label=f"{row['label']} p99")
    left.set_xscale("log")
    left.set_yscale("log")
    rates = result["rates"]
    left.set_xticks(rates, [f"{r:g}" for r in rates])
    left.minorticks_off()
    left.set_xlabel("session starts per second")
    left.set_ylabel("offer → answer (ms)")
    left.set_title("viewer and camera on different nodes", fontsize=9)
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    kills = result.get("kills", [])
    for i, kill in enumerate(kills):
        n = kill["victim_cameras"]
        curves = [("registered_percent_s", "-", "registered again"),
                  ("reachable_percent_s", ":", "offer answered (sample)")]
        for key, style, what in curves[:1 if len(kills) > 2 else 2]:
            times = kill[key]
            if times:
                right.step([0.0, *times], range(len(times) + 1),
                           style, color=f"C{i}", where="post",
                           label=f"{n}, {kill.get('run', '')} {kill.get('variant', '')}: {what}")
    if kills:
        right.axhline(95, color="gray", ls=":", lw=0.8)
        right.set_xlabel("seconds after SIGKILL")
        right.set_ylabel("% of the killed node's cameras")
        right.set_title("a node killed behind HAProxy", fontsize=9)
        right.grid(alpha=0.3)
        right.legend(fontsize=6 if len(kills) > 2 else 7, loc="lower right")
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "cluster.png", dpi=100)
    plt.close(fig)
    return ["cluster.png"]


def _cpu_ms_per_start(step: dict[str, Any]) -> str:
    done = step["achieved_rate"] or step["rate"]
    return f"{1000 * step['cpu']['nodes'] / done:.2f}" if done else "–"


def markdown(result: dict[str, Any]) -> list[str]:
    cams = result["cameras"]
    lines = [
        "## Rendezvous nodes on Redis behind HAProxy",
        "",
        *[line for note in result.get("notes", []) for line in (note, "")],
        f"Real processes on one machine: `redis-server` ({result['redis'].split()[2]}), "
        f"`peercam rendezvous` nodes with `--redis-url`, and {result['haproxy'].split(' - ')[0]} "
        "running the configuration of docs/operations.md (TLS termination, `leastconn`, "
        "`/healthz` checks; addresses, certificate and `maxconn` replaced, one `server` "
        "line per node, an admin stats socket added). Signaling only: no WebRTC and no "
        "media, so there is no bitrate here; what is timed is the rendezvous tier. "
        f"{cams} simulated cameras (real P-256 keys and signed registration, answering "
        "every offer at once with a signed answer) connect through HAProxy over TLS; "
        "not 10k, because HAProxy holds two descriptors per connection and this "
        f"machine's RLIMIT_NOFILE hard limit is {result['nofile']} per process (raising "
        f"it is refused, even as root): `maxconn {result['haproxy_maxconn']}`, a margin "
        "kept for reconnects that overlap the closing connections. Nodes run with per-IP "
        "limits raised (every camera arrives from HAProxy's address), logging at "
        f"{result['log_level']}.",
        "",
        "**Session starts across nodes.** Each topology is started fresh; the cameras "
        "register through HAProxy and the node each landed on is read from its presence "
        "key in Redis (and each node's own count, on `/healthz`, agrees). "
        f"{result['viewers']} viewer WebSockets, split over the nodes, connect "
        "to the nodes directly, and every offer (open loop, Poisson arrivals, "
        f"{result['step_seconds']:g} s per rate, {result['sdp_bytes']} B SDP) goes to a "
        "random camera on another node: viewer → node A → Redis pub/sub → node B → HAProxy "
        "→ camera, and the signed answer back the same way. The single process (no "
        "Redis: the embedded default) runs behind the same HAProxy, viewers connected "
        "to it directly.",
        "",
        "| topology | cameras per node | starts/s | answered | p50 ms | p99 ms | max ms | errors "
        "| node CPU ms per start | CPU (cores): nodes / Redis / HAProxy / clients "
        "| other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["topologies"]:
        per = " / ".join(str(v) for v in row["per_node"].values())
        for s in row["steps"]:
            r = s["rtt"] or {}
            c = s["cpu"]
            errs = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
            lines.append(f"| {row['label']} | {per} | {s['rate']:g} | {s['answered']}/{s['sent']}"
                         f" | {r.get('p50')} | {r.get('p99')} | {r.get('max')} | {errs} | "
                         f"{_cpu_ms_per_start(s)} | "
                         f"{c['nodes']:.2f} / {c['redis']:.2f} / {c['haproxy']:.2f} / "
                         f"{c['cameras'] + c['viewers']:.2f} | {c['other']} |")
    single = next((r for r in result["topologies"] if r["nodes"] == 1), None)
    ratios = []
    for row in result["topologies"]:
        if single is None or row is single:
            continue
        for rate in result["rates"]:
            a, b = _step_at(single, rate), _step_at(row, rate)
            if a and b and a["rtt"] and b["rtt"]:
                ratios.append(f"{row['nodes']} nodes at {rate:g}/s: p50 "
                              f"{b['rtt']['p50'] / max(a['rtt']['p50'], 0.01):.1f}x, p99 "
                              f"{b['rtt']['p99'] / max(a['rtt']['p99'], 0.01):.1f}x")
    if ratios:
        lines += ["", "Against the single process in the same run: " + "; ".join(ratios) + "."]
    events = [f"{row['label']}: " + ", ".join(f"{k} × {v}" for k, v in row["node_events"].items())
              for row in result["topologies"] if row.get("node_events")]
    if events:
        lines += ["", "What the nodes logged about Redis during these runs (a node that "
                      "says \"redis unreachable\" turns cross-node routing off until its next "
                      "successful command): " + "; ".join(events) + "."]
    lines += ["", "| topology | registrations/s through HAProxy (CPU: clients / nodes / HAProxy) "
                  "| idle CPU: nodes / Redis / HAProxy (cores) | Redis used memory per 10k "
                  "cameras | Redis RSS per 10k | Redis idle CPU per 10k cameras |",
              "|---|---|---|---|---|---|"]
    for row in result["topologies"]:
        i = row["idle_cpu"]
        rc = row["ramp"]["cpu"]
        mem = row.get("redis_memory")
        lines.append(
            f"| {row['label']} | {row['ramp']['registrations_per_s']} ({rc['cameras']:.2f} / "
            f"{rc['nodes']:.2f} / {rc['haproxy']:.2f}) | "
            f"{i['nodes']:.3f} / {i['redis']:.3f} / {i['haproxy']:.3f} | "
            + (f"{mem['used_kib_per_10k'] / 1024:.2f} MiB | {mem['rss_kib_per_10k'] / 1024:.2f} "
               f"MiB | {100 * row['redis_idle_cpu_per_10k']:.2f}% of a core |"
               if mem else "– | – | – |"))
    lines += ["", f"Redis' memory is `used_memory` (and its RSS) with the {cams} cameras "
                  "registered, less the same with the nodes connected and no camera, scaled "
                  f"to 10k; its idle CPU is over {result['idle_seconds']:g} s with the "
                  "default 15 s lease (each node renews its keys every 5 s). Registrations "
                  "ran 200 handshakes at a time (TLS to HAProxy, then the signed `register`); "
                  "the simulated cameras' own CPU (TLS and signing in Python) is the largest "
                  "part of it."]
    kills = result.get("kills", [])
    if kills:
        k0 = kills[0]
        lines += [
            "",
            f"**A node killed.** {k0['nodes']} nodes on Redis behind HAProxy; all the cameras "
            "registered on one of them (the others held in maintenance at HAProxy during "
            "the ramp, then put back), then that node got SIGKILL. The cameras register "
            "again through HAProxy with the agent's backoff (full jitter, first wait ≤ 0.5 s, "
            "cap 1 s while refused); viewers on the survivors offer to a random sample of "
            f"{k0['probe_sample']} of them every {k0.get('probe_interval', 0.25):g} s until "
            "each answers (an `unavailable` "
            f"error names no session, so a probe not answered is asked again after {REASK:g} "
            f"s: the reachable times are coarse by up to {REASK:g} s). Seconds after the "
            "SIGKILL:",
            "",
            "| cameras on the killed node | simulated cameras | | 50% | 95% | 100% | CPU while "
            "re-homing: nodes / HAProxy / Redis / cameras / other (cores) |",
            "|---|---|---|---|---|---|---|",
        ]
        for kill in kills:
            reg, reach, c = kill["registered_again_s"], kill["reachable_s"], kill["recovery_cpu"]
            lines += [
                f"| {kill['victim_cameras']} | {_variant_label(kill)} | registered again (the "
                f"cameras' own clock) | {_s(reg['p50'])} | {_s(reg['p95'])} | {_s(reg['all'])} | "
                f"{c['nodes']:.2f} / {c['haproxy']:.2f} / {c.get('redis', 0.0):.2f} / "
                f"{c['cameras']:.2f} / {c['other']} |",
                f"| | | reachable: a viewer's offer answered ({kill['probe_sample']} sampled) | "
                f"{_s(reach['p50'])} | {_s(reach['p95'])} | {_s(reach['all'])} | |",
            ]
        lines.append("")
        lines += _kill_costs(kills)
        for kill in kills:
            chk = kill["check"]
            side: dict[str, int] = {}
            for w in kill["camera_side"]:
                for k, v in w["errors"].items():
                    side[k] = side.get(k, 0) + v
            replaced = side.get("replaced", 0)
            lines.append(
                f"With {kill['victim_cameras']} ({_variant_label(kill)}): "
                f"{kill['registered_again']} registered again "
                f"within {kill['recovery_window_s']} s and landed on "
                + ", ".join(f"{k}: {v}" for k, v in sorted(kill["holders_after"].items()))
                + f" (presence keys still naming the dead node: {kill['still_on_victim']}); "
                f"then one offer to each: {chk['answered']} of {chk['offered']} answered"
                + (f" ({chk['second_answered']} of the other {chk['second_offers']} on a second"
                   " offer)" if chk["second_offers"] else "")
                + f", every answer's signature checked against the device ID offered "
                f"({chk['verified']}), misrouted: {chk['misrouted']}"
                + (f"; {replaced} cameras were closed once as `replaced` after registering "
                   "again, and registered once more" if replaced else "")
                + ". The nodes logged: "
                + (", ".join(f"{k} × {v}" for k, v in kill.get("node_events", {}).items())
                   or "nothing about Redis")
                + ".")
            lines.append("")
    for failed in result.get("failed", []):
        events = ", ".join(f"{k} × {v}" for k, v in failed["events"].items()) or "nothing"
        lines += [f"**Not measured in this run: {failed['what']}.** "
                  f"{failed['why'].splitlines()[0]} (logged: {events}).", ""]
    lines += [
        "Left out: WebRTC and media (this is the signaling tier only), Redis AUTH and TLS "
        "(a local Redis without either), more than one machine (every process shares the "
        f"same {result.get('machine', {}).get('cores', '?')} cores: the load generator, "
        "HAProxy, Redis and the nodes compete for them, so absolute times are this "
        "machine's, and the ratios within one run are what to read), 10k cameras (HAProxy's "
        "descriptors stop it first), a Redis failure under load (the test suite covers "
        "it), and viewers reconnecting after the kill (they were on the survivors).",
        "",
        "![cluster: session starts and a node kill](bench/cluster.png)",
        "",
    ]
    return lines


def _variant_label(kill: dict[str, Any]) -> str:
    run = f"{kill['run']}: " if kill.get("run") else ""
    if kill.get("variant") == "before":
        return run + "as before: full TLS handshakes, 256 KiB buffers"
    if "variant" not in kill:
        return run + "full TLS handshakes"
    return run + (("TLS resumed" if kill.get("tls_resume") else "full TLS handshakes")
                  + f", {kill.get('ssl_buffer_kib', 256)} KiB buffers")


def _kill_costs(kills: list[dict[str, Any]]) -> list[str]:
    """Per kill: where the CPU went, per re-homed camera, and what HAProxy and the
    survivors' event loops saw (the kills measured with the per-process account)."""
    lines: list[str] = []
    rows = [k for k in kills if "recovery_cpu_each" in k]
    if not rows:
        return lines
    lines += ["| cameras | simulated cameras | machine busy (cores) | each process (cores) "
              "| CPU ms per re-homed camera: cameras / nodes / HAProxy / Redis "
              "| connection loss seen (p50 / p95) | TLS sessions resumed (ramp and re-home) "
              "| HAProxy: redispatched from the dead node, connect p99 "
              "| survivors' longest loop iteration |",
              "|---|---|---|---|---|---|---|---|---|"]
    for k in rows:
        each = k["recovery_cpu_each"]
        window = k["recovery_window_s"]
        n = max(1, k["registered_again"])

        def ms(*names: str, each: dict[str, float] = each, window: float = window,
               n: int = n) -> str:
            cores = sum(v for key, v in each.items() if key.startswith(names))
            return f"{1000 * cores * window / n:.2f}"

        procs = ", ".join(f"{key} {v:.2f}" for key, v in each.items()
                          if not key.startswith("machine"))
        hap = k.get("haproxy_after_kill") or {}
        lost = k.get("lost_s") or {}
        resumed = sum(int(w.get("tls_resumed", 0)) for w in k["camera_side"])
        longest = max((it for it in k.get("nodes_longest_iteration", []) if it),
                      key=lambda it: it["wall_ms"], default=None)
        if longest:
            kinds = "; ".join(f"{x['what']} ×{x['count']} {x['cpu_ms']:.1f} ms"
                              for x in longest["kinds"][:3])
            loop = (f"{longest['wall_ms']:.1f} ms ({longest['cpu_ms']:.1f} CPU): "
                    f"{longest['callbacks']} callbacks, {kinds}")
        else:
            loop = "none of 20 ms or more"
        lines.append(
            f"| {k['victim_cameras']} | {_variant_label(k)} | "
            f"{each.get('machine (all processes)', 0):.2f} | {procs} | "
            f"{ms('camera')} / {ms('node')} / {ms('haproxy')} / {ms('redis')} | "
            f"{lost.get('p50')} / {lost.get('p95')} s | {resumed} | "
            f"{hap.get('redispatched', '?')} of {hap.get('requests', '?')}, "
            f"{(hap.get('connect_ms') or {}).get('p99', '?')} ms | {loop} |")
    lines += ["", "CPU per re-homed camera is each process's CPU over the whole window "
                  "(SIGKILL to the last camera back) divided by the cameras registered again, "
                  "so the nodes' share includes their idle work and the probes' offers. "
                  "\"Connection loss seen\" is when the simulated camera's read ended; a "
                  "camera's reconnect waits a further 0-0.5 s (the agent's jitter) before "
                  "it starts. A loop iteration's callbacks are counted by kind (a task: its "
                  "coroutine) with their CPU.", ""]
    return lines


def _s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} s"
