"""Good video on bad networks: the CLI viewer through an impairing loopback relay.

One camera (``python -m bench _camera``, the test pattern in two layers) and
CLI viewers in their own processes (``view()`` as ``peercam view`` runs it),
each viewer's media through its own :class:`bench.impair.ImpairRelay` (the NAT
lab's link model on loopback UDP; only SRTP/SRTCP impaired, so ICE and DTLS set
up as usual). Conditions:

* ``loss``: 5 % random loss both ways, one viewer;
* ``jitter``: 100 ms ± 30 ms delay both ways (the lab's model keeps the order),
  one viewer;
* ``cap``: three viewers; after ``--cap-after`` s the first one's downlink is
  capped at 600 kbit/s (token bucket, 0.1 s queue, tail drop) for ``--cap-for``
  s, then the cap is lifted.

Each condition runs twice in the same run, each variant with a camera of its
own: ``baseline`` (the receiver as before: ``ReceiveSettings(playout=False,
nack=False)``, aiortc's jitter buffer released on the marker bit and its NACK
generator; the camera with ``probe_revert = false``) and ``improved`` (the
defaults: NACK at once and at RTT intervals, bounded waits, skip to the next
keyframe; a probe up that brings picture loss reverted at once). Measured per
viewer: glass-to-glass latency from the burnt-in stamp (read on the high layer
only: on the low layer it is half size and not read), the longest gap between
shown frames, frames shown per second, the layer the camera reported over time;
for ``cap`` also how soon the capped viewer was reported low after the cap and
high after the lift, and its longest gap after it went low. What it leaves out:
Chromium (its WebRTC stack has its own jitter buffer and NACK; not driven
through the relay here), reordering, bursty (Gilbert-Elliott) loss, real radio
links, TURN.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Camera, percentile, pin_loopback, pyplot, start_rendezvous

NAME = "badnet"
HELP = "video through loss, jitter and a capped link: latency, stalls, fps, layers"
SMOKE = ["--width", "320", "--height", "240", "--bitrate", "400000", "--seconds", "4",
         "--cap-after", "2", "--cap-for", "4", "--after-lift", "2", "--cap-kbit", "150"]
NEEDS: list[str] = []

VARIANTS = {"baseline": {"playout": False, "nack": False}, "improved": {}}
"""The CLI viewer's ReceiveSettings per variant ..."""
CAMERA: dict[str, dict[str, Any]] = {"baseline": {"probe_revert": False}, "improved": {}}
"""... and the camera's settings."""
TARGETS = {
    "loss": {"latency_p95_ms": 250.0, "max_gap_ms": 500.0, "fps": 25.0},
    "jitter": {"max_gap_ms": 300.0, "fps": 28.0},
    "cap": {"low_within_s": 5.0, "fps": 25.0, "max_gap_after_switch_ms": 500.0,
            "high_again_within_s": 10.0},
}
_VIEWER_CMD = ("import sys; from bench.badnet import viewer_main; "
               "sys.exit(viewer_main(sys.argv[1:]))")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--seconds", type=float, default=30.0,
                   help="viewing time of the loss and jitter conditions")
    p.add_argument("--loss", type=float, default=0.05, help="random loss, each way")
    p.add_argument("--delay", type=float, default=0.1, help="one-way delay, seconds")
    p.add_argument("--jitter", type=float, default=0.03, help="± jitter, seconds")
    p.add_argument("--cap-kbit", type=float, default=600.0, help="the capped viewer's rate")
    p.add_argument("--cap-after", type=float, default=10.0)
    p.add_argument("--cap-for", type=float, default=20.0)
    p.add_argument("--after-lift", type=float, default=15.0)
    p.add_argument("--conditions", default="loss,jitter,cap")
    p.add_argument("--variants", default="baseline,improved")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pin_loopback()
    from camera.client.viewer import view

    runner, url = await start_rendezvous()
    rows: list[dict[str, Any]] = []
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    try:
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            # A camera of its own per variant: the camera's part is a setting too.
            state = Path(args.state) / NAME / variant
            camera = await Camera(url, "passthrough", state / "camera", args.width,
                                  args.height, bitrate=args.bitrate, fps=args.fps,
                                  extra=["--settings", json.dumps(CAMERA[variant])]).started()
            try:
                await asyncio.sleep(1)
                await view(camera.link(url, pair=True), seconds=0.2)  # pair the key, untimed
                for condition in conditions:
                    await asyncio.sleep(1)
                    before = _camera_counters(state / "camera")
                    row = await run_condition(condition, variant, camera, camera.link(url),
                                              args, state)
                    await asyncio.sleep(3)  # the metrics file is rewritten every few seconds
                    after = _camera_counters(state / "camera")
                    row["camera"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                    rows.append(row)
                    print(f"badnet: {_row_line(row)}", flush=True)
            finally:
                camera.stop()
    finally:
        await runner.cleanup()
    order = {name: k for k, name in enumerate(conditions)}
    rows.sort(key=lambda row: order[row["condition"]])
    return {"video": f"{args.width}x{args.height}@{args.fps} {args.bitrate / 1e6:g} Mbit/s",
            "conditions": {"loss": args.loss, "delay_s": args.delay, "jitter_s": args.jitter,
                           "cap_kbit": args.cap_kbit, "cap_after_s": args.cap_after,
                           "cap_for_s": args.cap_for, "after_lift_s": args.after_lift,
                           "seconds": args.seconds},
            "targets": TARGETS, "rows": rows}


def _camera_counters(state: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    path = state / "metrics.prom"
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith("peercam_camera_keyframe"):
                name, value = line.rsplit(" ", 1)
                out[name.split("{")[0].removeprefix("peercam_camera_")] = float(value)
    return out


async def run_condition(condition: str, variant: str, camera: Camera, link: str,
                        args: argparse.Namespace, state: Path) -> dict[str, Any]:
    from bench.impair import ImpairRelay
    from services.natlab.shaping import Impairment

    if condition == "loss":
        impaired = Impairment(loss=args.loss)
        relays = [await ImpairRelay(impaired, impaired, seed=7).start()]
        seconds = args.seconds
    elif condition == "jitter":
        impaired = Impairment(delay=args.delay, jitter=args.jitter)
        relays = [await ImpairRelay(impaired, impaired, seed=7).start()]
        seconds = args.seconds
    elif condition == "cap":
        relays = [await ImpairRelay(seed=k).start() for k in range(3)]
        seconds = args.cap_after + args.cap_for + args.after_lift
    else:
        raise SystemExit(f"bench: badnet: unknown condition {condition!r}")
    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    events: dict[str, float] = {}
    state.mkdir(parents=True, exist_ok=True)
    try:
        for k, relay in enumerate(relays):
            log = state / f"{condition}-{variant}-{k}.log"
            logs.append(log)
            with log.open("w") as err:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _VIEWER_CMD, "--link", link,
                    "--seconds", str(seconds), "--variant", variant,
                    "--relay", f"{relay.viewer_port},{relay.camera_port}",
                    stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT))
        for k, proc in enumerate(procs):
            line = await _line(proc, 60, logs[k])
            if line != "PLAYING":
                raise SystemExit(f"bench: badnet: viewer {k} did not play: {line!r} "
                                 f"({_tail(logs[k])})")
        events["playing"] = time.monotonic()
        if condition == "cap":
            await asyncio.sleep(args.cap_after)
            relays[0].impair(to_viewer=Impairment(rate_kbit=args.cap_kbit))
            events["capped"] = time.monotonic()
            await asyncio.sleep(args.cap_for)
            relays[0].impair(to_viewer=Impairment())
            events["lifted"] = time.monotonic()
        viewers = []
        for k, proc in enumerate(procs):
            line = await _line(proc, seconds + 90, logs[k])
            if not line.startswith("RESULT "):
                raise SystemExit(f"bench: badnet: viewer {k} failed: {line!r} "
                                 f"({_tail(logs[k])})")
            viewers.append(json.loads(line.split(" ", 1)[1]))
            await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        relay_counts = [_relay_counts(relay) for relay in relays]
        for relay in relays:
            relay.close()
    for k, viewer in enumerate(viewers):
        viewer["relay"] = relay_counts[k]
        # Only the first viewer is ever capped.
        viewer.update(_derived(viewer, events if k == 0 else {}))
    return {"condition": condition, "variant": variant, "viewers": viewers,
            "events": {k: round(v - events["playing"], 2) for k, v in events.items()}}


