"""Snapshots through the WHEP gateway on loopback: cold (a new session) and from its cache.

The camera runs in its own process (passthrough, the test pattern); the
rendezvous and the gateway run here. Each cold trial is a ``GET
/<camera>/snapshot.jpg`` after the gateway's cache ran out: a new viewer
session, the join IDR, one decode, one JPEG encode. Right after it, ``--hits``
GETs are served from the cache. Trials are a second apart so the camera's
keyframe limiter is not what gets measured. Targets: cold ≤ 500 ms, cached ≤ 20 ms.
What it leaves out: network latency (loopback), TLS, a Pi's slower decode.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import Camera, pin_loopback, pyplot, start_rendezvous, summary

NAME = "snapshot"
HELP = "snapshots through the WHEP gateway: cold (new session) and cached, loopback"
SMOKE = ["--trials", "2", "--hits", "3", "--width", "320", "--height", "240"]
NEEDS: list[str] = []

TARGET_COLD_MS = 500.0
TARGET_CACHED_MS = 20.0
CACHE_S = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=20, help="cold snapshots")
    p.add_argument("--hits", type=int, default=10, help="cached snapshots after each cold one")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from camera.client.signaling import SignalingLink, pair
    from camera.client.viewer import ViewerIdentity, parse_target
    from camera.client.whep import Gateway
    from camera.client.whep_config import CameraEntry, GatewayConfig
    from camera.config import ws_url

    pin_loopback()
    state = Path(args.state) / "snapshot"
    runner, url = await start_rendezvous()
    camera = await Camera(url, "passthrough", state / "camera", args.width,
                          args.height).started()
    identity = ViewerIdentity.load_or_create(state / "whep", "peercam WHEP gateway (bench)")
    token = "bench-token-" + "x" * 24
    config = GatewayConfig(state_dir=state / "whep", snapshot_cache=CACHE_S, rate=1000.0,
                           burst=10000.0,
                           cameras=(CameraEntry("bench", camera.device_id, url),))
    gateway = Gateway(config, [token], identity)
    cold: list[float] = []
    cached: list[float] = []
    sizes: list[int] = []
    try:
        await asyncio.sleep(1)
        base, device_id, secret = parse_target(camera.link(url, pair=True), None)
        link = SignalingLink(ws_url(base, "/ws/viewer"))
        await link.open()
        try:
            assert secret is not None
            await pair(link, device_id, secret, identity.key, identity.private_key,
                       identity.name, 15)
        finally:
            await link.close()
        port = await gateway.start("127.0.0.1", 0)
        shot = f"http://127.0.0.1:{port}/bench/snapshot.jpg?token={token}"
        async with aiohttp.ClientSession() as http:
            await get(http, shot)  # the gateway's link to the rendezvous, untimed
            for _ in range(args.trials):
                await asyncio.sleep(1.0)
                ms, how, size = await get(http, shot)
                if how != "miss":
                    raise SystemExit(f"bench: a cold trial was served as {how!r}")
                cold.append(ms)
                sizes.append(size)
                for _ in range(args.hits):
                    ms, how, _size = await get(http, shot)
                    if how == "hit":
                        cached.append(ms)
        sessions = gateway.snapshot_sessions()
    finally:
        await gateway.close()
        camera.stop()
        await runner.cleanup()
    return {"video": f"{args.width}x{args.height}@30", "cache_s": CACHE_S,
            "cold_ms": cold, "cached_ms": cached, "jpeg_bytes": sizes,
            "sessions_opened": sessions, "cold": summary(cold),
            "cached": summary(cached) if cached else None}


async def get(http: Any, url: str) -> tuple[float, str, int]:
    started = time.perf_counter()
    async with http.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise SystemExit(f"bench: snapshot failed: {response.status} {body[:200]!r}")
        how = response.headers.get("X-Snapshot-Source", "?")
    return (time.perf_counter() - started) * 1000, how, len(body)


def headline(result: dict[str, Any]) -> str:
    cached = result["cached"]["p50"] if result.get("cached") else "n/a"
    return (f"snapshot: cold p50 {result['cold']['p50']} ms (p95 {result['cold']['p95']}), "
            f"cached p50 {cached} ms, {result['video']}, loopback")


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    data = [result["cold_ms"]] + ([result["cached_ms"]] if result["cached_ms"] else [])
    labels = ["cold (new session)"] + (["cached"] if result["cached_ms"] else [])
    ax.boxplot(data, tick_labels=labels, orientation="horizontal")
    ax.axvline(TARGET_COLD_MS, color="#999933", linestyle="--", label="cold target")
    ax.set_xscale("log")
    ax.set_xlabel("GET /<camera>/snapshot.jpg (ms), loopback")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "snapshot.png", dpi=100)
    plt.close(fig)
    return ["snapshot.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    cold, cached = result["cold"], result.get("cached")
    size = sorted(result["jpeg_bytes"])[len(result["jpeg_bytes"]) // 2]
    return [
        f"## Snapshots through the WHEP gateway (loopback, {result['video']})",
        "",
        "`GET /<camera>/snapshot.jpg` end to end over HTTP. Cold: the gateway's cache "
        f"({result['cache_s']} s) ran out, so a new viewer session opens, the camera's join "
        "IDR is decoded and encoded as JPEG. Cached: the same picture again from memory. "
        f"Median JPEG {size} bytes; {result['sessions_opened']} sessions opened.",
        "",
        "| snapshot | target | n | p50 ms | p95 ms | max |",
        "|---|---|---|---|---|---|",
        f"| cold | ≤ {TARGET_COLD_MS:.0f} ms | {cold['n']} | {cold['p50']} | {cold['p95']} | "
        f"{cold['max']} |",
        (f"| cached | ≤ {TARGET_CACHED_MS:.0f} ms | {cached['n']} | {cached['p50']} | "
         f"{cached['p95']} | {cached['max']} |") if cached else "| cached | – | 0 | – | – | – |",
        "",
        "![snapshot](bench/snapshot.png)",
        "",
    ]
