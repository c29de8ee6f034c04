"""Camera CPU and memory per viewer: peercam's passthrough against aiortc's
per-viewer encode of the same test pattern, in the same run.

Viewers receive and depayload but do not decode (they would starve the camera
on a 2-core machine). "Holds the frame rate" means every viewer's median rate
is at least 90% of the source's 30 fps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Camera, null_viewer, pin_loopback, pyplot, start_rendezvous

NAME = "viewers"
HELP = "camera CPU/memory for N viewers: passthrough vs per-viewer encode"
SMOKE = ["--counts", "1,2", "--seconds", "1", "--width", "320", "--height", "240"]
HOLD_FPS = 27.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counts", default="1,2,4,8,16,32")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--modes", default="passthrough,aiortcsend,perviewer",
                   help="passthrough: as shipped; aiortcsend: the same with aiortc's own "
                   "send loop (packetized per viewer); perviewer: an encoder per viewer")
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--pattern", default="texture", choices=["bars", "texture"],
                   help="texture: libx264 reaches the bitrate; bars: the old, light content")
    p.add_argument("--clip", action="store_true",
                   help="play a pre-encoded clip of the pattern (no encoder in the camera)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from camera.client.viewer import view

    pin_loopback()
    counts = [int(c) for c in args.counts.split(",")]
    settle = 0.3 if args.smoke else 1.0  # smoke: does it run, not what it measures
    warmup = 1.0 if args.smoke else 3.0
    runner, url = await start_rendezvous()
    rows: list[dict[str, Any]] = []
    try:
        # Counts outside, paths inside: the paths compared at each count run within
        # the same minute of a shared machine.
        for count in counts:
            for mode in args.modes.split(","):
                camera = await Camera(
                    url, mode, Path(args.state) / mode, args.width, args.height,
                    bitrate=args.bitrate, pattern=args.pattern,
                    clip=str(Path(args.state) / "clips") if args.clip else "").started()
                try:
                    await asyncio.sleep(settle)
                    await view(camera.link(url, pair=True), seconds=0.1)  # pair, untimed
                    await asyncio.sleep(settle)
                    idle0, t0 = camera.cpu_seconds(), time.monotonic()
                    await asyncio.sleep(2 * settle)
                    idle_cpu = (camera.cpu_seconds() - idle0) / (time.monotonic() - t0)
                    traffic: list[dict[str, float]] = [{} for _ in range(count)]
                    viewers = [asyncio.ensure_future(
                        null_viewer(url, camera.device_id, args.seconds, warmup=warmup,
                                    traffic=t)) for t in traffic]
                    await asyncio.sleep(warmup)
                    p0 = await camera.packets_sent()
                    c0, t0 = camera.cpu_seconds(), time.monotonic()
                    await asyncio.sleep(args.seconds)
                    cpu = (camera.cpu_seconds() - c0) / (time.monotonic() - t0)
                    packets = (await camera.packets_sent() - p0) / (time.monotonic() - t0)
                    rss = camera.rss_mib()
                    rates = await asyncio.gather(*viewers)
                finally:
                    camera.stop()
                row = {"mode": mode, "viewers": count, "cpu_core": round(cpu, 3),
                       "idle_cpu_core": round(idle_cpu, 3), "rss_mib": round(rss, 1),
                       "fps_min": round(min(rates), 1),
                       "fps_median": round(statistics.median(rates), 1),
                       "kbit_s": round(statistics.median(t["kbit_s"] for t in traffic), 1),
                       "packets_s_sent": round(packets, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        await runner.cleanup()
    return {"video": f"{args.width}x{args.height}@30 {args.bitrate / 1e6:g} Mbit/s",
            "pattern": args.pattern, "clip": args.clip, "seconds": args.seconds,
            "rows": rows, "marginal": marginal(rows), "holds_up_to": holds_up_to(rows)}


def us_per_packet(row: dict[str, Any]) -> float | None:
    """Camera CPU above its idle, in microseconds per RTP packet sent."""
    packets = row.get("packets_s_sent")
    if not packets:
        return None
    return round(1e6 * (row["cpu_core"] - row["idle_cpu_core"]) / packets, 1)


def per_packet_ratio(rows: list[dict[str, Any]], mode: str = "passthrough",
                     base: str = "aiortcsend") -> float | None:
    """Median over viewer counts of ``mode``'s CPU per packet over ``base``'s, at each
    count both ran (robust to a busy machine: both ran within the same minute)."""
    by = {(r["mode"], r["viewers"]): us_per_packet(r) for r in rows}
    ratios = [a / b for (m, n), a in by.items() if m == mode and a is not None
              and (b := by.get((base, n))) is not None and b > 0]
    return round(statistics.median(ratios), 2) if ratios else None


def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    """One line of a run, for the table of runs at other bitrates."""
    rows = result["rows"]
    return {"video": result["video"], "pattern": result.get("pattern"),
            "clip": result.get("clip"), "marginal": result["marginal"],
            "per_packet_ratio": per_packet_ratio(rows),
            "us_per_packet": {m: statistics.median(v for r in rows if r["mode"] == m
                                                   and (v := us_per_packet(r)) is not None)
                              for m in sorted({r["mode"] for r in rows})},
            "kbit_s": max(r.get("kbit_s", 0) for r in rows),
            "holds_up_to": result.get("holds_up_to")}


def marginal(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope of camera CPU over viewer count, per mode (cores per viewer)."""
    out = {}
    for mode in sorted({r["mode"] for r in rows}):
        pts = [(r["viewers"], r["cpu_core"]) for r in rows if r["mode"] == mode]
        if len(pts) >= 2:
            mx = statistics.mean(p[0] for p in pts)
            my = statistics.mean(p[1] for p in pts)
            den = sum((x - mx) ** 2 for x, _ in pts)
            out[mode] = round(sum((x - mx) * (y - my) for x, y in pts) / den, 4) if den else 0.0
    return out


