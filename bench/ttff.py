"""Time to first frame on loopback: the CLI viewer and headless Chromium.

From the viewer starting its connection to the first decoded frame; the camera
sends an IDR when a viewer joins. Trials are a second apart so the keyframe
limiter (2/s, burst 2) is not what gets measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.common import CHROMIUM, ROOT, Camera, need_executable, pin_loopback, pyplot, summary

NAME = "ttff"
HELP = "time to first frame, CLI viewer and Chromium, loopback"
SMOKE = ["--trials", "1", "--width", "320", "--height", "240"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--no-chromium", action="store_true", help="CLI viewer only")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.no_chromium:
        need_executable(CHROMIUM, "scripts/setup --test installs it")
    pin_loopback()
    from bench.common import start_rendezvous
    from camera.client.viewer import view

    runner, url = await start_rendezvous()
    camera = await Camera(url, "passthrough", Path(args.state) / "ttff", args.width,
                          args.height).started()
    link = camera.link(url)
    browser: list[float] = []
    timelines: list[dict[str, float]] = []
    try:
        await asyncio.sleep(1)
        await view(camera.link(url, pair=True), seconds=0.2)  # pair this CLI key, untimed
        cli: list[float] = []
        for _ in range(args.trials):
            await asyncio.sleep(1.0)
            stats = await view(link, seconds=0.3)
            if stats.ttff_ms is None:
                raise SystemExit("bench: a CLI viewer got no frame")
            cli.append(stats.ttff_ms)
        if not args.no_chromium:
            # Each trial is a fresh browser profile: it pairs from the link (not timed:
            # the page's clock starts at the offer's preparation, after pairing).
            browser, timelines = await chromium_ttff(camera.link(url, pair=True), args.trials)
    finally:
        camera.stop()
        await runner.cleanup()
    phases = {name: round(statistics.median(t[name] for t in timelines if name in t), 1)
              for name in ("offer", "answer", "connected", "firstFrame")
              if any(name in t for t in timelines)}
    return {"video": f"{args.width}x{args.height}@30 2 Mbit/s", "cli_ms": cli,
            "chromium_ms": browser, "chromium_timelines": timelines,
            "chromium_phases_p50": phases, "cli": summary(cli),
            "chromium": summary(browser) if browser else None}


async def chromium_ttff(link: str, trials: int) -> tuple[list[float], list[dict[str, float]]]:
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT))
    from tests.browser.conftest import CHROMIUM_ARGS

    out: list[float] = []
    timelines: list[dict[str, float]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(trials):
            await asyncio.sleep(1.0)
            context = await browser.new_context(bypass_csp=True)  # wait_for_function uses eval
            page = await context.new_page()
            await page.goto(link)
            await page.wait_for_function("window.peercam && window.peercam.ttffMs > 0",
                                         timeout=20_000)
            out.append(float(await page.evaluate("window.peercam.ttffMs")))
            timelines.append(await page.evaluate("({...window.peercam.timeline})"))
            await context.close()
        await browser.close()
    return out, timelines


def headline(result: dict[str, Any]) -> str:
    chromium = result["chromium"]["p50"] if result.get("chromium") else "n/a"
    return f"ttff: CLI p50 {result['cli']['p50']} ms; Chromium p50 {chromium} ms (loopback)"


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [result["cli_ms"]] + ([result["chromium_ms"]] if result["chromium_ms"] else [])
    labels = ["CLI viewer"] + (["Chromium"] if result["chromium_ms"] else [])
    ax.boxplot(data, tick_labels=labels, orientation="horizontal")
    ax.set_xlabel("time to first decoded frame (ms), loopback")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ttff.png", dpi=100)
    plt.close(fig)
    return ["ttff.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"## Time to first frame (loopback, {result['video']})",
        "",
        "From the viewer starting its peer connection to the first decoded frame;",
        "the camera sends an IDR when a viewer joins. Target: p50 ≤ 150 ms direct.",
        "",
        "| viewer | trials | p50 ms | p95 ms | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("cli", "CLI (`peercam view`)"), ("chromium", "Chromium (web viewer)")):
        s = result.get(key)
        if s:
            lines.append(f"| {label} | {s['n']} | {s['p50']} | {s['p95']} | {s['min']} | "
                         f"{s['max']} |")
    phases = result.get("chromium_phases_p50")
    if phases:
        lines += [
            "",
            "Where Chromium's time goes (medians, ms from the start of the attempt): "
            + ", ".join(f"{k} {v}" for k, v in phases.items()) + ".",
        ]
    return [*lines, "", "![first frame](bench/ttff.png)", ""]
