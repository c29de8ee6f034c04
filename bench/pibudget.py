"""How many viewers a Raspberry Pi holds: the camera under a CPU quota sized to a board.

A Pi encodes H.264 in hardware (picamera2's encoder), so what its CPU pays per
viewer is peercam's own work: SRTP, packetization shared once per access unit,
the per-viewer send loop, RTCP. This benchmark runs the camera agent with the
``file`` source playing a pre-encoded clip of the textured test pattern (no
encoder on the camera's CPU, as on the board) inside a cgroup whose CPU quota is
one board core's speed relative to one core of this machine, and adds viewers
until one of them gets under 27 fps.

Sizing. The camera agent is one Python process whose work runs on one core (the
interpreter lock), so the quota is one board core against one core here, from a
benchmark published for the boards and run here the same way: sysbench 1.0.20,
``sysbench cpu --threads=1`` (primes up to 10,000), events per second:

* Raspberry Pi 4 (Cortex-A72): 1477.83 (leoncode.co.uk, "Raspberry Pi CPU
  Benchmarks", ``--time=60``);
* Raspberry Pi Zero 2 W (Cortex-A53 at 1.0 GHz): not in that table; its Pi 3B+
  row (the same Cortex-A53 core at 1.4 GHz) is 687.45, scaled by the clock to
  687.45 / 1.4 = 491.0.

An integer benchmark flatters an in-order core (the A53) against an interpreter's
branchy work, so the Zero 2 W figure is, if anything, generous to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Camera, null_viewer, pin_loopback, pyplot, start_rendezvous

NAME = "pibudget"
HELP = "viewers a Pi Zero 2 W / Pi 4 holds: the camera under a CPU quota, pre-encoded video"
NEEDS = ["root", "sysbench"]
SMOKE = ["--boards", "pi4", "--counts", "1", "--seconds", "1", "--width", "320",
         "--height", "240", "--sysbench-seconds", "1"]
HOLD_FPS = 27.0
PERIOD_US = 100_000
SOURCE = ("sysbench 1.0.20, `sysbench cpu --threads=1` (primes to 10,000), events/s; "
          "boards from leoncode.co.uk, \"Raspberry Pi CPU Benchmarks\"")


@dataclass(frozen=True)
class Board:
    label: str
    events_per_s: float
    how: str


BOARDS = {
    "zero2w": Board("Raspberry Pi Zero 2 W", 491.0,
                    "Pi 3B+'s 687.45 (the same Cortex-A53 at 1.4 GHz) × 1.0/1.4"),
    "pi4": Board("Raspberry Pi 4", 1477.83, "published (Cortex-A72)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boards", default="zero2w,pi4")
    p.add_argument("--counts", default="1,2,3,4,6,8,12,16,24,32",
                   help="viewer counts, tried in order until one misses 27 fps")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--sysbench-seconds", type=float, default=10.0,
                   help="this machine's single-core sysbench run, three times")


# -- the quota -------------------------------------------------------------------------


class CpuQuota:
    """A cgroup whose processes together get at most ``cores`` of one CPU.

    cgroup v1's ``cpu`` controller (CFS quota) where it is mounted, else cgroup v2's
    ``cpu.max``. A process joins by writing its PID to ``cgroup.procs`` before it
    execs the camera (:meth:`prefix`), so all its threads are inside from the start.
    """

    def __init__(self, name: str, cores: float) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(round(cores * PERIOD_US)))
        elif Path("/sys/fs/cgroup/cgroup.controllers").exists():
            root = Path("/sys/fs/cgroup")
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            self.path = root / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{round(cores * PERIOD_US)} {PERIOD_US}")
        else:
            raise SystemExit("bench: no cgroup cpu controller (v1 cpu or v2 cpu.max) here")
        self.cores = cores

    def prefix(self) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def throttled(self) -> tuple[int, int]:
        """(periods, periods throttled) so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)  # the camera's process is still leaving