def holds_up_to(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per mode, the largest viewer count at which every viewer still got ≥ 27 fps."""
    out: dict[str, int | None] = {}
    for mode in sorted({r["mode"] for r in rows}):
        best = None
        for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["viewers"]):
            if r["fps_min"] < HOLD_FPS:
                break
            best = r["viewers"]
        out[mode] = best
    return out


def headline(result: dict[str, Any]) -> str:
    mg = result["marginal"]
    return "viewers: marginal CPU per viewer " + ", ".join(
        f"{k} {100 * v:.2f}% of a core" for k, v in mg.items()
    ) + "; holds 30 fps up to " + ", ".join(
        f"{k} {v}" for k, v in result.get("holds_up_to", {}).items())


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, label in (("passthrough", "peercam (shared packetization)"),
                        ("aiortcsend", "peercam with aiortc's send loop"),
                        ("perviewer", "aiortc default (encode per viewer)")):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        if rows:
            ax.plot([r["viewers"] for r in rows], [100 * r["cpu_core"] for r in rows], "o-",
                    label=label)
    ax.set_xlabel("viewers")
    ax.set_ylabel("camera CPU (% of one core)")
    ax.set_title(f"Camera CPU per viewer count, {result['video']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "viewers.png", dpi=100)
    plt.close(fig)
    return ["viewers.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"## Camera CPU per viewer ({result['video']})",
        "",
        "Camera process CPU (fraction of one core) over "
        f"{result['seconds']} s with N viewers connected, in the same run: peercam as "
        "shipped (`passthrough`: one encode, each access unit packetized once per layer, "
        "a lean per-viewer send loop), the same with aiortc's own send loop "
        "(`aiortcsend`) and, where listed, aiortc's default path (`perviewer`: raw "
        "frames, one encoder per viewer). Viewers receive and depayload but do not "
        "decode; all of them run in one Python process on the same 2 cores, which a "
        "busy machine starves first (their fps drops; the camera still sends every "
        "packet, and retransmits what they miss). The machine was shared with other "
        "engineers' work during these runs: compare the paths row by row, by CPU per "
        "packet.",
        "",
        f"Content: the `{result.get('pattern', 'bars')}` test pattern"
        + (", pre-encoded and played by the `file` source (no encoder in the camera's CPU)"
           if result.get("clip") else ", encoded live") + "; *kbit/s* is the H.264",
        "bitrate each viewer received (median viewer), *packets/s* the RTP packets the",
        "camera sent to all viewers together (its senders' own counters).",
        "",
        "*µs/packet*: camera CPU above its idle (no viewers) per packet sent. `aiortcsend`",
        "is the same camera with aiortc's own send loop (packetizing per viewer): the",
        "send path as it was before it shared packetization.",
        "",
        "| path | viewers | camera CPU (cores) | idle | packets/s sent | µs/packet "
        "| kbit/s per viewer | RSS MiB | viewer fps (min / median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        per = us_per_packet(r)
        lines.append(f"| {r['mode']} | {r['viewers']} | {r['cpu_core']} | "
                     f"{r.get('idle_cpu_core', '–')} | {r.get('packets_s_sent', '–')} | "
                     f"{'–' if per is None else per} | {r.get('kbit_s', '–')} | "
                     f"{r['rss_mib']} | {r['fps_min']} / {r['fps_median']} |")
    mg = result["marginal"]
    lines += [
        "",
        "Marginal cost per extra viewer (least-squares slope): "
        + ", ".join(f"{k} {100 * v:.2f}% of a core" for k, v in mg.items()) + ".",
    ]
    if result.get("holds_up_to"):
        lines.append("Largest viewer count with every viewer at ≥ 27 fps: " + ", ".join(
            f"{k} {v}" for k, v in result["holds_up_to"].items()) + ".")
    ratio = per_packet_ratio(result["rows"])
    if ratio is not None:
        lines.append(f"CPU per packet sent, shared packetization against aiortc's loop "
                     f"(median over the counts): **{ratio}**.")
    others = result.get("other_runs", [])
    if others:
        lines += ["", "Other runs (each one run, the same paths count by count):", "",
                  "| video | content | µs/packet (each path, median) | ratio passthrough/"
                  "aiortcsend per packet | marginal per viewer | kbit/s |",
                  "|---|---|---|---|---|---|"]
        for o in others:
            lines.append(
                f"| {o['video']} | {o['pattern']}{' clip' if o.get('clip') else ''}"
                f"{' (' + o['note'] + ')' if o.get('note') else ''} | "
                + ", ".join(f"{k} {v:.1f}" for k, v in o["us_per_packet"].items()) + " | "
                f"{o['per_packet_ratio']} | "
                + ", ".join(f"{k} {100 * v:.2f}%" for k, v in o["marginal"].items())
                + f" | {o['kbit_s']} |")
    lines += ["", "Where the camera's CPU goes with 32 viewers, before and after the send path "
              "shared packetization: [profiles and flame graphs](bench/profile-viewers.md)."]
    return [*lines, "", "![camera CPU](bench/viewers.png)", ""]
