"""Reconnect storm: a fleet of cameras comes back after the rendezvous restarts.

The rendezvous runs as shipped (``python -m camera.cli rendezvous``) in its own
process on a fixed loopback port. ``--cameras`` simulated cameras in this
process each run the camera agent's own rendezvous link
(:class:`camera.link.RendezvousLink`: the real handshake with its own P-256 key,
its real backoff with full jitter, its short cap while the server refuses), each
from a loopback source address shared by at most ``--per-address`` cameras (the
server admits 40 connections per address in a burst and 16 upgrades in flight,
as real cameras come from many addresses). Once every camera is registered,
the server is killed (SIGKILL: no goodbye), stays down ``--down`` seconds (its port refuses), and is
started again on the same port. Measured: for each camera, the time from the
server listening again to that camera being registered again; how the
reconnects spread over time. Then every camera is checked for misrouting: a
viewer message addressed to each device ID must reach that camera's link and no
other.

Targets: 95% of the cameras back within 10 s, all within 20 s, none misrouted.
What it leaves out: real network latency (loopback), TLS, and the server's
memory (see ``scale``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, percentile, pyplot
from bench.scale_cameras import CAMERA_NET, VIEWER_NET, raise_nofile, source_address

NAME = "storm"
HELP = "reconnect storm: a fleet of cameras back after a rendezvous restart"
SMOKE = ["--cameras", "40", "--down", "2"]
NEEDS: list[str] = []

TARGET_P95_S = 10.0
TARGET_MAX_S = 20.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, default=1000, help="simulated cameras")
    p.add_argument("--down", type=float, default=5.0,
                   help="seconds the rendezvous stays down (its port refuses)")
    p.add_argument("--per-address", type=int, default=10,
                   help="cameras per loopback source address")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="give up waiting for the fleet after this long")
    p.add_argument("--log-level", default="WARNING", help="the rendezvous' log level")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_server(port: int, log: Path, level: str) -> asyncio.subprocess.Process:
    with log.open("a") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "camera.cli", "rendezvous", "--listen", f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT,
            env={**os.environ, "PEERCAM_LOG_LEVEL": level})
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    if not line.startswith("LISTENING"):
        proc.kill()
        raise SystemExit(f"bench: the rendezvous did not start ({line!r}); see {log}")
    return proc


class Fleet:
    """The simulated cameras: one RendezvousLink each, and what each one heard."""

    def __init__(self, url: str, count: int, per_address: int, state: Path) -> None:
        import aiohttp

        from camera.acl import PairingWindows, ViewerACL
        from camera.config import CameraConfig
        from camera.gatekeeper import Gatekeeper
        from camera.identity import DeviceIdentity
        from camera.link import RendezvousLink

        config = CameraConfig(rendezvous=url, state_dir=state)
        acl, pairing = ViewerACL(state), PairingWindows(state)
        self.links: list[RendezvousLink] = []
        self.heard: list[list[str]] = []
        self.registered_at: list[float | None] = [None] * count
        self.ids: list[str] = []
        for k in range(count):
            address = source_address(CAMERA_NET, k // per_address)

            def http(address: str = address) -> aiohttp.ClientSession:
                connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
                return aiohttp.ClientSession(connector=connector)

            heard: list[str] = []
            gatekeeper = Gatekeeper(DeviceIdentity.generate(), acl, pairing)
            link = RendezvousLink(
                config, gatekeeper, lambda servers: None,
                lambda data, heard=heard: heard.append(_session_of(data)),
                on_change=lambda k=k: self._changed(k), http=http)
            self.links.append(link)
            self.heard.append(heard)
            self.ids.append(gatekeeper.device_id)

    def _changed(self, k: int) -> None:
        if self.links[k].registered.is_set():
            self.registered_at[k] = time.monotonic()

    def start(self) -> None:
        for link in self.links:
            link.start()

    def count_registered(self) -> int:
        return sum(link.registered.is_set() for link in self.links)

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)


def _session_of(data: str | bytes) -> str:
    """The session of a routed ``pair`` (the check's message; the bye the rendezvous
    sends when the checking viewer leaves is not a second delivery)."""
    try:
        message = json.loads(data)
        return str(message.get("session_id", "")) if message.get("type") == "pair" else ""
    except (ValueError, AttributeError):
        return ""


async def until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


async def misrouted(url: str, fleet: Fleet) -> dict[str, int]:
    """Send one message per camera through the rendezvous; count where each one lands."""
    import aiohttp

    sent: dict[str, int] = {}
    per_viewer = 30  # inside a viewer connection's burst of 40 messages
    for start in range(0, len(fleet.ids), per_viewer):
        address = source_address(VIEWER_NET, start // per_viewer)
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.ws_connect(url + "/ws/viewer") as ws:
            await ws.receive(timeout=10)  # hello
            for k in range(start, min(start + per_viewer, len(fleet.ids))):
                session_id = secrets.token_urlsafe(18)
                sent[session_id] = k
                await ws.send_str(json.dumps({
                    "type": "pair", "device_id": fleet.ids[k], "session_id": session_id,
                    "viewer_key": "A" * 122, "name": "storm check",
                    "timestamp": int(time.time() * 1000), "signature": "A" * 86,
                    "proof": "A" * 43}))
            await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    right = wrong = 0
    for k, heard in enumerate(fleet.heard):
        for session_id in heard:
            if session_id in sent:
                right += sent[session_id] == k
                wrong += sent[session_id] != k
    return {"sent": len(sent), "delivered_right": right, "delivered_wrong": wrong,
            "lost": len(sent) - right - wrong}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    from camera.link import REFUSED_CAP

    logging.getLogger("camera.link").setLevel(logging.ERROR)  # 1000 cameras x each retry
    raise_nofile()
    state = Path(args.state) / "storm"
    state.mkdir(parents=True, exist_ok=True)
    log = state / "rendezvous.log"
    log.write_text("")
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    server = await start_server(port, log, args.log_level)
    fleet = Fleet(url, args.cameras, args.per_address, state)
    try:
        started = time.monotonic()
        fleet.start()
        if not await until(lambda: fleet.count_registered() == args.cameras, args.timeout):
            raise SystemExit(f"bench: only {fleet.count_registered()} of {args.cameras} "
                             "cameras registered at the start")
        first_up = time.monotonic() - started
        server.send_signal(signal.SIGKILL)
        await server.wait()
        killed = time.monotonic()
        await until(lambda: fleet.count_registered() == 0, 10)
        await asyncio.sleep(max(0.0, args.down - (time.monotonic() - killed)))
        fleet.registered_at = [None] * args.cameras
        attempts_before = sum(link.reconnects for link in fleet.links)
        server = await start_server(port, log, args.log_level)
        listening = time.monotonic()
        await until(lambda: fleet.count_registered() == args.cameras, args.timeout)
        back = sorted(t - listening for t in fleet.registered_at if t is not None)
        attempts = sum(link.reconnects for link in fleet.links) - attempts_before
        routing = await misrouted(url, fleet)
    finally:
        await fleet.close()
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait(), 20)
    missing = args.cameras - len(back)
    return {
        "cameras": args.cameras,
        "down_s": args.down,
        "per_address": args.per_address,
        "first_registration_s": round(first_up, 2),
        "back_s": [round(t, 3) for t in back],
        "refused_cap_s": REFUSED_CAP,
        "p50_s": round(percentile(back, 0.5), 3) if back else None,
        "p95_s": round(percentile(back, 0.95), 3) if back else None,
        "max_s": round(back[-1], 3) if back else None,
        "not_back": missing,
        "attempts_after_listen_and_during_outage": attempts,
        "routing": routing,
    }


def headline(result: dict[str, Any]) -> str:
    return (f"storm: {result['cameras']} cameras back after a rendezvous restart: "
            f"p50 {result['p50_s']} s, p95 {result['p95_s']} s, all {result['max_s']} s "
            f"({result['not_back']} not back); misrouted "
            f"{result['routing']['delivered_wrong']} of {result['routing']['sent']}")


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    back = result["back_s"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if back:
        ax.hist(back, bins=40, color="#4477aa")
        ax2 = ax.twinx()
        ax2.plot(back, [100 * (i + 1) / len(back) for i in range(len(back))], color="#cc6677")
        ax2.set_ylabel("% registered again")
        ax2.set_ylim(0, 105)
    ax.axvline(TARGET_P95_S, color="#999933", linestyle="--", label="95% target")
    ax.set_xlabel("seconds after the rendezvous listened again")
    ax.set_ylabel("cameras")
    ax.set_title(f"{result['cameras']} cameras, server down {result['down_s']} s")
    fig.tight_layout()
    name = "storm.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def markdown(result: dict[str, Any]) -> list[str]:
    routing = result["routing"]
    return [
        "## Reconnect storm after a rendezvous restart",
        "",
        f"{result['cameras']} simulated cameras in one process, each running the camera "
        "agent's own rendezvous link (real P-256 registration, full-jitter backoff, the "
        f"short cap of {result.get('refused_cap_s', '?')} s after a dropped registration "
        "and while the server refuses), from loopback source addresses "
        f"({result['per_address']} per address). The rendezvous (as shipped, its own "
        f"process) was killed with SIGKILL, stayed down {result['down_s']} s, and was "
        "started again on the same port. Loopback: no network latency, no TLS; the "
        "machine was shared with other work. Misrouted counts the routed `pair` each "
        "camera heard (the rendezvous' bye when the checking viewer left is not a "
        "second delivery).",
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        f"| cameras back, p50 | – | {result['p50_s']} s |",
        f"| cameras back, p95 | ≤ {TARGET_P95_S:.0f} s | {result['p95_s']} s |",
        f"| cameras back, all | ≤ {TARGET_MAX_S:.0f} s | {result['max_s']} s "
        f"({result['not_back']} not back) |",
        f"| misrouted (a message for each device ID, checked at each camera) | 0 | "
        f"{routing['delivered_wrong']} of {routing['sent']} ({routing['lost']} lost) |",
        "",
        "![storm](bench/storm.png)",
        "",
    ]