def sysbench_here(seconds: float) -> float:
    """Median of three single-thread sysbench runs on this machine, events/s."""
    exe = shutil.which("sysbench")
    if exe is None:
        raise SystemExit("bench: needs sysbench (apt install sysbench; scripts/setup --test)")
    runs = []
    for _ in range(3):
        out = subprocess.run([exe, "cpu", "--threads=1", f"--time={max(1, round(seconds))}",
                              "run"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"events per second:\s*([\d.]+)", out)
        if match is None:
            raise SystemExit(f"bench: sysbench printed no rate: {out[-300:]!r}")
        runs.append(float(match.group(1)))
    return statistics.median(runs)


# -- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pin_loopback()
    here = sysbench_here(args.sysbench_seconds)
    counts = [int(c) for c in args.counts.split(",")]
    warmup = 1.0 if args.smoke else 3.0
    clips = str(Path(args.state) / "clips")
    runner, url = await start_rendezvous()
    boards: list[dict[str, Any]] = []
    try:
        for key in args.boards.split(","):
            board = BOARDS[key]
            cores = min(1.0, board.events_per_s / here)
            quota = CpuQuota(f"peercam-bench-{key}-{os.getpid()}", cores)
            rows: list[dict[str, Any]] = []
            try:
                for count in counts:
                    row = await one_count(args, url, quota, key, count, warmup, clips)
                    print(json.dumps({"board": key, **row}), flush=True)
                    rows.append(row)
                    if row["fps_min"] < HOLD_FPS:
                        break
            finally:
                quota.remove()
            held = [r["viewers"] for r in rows if r["fps_min"] >= HOLD_FPS]
            boards.append({"board": key, "label": board.label, "how": board.how,
                           "events_per_s": board.events_per_s, "quota_cores": round(cores, 3),
                           "rows": rows, "holds_up_to": max(held) if held else 0})
    finally:
        await runner.cleanup()
    return {"video": f"{args.width}x{args.height}@30 {args.bitrate / 1e6:g} Mbit/s",
            "here_events_per_s": round(here, 1), "seconds": args.seconds, "boards": boards}


async def one_count(args: argparse.Namespace, url: str, quota: CpuQuota, key: str,
                    count: int, warmup: float, clips: str) -> dict[str, Any]:
    from camera.client.viewer import view

    camera = await Camera(url, "passthrough", Path(args.state) / NAME / key, args.width,
                          args.height, bitrate=args.bitrate, pattern="texture", clip=clips,
                          prefix=quota.prefix()).started()
    try:
        await view(camera.link(url, pair=True), seconds=0.1)  # pair, untimed
        traffic: list[dict[str, float]] = [{} for _ in range(count)]
        viewers = [asyncio.ensure_future(null_viewer(url, camera.device_id, args.seconds,
                                                     warmup=warmup, traffic=t))
                   for t in traffic]
        await asyncio.sleep(warmup)
        c0, t0, q0 = camera.cpu_seconds(), time.monotonic(), quota.throttled()
        await asyncio.sleep(args.seconds)
        cpu = (camera.cpu_seconds() - c0) / (time.monotonic() - t0)
        q1 = quota.throttled()
        rates = await asyncio.gather(*viewers)
    finally:
        camera.stop()
    periods = q1[0] - q0[0]
    return {"viewers": count, "cpu_core": round(cpu, 3),
            "of_quota": round(cpu / quota.cores, 2),
            "throttled_share": round((q1[1] - q0[1]) / periods, 2) if periods else 0.0,
            "fps_min": round(min(rates), 1), "fps_median": round(statistics.median(rates), 1),
            "kbit_s": round(statistics.median(t.get("kbit_s", 0.0) for t in traffic), 1)}


# -- the report ----------------------------------------------------------------------------


def limited_by(row: dict[str, Any]) -> str:
    """What ran out at this count: the camera's quota, or (fps short with quota to
    spare) the viewers' own process; "–" while every viewer holds the rate."""
    if row["fps_min"] >= HOLD_FPS:
        return "–"
    return "quota" if row["of_quota"] >= 0.9 or row["throttled_share"] >= 0.5 else "viewers"


def headline(result: dict[str, Any]) -> str:
    return "pibudget: " + ", ".join(
        f"{b['label']} ({100 * b['quota_cores']:.0f}% of a core here) holds "
        f"{b['holds_up_to']} viewers at ≥ {HOLD_FPS:g} fps" for b in result["boards"])


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in result["boards"]:
        ax.plot([r["viewers"] for r in b["rows"]], [r["fps_min"] for r in b["rows"]], "o-",
                label=f"{b['label']} ({100 * b['quota_cores']:.0f}% of a core)")
    ax.axhline(HOLD_FPS, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("viewers")
    ax.set_ylabel("slowest viewer's fps")
    ax.set_title(f"Camera under a board's CPU quota, {result['video']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pibudget.png", dpi=100)
    plt.close(fig)
    return ["pibudget.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"## Viewers on a Raspberry Pi's CPU budget ({result['video']})",
        "",
        "The camera agent as shipped, its `file` source playing a pre-encoded clip of "
        "the textured test pattern (a Pi encodes in hardware, so no encoder runs on its "
        "CPU), inside a cgroup whose CPU quota is one board core's speed against one core "
        f"of this machine ({SOURCE}; this machine: "
        f"{result['here_events_per_s']} events/s, median of three runs in this run). "
        "Viewers (in the benchmark's own process, outside the quota) receive and "
        "depayload without decoding; each count runs a fresh camera for "
        f"{result['seconds']} s after a warm-up, and the counts stop at the first one "
        f"where the slowest viewer got under {HOLD_FPS:g} fps. *of quota*: the camera's "
        "CPU over its quota; *throttled*: the share of 100 ms periods in which the kernel "
        "stopped it for having used its quota.",
        "",
        "| board | sized from (events/s) | quota (of a core here) | viewers | camera CPU "
        "| of quota | throttled | slowest / median fps | limited by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in result["boards"]:
        for r in b["rows"]:
            lines.append(
                f"| {b['label']} | {b['events_per_s']} ({b['how']}) | "
                f"{100 * b['quota_cores']:.1f}% | {r['viewers']} | "
                f"{100 * r['cpu_core']:.1f}% | {r['of_quota']} | {r['throttled_share']} | "
                f"{r['fps_min']} / {r['fps_median']} | {limited_by(r)} |")
    lines += [""] + [
        f"- {b['label']}: holds {b['holds_up_to']} viewer(s) at ≥ {HOLD_FPS:g} fps"
        + ("" if b["rows"] and b["rows"][-1]["fps_min"] < HOLD_FPS else
           " (every count tried; the quota was not the limit)")
        for b in result["boards"]]
    lines += [
        "",
        "*limited by*: `quota` where the camera used at least 90% of its quota or was "
        "throttled in at least half the periods; `viewers` where the slowest viewer fell "
        "under the frame rate while the camera had quota to spare (the viewers share this "
        "machine's other CPU with everything else, and starve first)."]
    lines += [
        "",
        "Caveats: the quota models the CPU only: a Pi's memory bandwidth, its Wi-Fi and "
        "the kernel's network stack on the board (here outside the quota, as softirq "
        "work on loopback) are not modelled; the cgroup also counts the camera's other "
        "threads (the file source's reader), which on a board would run on another core. "
        "The network runs out first: each viewer takes the stream's bitrate (the "
        "*kbit/s* in the JSON, about the configured rate), so a dozen viewers at 2 Mbit/s "
        "already fill a Zero 2 W's 2.4 GHz 802.11n link; more viewers than the uplink "
        "carries need the relay or a lower bitrate whatever the CPU. "
        "One run on a machine shared with other engineers' work.",
        "",
        "![pi budget](bench/pibudget.png)",
        "",
    ]
    return lines