def _relay_counts(relay: Any) -> dict[str, Any]:
    out = {}
    for name, towards_viewer in (("to_viewer", True), ("to_camera", False)):
        counts = relay.counters(towards_viewer)
        out[name] = {"media": counts.media, "lost": counts.link.lost,
                     "overflowed": counts.link.overflowed}
    return out


def _derived(viewer: dict[str, Any], events: dict[str, float]) -> dict[str, Any]:
    """Layer residency, and for the capped viewer when it moved and its gaps after."""
    changes = [(at, layer) for at, layer in viewer["layer_changes"]]
    start, end = viewer["first_frame_clock"], viewer["end_clock"]
    residency: dict[str, float] = {}
    for k, (at, layer) in enumerate(changes):
        until = changes[k + 1][0] if k + 1 < len(changes) else end
        residency[layer] = residency.get(layer, 0.0) + max(0.0, until - max(at, start))
    total = sum(residency.values()) or 1.0
    out: dict[str, Any] = {"residency": {k: round(v / total, 3) for k, v in residency.items()}}
    if "capped" in events:
        low = next((at for at, layer in changes if layer == "low" and at >= events["capped"]),
                   None)
        out["low_after_s"] = None if low is None else round(low - events["capped"], 2)
        high = next((at for at, layer in changes if layer == "high" and at >= events["lifted"]),
                    None)
        out["high_after_lift_s"] = None if high is None else round(high - events["lifted"], 2)
        if low is not None:
            window = [t for t in viewer["frame_clock"] if low <= t <= events["lifted"]]
            gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
            out["max_gap_after_switch_ms"] = round(1000 * max(gaps), 1) if gaps else None
            out["fps_while_capped"] = round(len(window) / (events["lifted"] - low), 2) if (
                events["lifted"] > low) else None
    return out


