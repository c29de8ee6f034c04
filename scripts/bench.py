"""peercam benchmarks: first-frame time and camera cost per viewer, measured in one run.

    scripts/bench ttff     [--trials 10]           CLI viewer and Chromium, loopback
    scripts/bench viewers  [--counts 1,4,8]        camera CPU: passthrough vs per-viewer encode
    scripts/bench all                              both, then docs/benchmarks.md

Raw samples go to docs/bench/*.json, plots to docs/bench/*.png. The camera runs
in its own process (so its CPU is its own); its ICE host candidates are pinned
to 127.0.0.1 so every packet stays on loopback. Nothing here asserts a time:
it measures and writes down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin_loopback() -> None:
    from camera.webrtc import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])


# -- the camera process ---------------------------------------------------------


async def camera_main(args: argparse.Namespace) -> None:
    """Run a camera agent; ``perviewer`` mode gives each viewer aiortc's own encoder."""
    pin_loopback()
    from camera.agent import CameraAgent
    from camera.config import CameraConfig, make_configured_source
    from camera.identity import DeviceIdentity
    from camera.sources.base import VideoSettings

    video = VideoSettings(width=args.width, height=args.height, fps=30, bitrate=2_000_000)
    config = CameraConfig(rendezvous=args.rendezvous, state_dir=Path(args.state_dir),
                          video=video, max_viewers=64)
    source = make_configured_source(config)
    if args.mode == "perviewer":
        install_per_viewer_encode(video)
        source = IdleSource()  # that path needs no shared encoder: don't charge it one
    agent = CameraAgent(config, source, DeviceIdentity.load_or_create(config.state_dir))
    await agent.start()
    await agent.registered.wait()
    print(f"DEVICE {agent.device_id}", flush=True)
    # One reusable pairing window for the whole run: every browser context pairs from it.
    print(f"PAIR {agent.open_pairing(ttl=86400, reusable=True)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await agent.close()


class IdleSource:
    """A source that never encodes (the per-viewer path renders its own raw frames)."""

    name = "idle"

    async def start(self, sink: Any) -> None:
        pass

    def request_keyframe(self) -> None:
        pass

    async def close(self) -> None:
        pass


def install_per_viewer_encode(video: Any) -> None:
    """Replace the passthrough track with aiortc's default path: raw frames, one
    encoder per viewer. The raw pictures are the test pattern's, rendered once."""
    import av
    from aiortc import VideoStreamTrack

    import camera.session
    from camera.sources.testpattern import _Painter

    painter = _Painter(video.width, video.height)
    state: dict[str, Any] = {"n": 0, "frame": None, "at": 0.0}

    def current_frame() -> Any:
        now = time.monotonic()
        if state["frame"] is None or now - state["at"] >= 1 / 30:
            yuv = painter.render(state["n"], int(time.time() * 1000))
            state["frame"] = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            state["n"] += 1
            state["at"] = now
        return state["frame"]

    class RawTrack(VideoStreamTrack):
        def __init__(self, subscription: Any) -> None:
            super().__init__()
            subscription.close()  # not used: this path does not share the encoder

        async def recv(self) -> Any:
            pts, time_base = await self.next_timestamp()
            frame = current_frame()
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
            out.pts, out.time_base = pts, time_base
            return out

    camera.session.PassthroughTrack = RawTrack  # type: ignore[misc,assignment]


# -- helpers -------------------------------------------------------------------


class Camera:
    def __init__(self, rendezvous: str, mode: str, state_dir: Path, width: int, height: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_camera", "--mode", mode, "--rendezvous", rendezvous,
             "--state-dir", str(state_dir), "--width", str(width), "--height", str(height)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.device_id = ""
        self.pair_secret = ""

    async def started(self) -> Camera:
        """Wait (without blocking the loop the rendezvous runs on) for its device ID."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 30)
        if not line.startswith("DEVICE "):
            raise SystemExit(f"bench: camera did not start ({line!r})")
        self.device_id = line.split()[1]
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 30)
        self.pair_secret = line.split()[1]
        return self

    def link(self, url: str, pair: bool = False) -> str:
        link = f"{url.replace('ws://', 'http://')}/#device={self.device_id}"
        return f"{link}&pair={self.pair_secret}" if pair else link

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def start_rendezvous() -> tuple[Any, str]:
    from services.rendezvous import start_rendezvous as start

    _server, runner, port = await start("127.0.0.1", 0)
    return runner, f"ws://127.0.0.1:{port}"


class _CountingQueue(queue.Queue):  # type: ignore[type-arg]
    """Stands in for aiortc's decoder queue: counts access units, decodes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item)  # the receiver's stop signal for its decoder thread
        else:
            self.frames += 1


async def null_viewer(url: str, device_id: str, seconds: float, warmup: float) -> float:
    """Receive (SRTP, depayload) without decoding; return access units/s after warm-up."""
    import aiohttp
    from aiortc import RTCSessionDescription

    from camera.viewer import ViewerIdentity
    from camera.webrtc import make_peer_connection, prefer_h264
    from services.signaling import Role, encode, parse
    from services.signatures import offer_statement, sign

    identity = ViewerIdentity.load_or_create()  # paired by the caller
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws/viewer") as ws:
        parse(await ws.receive_str(), Role.SERVER)
        pc = make_peer_connection([])
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        counter = _CountingQueue()
        transceiver.receiver._RTCRtpReceiver__decoder_queue = counter  # type: ignore[attr-defined]
        await pc.setLocalDescription(await pc.createOffer())
        session = os.urandom(12).hex()
        sdp = pc.localDescription.sdp
        ts = int(time.time() * 1000)
        signature = sign(identity.private_key,
                         offer_statement(device_id, session, ts, identity.key, sdp))
        await ws.send_str(encode(Role.VIEWER, "offer", device_id=device_id, session_id=session,
                                 sdp=sdp, viewer_key=identity.key, timestamp=ts,
                                 signature=signature))
        answer = parse(await ws.receive_str(timeout=30), Role.SERVER)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.sleep(warmup)
        start = counter.frames
        await asyncio.sleep(seconds)
        rate = (counter.frames - start) / seconds
        await ws.send_str(encode(Role.VIEWER, "bye", session_id=session))
        await pc.close()
        return rate


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


# -- benchmarks ----------------------------------------------------------------


async def bench_ttff(args: argparse.Namespace) -> dict[str, Any]:
    pin_loopback()
    from camera.viewer import view

    runner, url = await start_rendezvous()
    camera = await Camera(url, "passthrough", Path(args.state) / "ttff", 1280, 720).started()
    link = camera.link(url)
    try:
        await asyncio.sleep(1)
        await view(camera.link(url, pair=True), seconds=0.2)  # pair this CLI key, untimed
        cli: list[float] = []
        for _ in range(args.trials):
            # Joins a second apart: the keyframe limiter (2/s, burst 2) is not the thing
            # measured here; back-to-back trials would wait for its tokens.
            await asyncio.sleep(1.0)
            stats = await view(link, seconds=0.3)
            assert stats.ttff_ms is not None
            cli.append(stats.ttff_ms)
        # Each trial is a fresh browser profile: it pairs from the link (not timed:
        # the page's clock starts at the offer's preparation, after pairing).
        browser, timelines = await chromium_ttff(camera.link(url, pair=True), args.trials)
    finally:
        camera.stop()
        await runner.cleanup()
    phases = {name: round(statistics.median(t[name] for t in timelines if name in t), 1)
              for name in ("offer", "answer", "connected", "firstFrame")
              if any(name in t for t in timelines)}
    result = {"video": "1280x720@30 2 Mbit/s", "cli_ms": cli, "chromium_ms": browser,
              "chromium_timelines": timelines, "chromium_phases_p50": phases,
              "cli": summary(cli), "chromium": summary(browser) if browser else None}
    print(f"ttff CLI p50 {result['cli']['p50']} ms; Chromium p50 "
          f"{result['chromium']['p50'] if browser else 'n/a'} ms")
    return result


async def chromium_ttff(link: str, trials: int) -> tuple[list[float], list[dict[str, float]]]:
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        raise SystemExit("bench: Chromium is missing (scripts/setup --test installs it)")
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT))
    from tests.browser.conftest import CHROMIUM_ARGS

    out: list[float] = []
    timelines: list[dict[str, float]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for _ in range(trials):
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(link)
            await page.wait_for_function("window.peercam && window.peercam.ttffMs > 0",
                                         timeout=20_000)
            out.append(float(await page.evaluate("window.peercam.ttffMs")))
            timelines.append(await page.evaluate("({...window.peercam.timeline})"))
            await context.close()
        await browser.close()
    return out, timelines


async def bench_viewers(args: argparse.Namespace) -> dict[str, Any]:
    pin_loopback()
    counts = [int(c) for c in args.counts.split(",")]
    runner, url = await start_rendezvous()
    rows: list[dict[str, Any]] = []
    try:
        for mode in ("passthrough", "perviewer"):
            for count in counts:
                camera = await Camera(
                    url, mode, Path(args.state) / mode, args.width, args.height).started()
                try:
                    await asyncio.sleep(1.0)
                    from camera.viewer import view

                    await view(camera.link(url, pair=True), seconds=0.1)  # pair, untimed
                    await asyncio.sleep(1.0)
                    idle0, t0 = camera.cpu_seconds(), time.monotonic()
                    await asyncio.sleep(2.0)
                    idle_cpu = (camera.cpu_seconds() - idle0) / (time.monotonic() - t0)
                    viewers = [asyncio.ensure_future(
                        null_viewer(url, camera.device_id, args.seconds, warmup=3.0))
                        for _ in range(count)]
                    await asyncio.sleep(3.0)
                    c0, t0 = camera.cpu_seconds(), time.monotonic()
                    await asyncio.sleep(args.seconds)
                    cpu = (camera.cpu_seconds() - c0) / (time.monotonic() - t0)
                    rss = camera.rss_mib()
                    rates = await asyncio.gather(*viewers)
                finally:
                    camera.stop()
                row = {"mode": mode, "viewers": count, "cpu_core": round(cpu, 3),
                       "idle_cpu_core": round(idle_cpu, 3), "rss_mib": round(rss, 1),
                       "fps_min": round(min(rates), 1), "fps_median": round(
                           statistics.median(rates), 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        await runner.cleanup()
    return {"video": f"{args.width}x{args.height}@30 2 Mbit/s", "seconds": args.seconds,
            "rows": rows, "marginal": marginal(rows)}


def marginal(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope of camera CPU over viewer count, per mode (cores per viewer)."""
    out = {}
    for mode in ("passthrough", "perviewer"):
        pts = [(r["viewers"], r["cpu_core"]) for r in rows if r["mode"] == mode]
        if len(pts) >= 2:
            mx = statistics.mean(p[0] for p in pts)
            my = statistics.mean(p[1] for p in pts)
            den = sum((x - mx) ** 2 for x, _ in pts)
            out[mode] = round(sum((x - mx) * (y - my) for x, y in pts) / den, 4) if den else 0.0
    return out


def plot_viewers(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, label in (("passthrough", "peercam passthrough (one encode)"),
                        ("perviewer", "aiortc default (encode per viewer)")):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        ax.plot([r["viewers"] for r in rows], [100 * r["cpu_core"] for r in rows], "o-",
                label=label)
    ax.set_xlabel("viewers")
    ax.set_ylabel("camera CPU (% of one core)")
    ax.set_title(f"Camera CPU per viewer count, {result['video']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ttff(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [result["cli_ms"]] + ([result["chromium_ms"]] if result["chromium_ms"] else [])
    labels = ["CLI viewer"] + (["Chromium"] if result["chromium_ms"] else [])
    ax.boxplot(data, tick_labels=labels, orientation="horizontal")
    ax.set_xlabel("time to first decoded frame (ms), loopback")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}


def write_markdown(ttff: dict[str, Any] | None, viewers: dict[str, Any] | None) -> None:
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `scripts/bench all`; raw samples in `docs/bench/*.json`. Medians and",
        "ratios come from one run on one machine; it is shared and noisy, so read them as",
        "orders of magnitude, not as promises.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"kernel {m['kernel']}, {m['date']}.",
        "",
    ]
    if ttff:
        lines += [
            "## Time to first frame (loopback, 1280x720@30, 2 Mbit/s)",
            "",
            "From the viewer starting its peer connection to the first decoded frame;",
            "the camera sends an IDR when a viewer joins.",
            "",
            "| viewer | trials | p50 ms | p95 ms | min | max |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in (("cli", "CLI (`peercam view`)"), ("chromium", "Chromium (web viewer)")):
            s = ttff.get(key)
            if s:
                lines.append(f"| {label} | {s['n']} | {s['p50']} | {s['p95']} | {s['min']} | "
                             f"{s['max']} |")
        phases = ttff.get("chromium_phases_p50")
        if phases:
            lines += [
                "",
                "Where Chromium's time goes (medians, ms from the start of the attempt): "
                + ", ".join(f"{k} {v}" for k, v in phases.items()) + ". Most of it is",
                "Chromium gathering its own host candidates before the non-trickle offer;",
                "the camera's part (offer in, answer out) is the `offer` → `answer` step.",
            ]
        lines += ["", "![first frame](bench/ttff.png)", ""]
    if viewers:
        lines += [
            f"## Camera CPU per viewer ({viewers['video']})",
            "",
            "Camera process CPU (fraction of one core) over "
            f"{viewers['seconds']} s with N viewers connected, peercam's passthrough",
            "(one encode, an `av.Packet` track per viewer) against aiortc's default path",
            "(raw frames, one encoder per viewer) with the same test pattern, in the same run.",
            "Viewers receive and depayload but do not decode, so they do not starve the camera.",
            "",
            "| path | viewers | camera CPU (cores) | RSS MiB | viewer fps (min / median) |",
            "|---|---|---|---|---|",
        ]
        for r in viewers["rows"]:
            lines.append(f"| {r['mode']} | {r['viewers']} | {r['cpu_core']} | {r['rss_mib']} | "
                         f"{r['fps_min']} / {r['fps_median']} |")
        mg = viewers["marginal"]
        lines += [
            "",
            "Marginal cost per extra viewer (least-squares slope): "
            + ", ".join(f"{k} {100 * v:.2f}% of a core" for k, v in mg.items()) + ".",
            "",
            "![camera CPU](bench/viewers.png)",
            "",
        ]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("ttff")
    t.add_argument("--trials", type=int, default=10)
    v = sub.add_parser("viewers")
    v.add_argument("--counts", default="1,4,8")
    v.add_argument("--seconds", type=float, default=10.0)
    v.add_argument("--width", type=int, default=1280)
    v.add_argument("--height", type=int, default=720)
    a = sub.add_parser("all")
    a.add_argument("--trials", type=int, default=10)
    a.add_argument("--counts", default="1,4,8")
    a.add_argument("--seconds", type=float, default=10.0)
    a.add_argument("--width", type=int, default=1280)
    a.add_argument("--height", type=int, default=720)
    c = sub.add_parser("_camera")
    c.add_argument("--mode", choices=["passthrough", "perviewer"])
    c.add_argument("--rendezvous")
    c.add_argument("--state-dir")
    c.add_argument("--width", type=int)
    c.add_argument("--height", type=int)
    for p in (t, v, a):
        p.add_argument("--state", default="/tmp/peercam-bench")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "_camera":
        asyncio.run(camera_main(args))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    # The bench's CLI viewer key is its own, not the user's ~/.config/peercam one.
    os.environ["PEERCAM_VIEWER_DIR"] = str(Path(args.state) / "viewer")
    ttff = viewers = None
    if args.cmd in ("ttff", "all"):
        ttff = asyncio.run(bench_ttff(args))
        (OUT / "ttff.json").write_text(json.dumps({"machine": machine(), **ttff}, indent=1))
        plot_ttff(ttff, OUT / "ttff.png")
    if args.cmd in ("viewers", "all"):
        viewers = asyncio.run(bench_viewers(args))
        (OUT / "viewers.json").write_text(json.dumps({"machine": machine(), **viewers}, indent=1))
        plot_viewers(viewers, OUT / "viewers.png")
    # Each run rewrites the page from the newest results of every benchmark.
    if ttff is None and (OUT / "ttff.json").exists():
        ttff = json.loads((OUT / "ttff.json").read_text())
    if viewers is None and (OUT / "viewers.json").exists():
        viewers = json.loads((OUT / "viewers.json").read_text())
    write_markdown(ttff, viewers)


if __name__ == "__main__":
    main()