async def _line(proc: asyncio.subprocess.Process, timeout: float, log: Path) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        raise SystemExit(f"bench: badnet: a viewer said nothing for {timeout:.0f} s "
                         f"({_tail(log)})") from None
    return raw.decode().strip()


def _tail(log: Path) -> str:
    text = log.read_text().strip() if log.exists() else ""
    return text[-1500:] or "no output"


# --- one viewer (a child process) ---------------------------------------------------------


def viewer_main(argv: list[str]) -> int:
    """One CLI viewer behind a relay: prints PLAYING at its first frame, RESULT <json> at
    the end."""
    import logging

    p = argparse.ArgumentParser(prog="bench-badnet-viewer")
    p.add_argument("--link", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--variant", choices=list(VARIANTS), required=True)
    p.add_argument("--relay", required=True, help="VIEWER_PORT,CAMERA_PORT of the relay")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pin_loopback()
    result = asyncio.run(_watch(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


async def _watch(args: argparse.Namespace) -> dict[str, Any]:
    from bench.impair import rewrite_candidates
    from camera.client.viewer import ReceiveSettings, SdpRewrite, _Run

    viewer_port, camera_port = (int(x) for x in args.relay.split(","))
    rewrite = SdpRewrite(offer=lambda sdp: rewrite_candidates(sdp, camera_port),
                         answer=lambda sdp: rewrite_candidates(sdp, viewer_port))
    frame_clock: list[float] = []
    # Note every shown frame's time (the stats keep only gaps of 250 ms and more).
    consume = _Run._consume

    async def timed_consume(self: Any, session: Any, track: Any) -> None:
        recv = track.recv

        async def timed_recv() -> Any:
            frame = await recv()
            if session.number == self.healer.current:
                frame_clock.append(time.monotonic())
                if len(frame_clock) == 1:
                    print("PLAYING", flush=True)
            return frame

        track.recv = timed_recv
        await consume(self, session, track)

    _Run._consume = timed_consume  # type: ignore[method-assign]
    from camera.client.viewer import view

    stats = await view(args.link, seconds=args.seconds, rewrite=rewrite,
                       receive=ReceiveSettings(**VARIANTS[args.variant]), stall=5.0)
    out = stats.as_dict()
    out["end_clock"] = time.monotonic()
    out["latencies_ms"] = [round(x, 1) for x in stats.latencies_ms]
    out["layer_changes"] = [[round(a, 3), layer] for a, layer in stats.layer_changes]
    out["frame_clock"] = [round(t, 3) for t in frame_clock]
    return out


# --- report ---------------------------------------------------------------------------------


def _viewer_summary(v: dict[str, Any]) -> dict[str, Any]:
    lat = sorted(v["latencies_ms"])
    clock = v["frame_clock"]
    span = clock[-1] - clock[0] if len(clock) > 1 else 0.0
    return {
        "latency_p50": round(statistics.median(lat), 1) if lat else None,
        "latency_p95": round(percentile(lat, 0.95), 1) if lat else None,
        "max_gap_ms": v["max_gap_ms"],
        "fps": round((len(clock) - 1) / span, 1) if span > 0 else 0.0,
    }


def _row_line(row: dict[str, Any]) -> str:
    parts = []
    for k, v in enumerate(row["viewers"]):
        s = _viewer_summary(v)
        parts.append(f"v{k} p50 {s['latency_p50']} p95 {s['latency_p95']} ms, longest gap "
                     f"{s['max_gap_ms']} ms, {s['fps']} fps, layers {v['residency']}"
                     + (f", low after {v.get('low_after_s')} s, high after lift "
                        f"{v.get('high_after_lift_s')} s, gap after switch "
                        f"{v.get('max_gap_after_switch_ms')} ms" if "low_after_s" in v else ""))
    return f"{row['condition']} {row['variant']}: " + "; ".join(parts)


def headline(result: dict[str, Any]) -> str:
    return "badnet: " + " | ".join(_row_line(row) for row in result["rows"])


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * max(1, len(rows)), 3.4),
                             squeeze=False, sharey=True)
    for ax, row in zip(axes[0], rows, strict=False):
        v = row["viewers"][0]
        clock = v["frame_clock"]
        if len(clock) > 1:
            t0 = clock[0]
            ax.plot([b - t0 for b in clock[1:]],
                    [1000 * (b - a) for a, b in zip(clock, clock[1:], strict=False)],
                    linewidth=0.6, color="#4477aa" if row["variant"] == "improved"
                    else "#cc6677")
        ax.set_yscale("log")
        ax.set_ylim(5, 20_000)
        ax.set_title(f"{row['condition']} {row['variant']}", fontsize=9)
        ax.set_xlabel("s")
        for name, at in row["events"].items():
            if name != "playing":
                ax.axvline(at, color="#999933", linestyle="--", linewidth=0.8)
    axes[0][0].set_ylabel("ms between shown frames (viewer 1)")
    fig.tight_layout()
    name = "badnet.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return [name]


def markdown(result: dict[str, Any]) -> list[str]:
    c = result["conditions"]
    lines = [
        "## Bad networks: loss, jitter, a capped viewer",
        "",
        f"Camera test pattern {result['video']} (two layers), CLI viewers in their own "
        "processes, each through its own loopback UDP relay running the NAT lab's link "
        "model on SRTP/SRTCP only. `baseline` is today's code before this work, switched "
        "back on by settings: the viewer's receiver as it was (`--no-playout --no-nack`: "
        "aiortc's jitter buffer released on the marker bit, its NACK generator) and the "
        "camera with `probe_revert = false`; `improved` is the default now (NACK at once "
        "and again at RTT intervals, bounded waits, skip to the next keyframe; a probe up "
        "that brings picture loss reverted at once). Both in the same run, a camera "
        "process each. Latency is read from the stamp on the high layer only (on the low "
        "layer it is half size and not read). Left out: Chromium through the relay (its "
        "own NACK and jitter buffer), reordering, bursty loss, TURN, real radio links.",
        "",
        f"Conditions: loss {c['loss'] * 100:g} % each way; delay {c['delay_s'] * 1000:g} ms "
        f"± {c['jitter_s'] * 1000:g} ms each way; cap: viewer 1 of 3 capped at "
        f"{c['cap_kbit']:g} kbit/s from {c['cap_after_s']:g} s for {c['cap_for_s']:g} s.",
        "",
        "| condition | variant | viewer | latency p50 / p95 ms | longest gap ms | fps shown "
        "| layers (time share) | capped: low after / high after lift / longest gap and fps "
        "once low | camera keyframe requests / IDRs asked of the source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for k, v in enumerate(row["viewers"]):
            s = _viewer_summary(v)
            layers = ", ".join(f"{name} {share * 100:.0f} %"
                               for name, share in sorted(v["residency"].items()))
            capped = "–"
            if "low_after_s" in v and k == 0:
                capped = (f"{v['low_after_s']} s / {v['high_after_lift_s']} s / "
                          f"{v.get('max_gap_after_switch_ms')} ms, "
                          f"{v.get('fps_while_capped')} fps")
            cam = row.get("camera", {})
            kf = (f"{cam.get('keyframe_requests_total', 0):g} / "
                  f"{cam.get('keyframe_requests_sent_total', 0):g}") if k == 0 else ""
            lines.append(f"| {row['condition']} | {row['variant']} | {k + 1} | "
                         f"{s['latency_p50']} / {s['latency_p95']} | {s['max_gap_ms']} | "
                         f"{s['fps']} | {layers} | {capped} | {kf} |")
    t = result["targets"]
    lines += [
        "",
        f"Targets: loss — p95 ≤ {t['loss']['latency_p95_ms']:g} ms, no gap > "
        f"{t['loss']['max_gap_ms']:g} ms, ≥ {t['loss']['fps']:g} fps; jitter — no gap > "
        f"{t['jitter']['max_gap_ms']:g} ms, ≥ {t['jitter']['fps']:g} fps; cap — low within "
        f"{t['cap']['low_within_s']:g} s, ≥ {t['cap']['fps']:g} fps and no gap > "
        f"{t['cap']['max_gap_after_switch_ms']:g} ms once low, high again within "
        f"{t['cap']['high_again_within_s']:g} s of the lift, the others high throughout.",
        "",
        "![badnet](bench/badnet.png)",
        "",
    ]
    return lines
