"""Glass-to-glass latency on loopback, from the capture time burnt into each frame.

The test-pattern source stamps every picture with its capture time (wall clock,
ms; :mod:`camera.stamp`) before it draws and encodes it. Viewers decode the
video, read the stamp back and subtract it from the same machine's clock, so no
clock sync is involved. What one sample spans: draw + encode (camera) +
packetize + SRTP + loopback UDP + jitter buffer + depacketize + decode + reading
the stamp; for Chromium also the compositor and the canvas read-back.

* **CLI**: the path ``peercam view`` takes (:func:`camera.client.viewer.connect`, the
  aiortc decoder, :func:`camera.stamp.read` on the decoded luma, latency taken
  the way ``view()`` takes it). Each viewer runs in its own process so decoding
  does not share the camera's or the rendezvous' process; the viewer also notes
  when each frame's last packet arrived and when aiortc's jitter buffer released
  it, to split the total.
* **Chromium**: the web viewer as served, in headless Chromium; an injected
  script (``bench/stamp_reader.js``, camera/stamp.py's reader ported) draws the
  ``<video>`` to a canvas on every ``requestVideoFrameCallback`` and reads the
  stamp, keeping the callback's ``receiveTime`` and ``presentationTime``.
* **Chromium, playout-delay with and without**: one tab at a time, alternating
  (ABBA) for ``--playout-rounds`` rounds: the page as served, whose offer lists
  the playout-delay header extension that the camera answers and stamps 0/0, and
  the page told not to negotiate it (``setHeaderExtensionsToNegotiate``); each
  variant's rounds are pooled on the page. The same again with the tab's media
  through a loopback relay of its own (:class:`bench.impair.ImpairRelay`, the
  NAT lab's link model): ``--jitter-rounds`` through delay with jitter,
  ``--loss-rounds`` through random loss.
* **No WebRTC**: the same picture, libx264 settings, aiortc decoder and stamp
  reader in one thread, to separate codec time from transport time.

Nothing here asserts a time; a case whose frames carry no readable stamp stops
the benchmark with a message instead of reporting a number it did not measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CHROMIUM,
    ROOT,
    Camera,
    Missing,
    need_executable,
    percentile,
    pin_loopback,
    pyplot,
    start_rendezvous,
    summary,
)

NAME = "latency"
HELP = "glass-to-glass latency from the burnt-in capture time, CLI and Chromium"
SMOKE = ["--width", "320", "--height", "240", "--seconds", "1", "--warmup", "0.5",
         "--frames", "30", "--max-seconds", "5", "--cli-viewers", "1", "--chromium-tabs", "",
         "--chromium-hint-tabs", "", "--playout-rounds", "0", "--jitter-rounds", "1",
         "--loss-rounds", "0"]
NEEDS = ["chromium"]
TARGET_P50_MS = 60.0
CHROMIUM_TARGET_P50_MS = 35.0
"""Chromium, one tab on loopback, the page asking for minimal playout."""
READER_JS = Path(__file__).with_name("stamp_reader.js")
#: A stamp further off than this is not this run's frame (view() uses the same bound).
PLAUSIBLE_MS = 60_000.0
_VIEWER_CMD = ("import sys; from bench.latency import viewer_main; "
               "sys.exit(viewer_main(sys.argv[1:]))")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--seconds", type=float, default=12.0,
                   help="shortest measured window per case (12 s at 30 fps: 360 frames)")
    p.add_argument("--frames", type=int, default=300,
                   help="keep measuring until every viewer has this many stamped frames ...")
    p.add_argument("--max-seconds", type=float, default=40.0, help="... or this long")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of video discarded after every viewer has its first frame")
    p.add_argument("--cli-viewers", default="1,8", help="CLI viewer counts, one case each")
    p.add_argument("--chromium-tabs", default="1,8", help="Chromium tab counts, one case each")
    p.add_argument("--no-chromium", action="store_true", help="CLI viewers and baseline only")
    p.add_argument("--chromium-hint-tabs", default="",
                   help="Chromium tab counts run again with every receiver asked for "
                        "minimal playout (jitterBufferTarget = 0, playoutDelayHint = 0), "
                        "which the page does not do: the hint against the page as served, "
                        "in the same run ('' for none)")
    p.add_argument("--playout-rounds", type=int, default=3,
                   help="rounds of one Chromium tab with the camera's playout-delay header "
                        "extension negotiated (the page as served) and one without (the tab "
                        "stops negotiating it), alternating ABBA in the same run; 0: none")
    p.add_argument("--jitter-rounds", type=int, default=2,
                   help="the same rounds again with the tab's media through a loopback relay "
                        "adding --jitter-delay ± --jitter seconds each way (order kept); 0: none")
    p.add_argument("--jitter-delay", type=float, default=0.04)
    p.add_argument("--jitter", type=float, default=0.015)
    p.add_argument("--loss-rounds", type=int, default=2,
                   help="the same rounds again through a relay losing --loss of the media "
                        "each way, after --loss-delay seconds each way; 0: none")
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--loss-delay", type=float, default=0.02)


def _counts(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip() and int(c) > 0]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tabs = [] if args.no_chromium else _counts(args.chromium_tabs)
    if tabs:
        need_executable(CHROMIUM, "scripts/setup --test installs it")
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            raise Missing("playwright", "scripts/setup --test installs it") from None
    video = f"{args.width}x{args.height}@{args.fps} {args.bitrate / 1e6:g} Mbit/s"
    baseline = await asyncio.to_thread(measure_baseline, args)
    print(f"latency: no WebRTC p50 {baseline['summary']['p50']} ms", flush=True)
    pin_loopback()
    from camera.client.viewer import view

    runner, url = await start_rendezvous()
    state = Path(args.state) / NAME
    camera = await Camera(url, "passthrough", state / "camera", args.width, args.height,
                          bitrate=args.bitrate, fps=args.fps).started()
    cases: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(1)
        await view(camera.link(url, pair=True), seconds=0.2)  # pair the CLI key, untimed
        for count in _counts(args.cli_viewers):
            await asyncio.sleep(1)
            cases.append(await cli_case(camera, camera.link(url), count, args, state))
            _progress(cases[-1])
        for count in tabs:
            await asyncio.sleep(1)
            # Every tab is a fresh profile that pairs from the link (reusable window).
            cases.append(await chromium_case(camera, camera.link(url, pair=True), count, args))
            _progress(cases[-1])
        for count in ([] if args.no_chromium else _counts(args.chromium_hint_tabs)):
            await asyncio.sleep(1)
            cases.append(await chromium_case(camera, camera.link(url, pair=True), count, args,
                                             variant="hint"))
            _progress(cases[-1])
        from services.natlab.shaping import Impairment

        links: tuple[tuple[str, Impairment | None, int], ...] = (
            ("", None, args.playout_rounds),
            ("jitter", Impairment(delay=args.jitter_delay, jitter=args.jitter),
             args.jitter_rounds),
            ("loss", Impairment(delay=args.loss_delay, loss=args.loss), args.loss_rounds))
        for link_name, link_model, rounds in links:
            for n in range(0 if args.no_chromium else rounds):
                # ABBA: each variant goes first as often as second across two rounds.
                order = ("", "noext") if n % 2 == 0 else ("noext", "")
                for variant in order:
                    await asyncio.sleep(1)
                    case = await chromium_case(camera, camera.link(url, pair=True), 1, args,
                                               variant=variant, network=link_name,
                                               link_model=link_model)
                    case["round"] = n + 1
                    cases.append(case)
                    _progress(cases[-1])
    finally:
        camera.stop()
        await runner.cleanup()
    return {"video": video, "fps": args.fps, "seconds": args.seconds, "warmup": args.warmup,
            "frames": args.frames, "max_seconds": args.max_seconds,
            "playout_rounds": 0 if args.no_chromium else args.playout_rounds,
            "jitter_rounds": 0 if args.no_chromium else args.jitter_rounds,
            "jitter_link": {"delay_ms": round(1000 * args.jitter_delay, 1),
                            "jitter_ms": round(1000 * args.jitter, 1)},
            "loss_rounds": 0 if args.no_chromium else args.loss_rounds,
            "loss_link": {"delay_ms": round(1000 * args.loss_delay, 1),
                          "loss_percent": round(100 * args.loss, 2)},
            "target_p50_ms": TARGET_P50_MS, "chromium_target_p50_ms": CHROMIUM_TARGET_P50_MS,
            "baseline": baseline, "cases": cases}


def _progress(case: dict[str, Any]) -> None:
    s = case["summary"]
    extra = ""
    if "playout_delay_negotiated" in case:
        extra = f", playout-delay {'on' if case['playout_delay_negotiated'] else 'off'}"
    print(f"latency: {case['viewer']} x{case['viewers']}: p50 {s['p50']} ms, p95 {s['p95']} ms, "
          f"fps min {case['fps_min']}, missed {case['lost']}{extra}", flush=True)


# --- no WebRTC: draw, encode, decode, read in one thread ---------------------------------


def measure_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The camera's picture and encoder and the viewer's decoder and reader, no transport.

    Paced at the source's frame rate like the camera, one picture at a time.
    """
    from aiortc.codecs.h264 import H264Decoder
    from aiortc.jitterbuffer import JitterFrame

    from camera import stamp
    from camera.errors import SourceError
    from camera.frames import VIDEO_CLOCK_RATE
    from camera.sources.base import VideoSettings
    from camera.sources.testpattern import _Painter
    from camera.sources.x264 import X264Encoder

    settings = VideoSettings(width=args.width, height=args.height, fps=args.fps,
                             bitrate=args.bitrate)
    painter = _Painter(settings.width, settings.height)
    try:
        encoder = X264Encoder(settings)  # the test pattern's preset and options
    except SourceError as exc:
        raise Missing("libx264", str(exc)) from None
    decoder = H264Decoder()  # what aiortc's receiver decodes with
    period = 1.0 / settings.fps
    skip = round(args.warmup * settings.fps)
    total = skip + max(1, round(args.seconds * settings.fps))
    stages: dict[str, list[float]] = {"drawn": [], "encoded": [], "decoded": [], "read": []}
    unreadable = 0
    start = time.monotonic()
    try:
        for n in range(total):
            delay = start + n * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            capture = time.time()
            capture_ms = int(capture * 1000)  # what the source burns in
            yuv = painter.render(n, capture_ms)
            drawn = time.time()
            pictures = encoder.encode_yuv(yuv, force_idr=n == 0)
            encoded = time.time()
            frames: list[Any] = []  # av.VideoFrame
            for picture in pictures:
                frames += decoder.decode(
                    JitterFrame(picture.data, n * VIDEO_CLOCK_RATE // settings.fps))
            decoded = time.time()
            for frame in frames:
                got = stamp.read(frame.to_ndarray(format="gray"))
                read = time.time()
                if got is None or got[0] != n:
                    unreadable += 1
                    continue
                if n >= skip:
                    for key, at in (("drawn", drawn), ("encoded", encoded),
                                    ("decoded", decoded), ("read", read)):
                        stages[key].append(round(at * 1000 - capture_ms, 2))
    finally:
        encoder.close()
    if not stages["read"]:
        raise SystemExit("bench: latency: the no-WebRTC baseline decoded no frame with a "
                         f"readable stamp ({unreadable} unreadable); nothing was measured")
    return {"latency_ms": stages["read"], "stages_ms": stages, "unreadable": unreadable,
            "summary": summary(stages["read"]),
            "stages_p50": {k: round(statistics.median(v), 1) for k, v in stages.items()}}


# --- CLI viewers, each in its own process ---------------------------------------------------


async def cli_case(camera: Camera, link: str, count: int, args: argparse.Namespace,
                   state: Path) -> dict[str, Any]:
    """``count`` CLI viewers in separate processes, all measuring the same window."""
    state.mkdir(parents=True, exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        for i in range(count):
            log = state / f"cli-{count}-{i}.log"
            logs.append(log)
            with log.open("w") as err:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _VIEWER_CMD, "--link", link,
                    "--warmup", str(args.warmup), "--seconds", str(args.seconds),
                    "--frames", str(args.frames), "--max-seconds", str(args.max_seconds),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=err, cwd=ROOT))
        for i, proc in enumerate(procs):
            line = await _line(proc, 90, logs[i])
            if line != "READY":
                raise SystemExit(f"bench: latency: CLI viewer {i} did not start: {line!r} "
                                 f"({_tail(logs[i])})")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"GO\n")
            await proc.stdin.drain()
        await asyncio.sleep(args.warmup)
        cpu0, t0 = camera.cpu_seconds(), time.monotonic()
        viewers = []
        for i, proc in enumerate(procs):
            line = await _line(proc, args.max_seconds + 60, logs[i])
            if not line.startswith("RESULT "):
                raise SystemExit(f"bench: latency: CLI viewer {i} failed: {line!r} "
                                 f"({_tail(logs[i])})")
            viewers.append(json.loads(line.split(" ", 1)[1]))
        camera_cpu = (camera.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        for proc in procs:
            await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    for i, v in enumerate(viewers):
        _require_stamps(f"CLI viewer {i} of {count}", v)
    return _case("cli", count, viewers, camera_cpu,
                 ("arrived", "released", "decoded", "read"))


async def _line(proc: asyncio.subprocess.Process, timeout: float, log: Path) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        raise SystemExit(f"bench: latency: a CLI viewer said nothing for {timeout:.0f} s "
                         f"({_tail(log)})") from None
    return raw.decode().strip()


def _tail(log: Path) -> str:
    text = log.read_text().strip() if log.exists() else ""
    return text[-1500:] or "no output"


def _require_stamps(who: str, viewer: dict[str, Any]) -> None:
    if not viewer["latency_ms"]:
        raise SystemExit(
            f"bench: latency: {who} had {viewer['frames']} frame(s) in the window and none "
            f"with a readable stamp ({viewer['unreadable']} unreadable); is the camera's "
            "source the test pattern? nothing was measured")


def viewer_main(argv: list[str]) -> int:
    """One measuring CLI viewer (a child process of :func:`cli_case`).

    Prints ``READY`` once video plays, measures after a ``GO`` line on stdin,
    then prints ``RESULT <json>``.
    """
    import logging

    p = argparse.ArgumentParser(prog="bench-latency-viewer")
    p.add_argument("--link", required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--max-seconds", type=float, required=True)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pin_loopback()
    result = asyncio.run(measure_cli_viewer(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


async def measure_cli_viewer(args: argparse.Namespace) -> dict[str, Any]:
    """Watch like ``peercam view`` and time each frame's stages (see the module doc)."""
    from aiortc.mediastreams import MediaStreamError

    from camera.client.viewer import Connection, connect, release_frames_on_marker, stamp_region
    from camera.compat import receiver as hooks
    from camera.stamp import read as read_stamp
    from camera.webrtc import prefer_h264

    # Per frame, wall-clock seconds: the last RTP packet's arrival and the jitter
    # buffer's release, keyed first by the JitterFrame, then by its (mapped) timestamp.
    last_packet: dict[int, float] = {}
    released: dict[int, tuple[float, float]] = {}
    by_pts: dict[int, tuple[float, float]] = {}
    # (read_at, frame_number | None, capture_ms | None, arrived, released, decoded)
    rows: list[tuple[float, int | None, int | None, float | None, float | None, float]] = []
    first = asyncio.Event()
    tasks: set[asyncio.Future[None]] = set()

    def instrument(receiver: Any) -> None:
        import queue

        jitter = hooks.jitter_buffer(receiver)  # IncompatibleLibrary if aiortc moved it
        add = jitter.add

        def timed_add(packet: Any) -> Any:
            last_packet[packet.timestamp] = time.time()
            if len(last_packet) > 256:
                last_packet.pop(next(iter(last_packet)))
            pli, frame = add(packet)
            if frame is not None:
                now = time.time()
                released[id(frame)] = (last_packet.pop(frame.timestamp, now), now)
            return pli, frame

        class TimedQueue(queue.Queue):  # type: ignore[type-arg]
            def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
                if item is not None:
                    frame = item[1]
                    times = released.pop(id(frame), None)
                    if times is not None:
                        by_pts[frame.timestamp] = times
                        if len(by_pts) > 256:
                            by_pts.pop(next(iter(by_pts)))
                super().put(item, block, timeout)

        jitter.add = timed_add  # type: ignore[method-assign]
        hooks.set_decoder_queue(receiver, TimedQueue())

    async def consume(track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            decoded = time.time()
            stamp = read_stamp(stamp_region(frame))
            read_at = time.time()  # view() takes the latency here too
            first.set()
            times = by_pts.pop(frame.pts, (None, None))
            if stamp is None:
                rows.append((read_at, None, None, None, None, decoded))
            else:
                rows.append((read_at, stamp[0], stamp[1], times[0], times[1], decoded))

    def setup(connection: Connection) -> None:
        transceiver = connection.pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        release_frames_on_marker(transceiver.receiver)
        instrument(transceiver.receiver)

        @connection.pc.on("track")
        def on_track(track: Any) -> None:
            tasks.add(asyncio.ensure_future(consume(track)))

    loop = asyncio.get_running_loop()
    async with connect(args.link, setup, connect_timeout=args.connect_timeout):
        try:
            async with asyncio.timeout(args.connect_timeout):
                await first.wait()
            print("READY", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)  # GO
            await asyncio.sleep(args.warmup)
            start, cpu0 = time.time(), time.process_time()
            while True:
                await asyncio.sleep(0.1)
                elapsed = time.time() - start
                if elapsed >= args.max_seconds or elapsed >= args.seconds and sum(
                        1 for r in rows if r[0] >= start and r[2] is not None) >= args.frames:
                    break
            end, cpu1 = time.time(), time.process_time()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    window = [r for r in rows if start <= r[0] <= end]
    stamped = [r for r in window if r[2] is not None
               and 0 <= r[0] * 1000 - r[2] < PLAUSIBLE_MS]

    def since_capture(at: float | None, capture_ms: int) -> float | None:
        return None if at is None else round(at * 1000 - capture_ms, 2)

    numbers = [r[1] for r in stamped if r[1] is not None]
    return {
        "frames": len(window),
        "unreadable": len(window) - len(stamped),
        "seconds": round(end - start, 2),
        "fps": round(len(window) / (end - start), 2),
        "source_fps": _source_fps(numbers, end - start),
        "lost": _lost(numbers),
        "cpu_core": round((cpu1 - cpu0) / (end - start), 3),
        "frame_numbers": numbers,
        "latency_ms": [since_capture(r[0], r[2]) for r in stamped if r[2] is not None],
        "stages_ms": {
            "arrived": [since_capture(r[3], r[2]) for r in stamped if r[2] is not None],
            "released": [since_capture(r[4], r[2]) for r in stamped if r[2] is not None],
            "decoded": [since_capture(r[5], r[2]) for r in stamped if r[2] is not None],
        },
    }


def _source_fps(numbers: list[int], seconds: float) -> float:
    """Pictures the camera made in the window: its frame numbers count every one."""
    return round((max(numbers) - min(numbers) + 1) / seconds, 2) if numbers else 0.0


def _lost(numbers: list[int]) -> int:
    """Frame numbers missing between the first and last one seen (mod 2**24 ignored)."""
    if not numbers:
        return 0
    return max(0, max(numbers) - min(numbers) + 1 - len(set(numbers)))


# --- Chromium: the web viewer as served, the stamp read back from a canvas ------------------


# Lets the bench find the page's peer connection for getStats() (the page keeps it private).
_PC_RECORDER_JS = """(() => {
  const Native = window.RTCPeerConnection;
  if (typeof Native !== "function") return;
  const made = [];
  window.peercamBenchConnections = made;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); made.push(this); }
  };
})();"""

# Chromium's own counters for the video it receives (cumulative; the bench takes deltas).
_INBOUND_STATS_JS = """async () => {
  const made = window.peercamBenchConnections || [];
  const pc = made.filter((p) => p.connectionState !== "closed").pop();
  if (!pc) return null;
  for (const s of (await pc.getStats()).values()) {
    if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") {
      const keys = ["framesReceived", "framesDecoded", "framesDropped", "packetsLost",
        "jitterBufferDelay", "jitterBufferTargetDelay", "jitterBufferEmittedCount",
        "totalDecodeTime", "totalProcessingDelay", "freezeCount"];
      return Object.fromEntries(keys.map((k) => [k, typeof s[k] === "number" ? s[k] : null]));
    }
  }
  return null;
}"""


# Every receiver asked for minimal playout as the track arrives (the page does not ask):
# jitterBufferTarget (ms, the standard name) and playoutDelayHint (s, Chromium's older one).
_PLAYOUT_HINT_JS = """(() => {
  const Native = window.RTCPeerConnection;
  if (typeof Native !== "function") return;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("track", (ev) => {
        if ("jitterBufferTarget" in ev.receiver) ev.receiver.jitterBufferTarget = 0;
        if ("playoutDelayHint" in ev.receiver) ev.receiver.playoutDelayHint = 0;
      });
    }
  };
})();"""


PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"

# The tab stops negotiating the playout-delay header extension (the standard
# setHeaderExtensionsToNegotiate): its offer no longer lists it, so the camera
# neither answers nor stamps it. Everything else is the page as served.
_NO_PLAYOUT_EXTENSION_JS = """(() => {
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (...args) {
    const t = add.apply(this, args);
    if (typeof t.setHeaderExtensionsToNegotiate !== "function") {
      throw new Error("bench: this Chromium cannot stop negotiating a header extension");
    }
    t.setHeaderExtensionsToNegotiate(t.getHeaderExtensionsToNegotiate().map((e) =>
      e.uri === "%s" ? { ...e, direction: "stopped" } : e));
    return t;
  };
})();""" % PLAYOUT_DELAY_URI

# Whether the camera's answer (the page's remote description) carries the extension.
_ANSWER_HAS_PLAYOUT_JS = """() => {
  const made = window.peercamBenchConnections || [];
  const pc = made.filter((p) => p.connectionState !== "closed").pop();
  const sdp = pc && pc.remoteDescription ? pc.remoteDescription.sdp : "";
  return sdp.includes("%s");
}""" % PLAYOUT_DELAY_URI

_VARIANT_JS = {"hint": _PLAYOUT_HINT_JS, "noext": _NO_PLAYOUT_EXTENSION_JS}


async def chromium_case(camera: Camera, link: str, tabs: int,
                        args: argparse.Namespace, *, variant: str = "",
                        network: str = "", link_model: Any = None) -> dict[str, Any]:
    """``tabs`` tabs of the page as served; ``variant`` "hint": every receiver asked
    for minimal playout; "noext": the playout-delay extension not negotiated.
    ``network`` ("jitter", "loss"): each tab's media through a loopback relay of its
    own impaired by ``link_model`` both ways (a :class:`services.natlab.shaping.Impairment`)."""
    from bench.impair import ImpairRelay

    name = "-".join(["chromium", *([network] if network else []),
                     *([variant] if variant else [])])
    reader = READER_JS.read_text()
    relays = [await ImpairRelay(link_model, link_model, seed=k + 1).start()
              for k in range(tabs if link_model is not None else 0)]
    try:
        return await _chromium_tabs(camera, link, tabs, args, variant, relays, reader, name)
    finally:
        for relay in relays:
            relay.close()


async def _chromium_tabs(camera: Camera, link: str, tabs: int, args: argparse.Namespace,
                         variant: str, relays: list[Any], reader: str,
                         name: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from bench.badnet import _RELAY_JS

    sys.path.insert(0, str(ROOT))
    from tests.browser.conftest import CHROMIUM_ARGS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for k in range(tabs):
                context = await browser.new_context(bypass_csp=True)  # wait_for_function: eval
                if relays:  # also keeps the peer connection reachable, as the recorder does
                    await context.add_init_script(
                        f"({_RELAY_JS})([{relays[k].camera_port}, {relays[k].viewer_port}])")
                else:
                    await context.add_init_script(_PC_RECORDER_JS)
                if variant:
                    await context.add_init_script(_VARIANT_JS[variant])
                page = await context.new_page()
                await page.goto(link)
                pages.append(page)
            for i, page in enumerate(pages):
                try:
                    await page.wait_for_function(
                        "window.peercam && window.peercam.ttffMs > 0", timeout=60_000)
                except Exception as exc:
                    error = await page.evaluate("window.peercam && window.peercam.lastError")
                    raise SystemExit(f"bench: latency: Chromium tab {i} of {tabs} got no "
                                     f"video ({error or exc})") from None
                await page.evaluate(reader, "video")
            await asyncio.sleep(args.warmup)
            negotiated = [await page.evaluate(_ANSWER_HAS_PLAYOUT_JS) for page in pages]
            before = [await page.evaluate(_INBOUND_STATS_JS) for page in pages]
            start = time.time() * 1000
            cpu0, t0 = camera.cpu_seconds(), time.monotonic()
            await asyncio.sleep(args.seconds)
            count = "(t) => window.peercamLatency.samples.filter((s) => s[2] >= t).length"
            while time.time() * 1000 - start < 1000 * args.max_seconds:
                counts = [await page.evaluate(count, start) for page in pages]
                if min(counts) >= args.frames:
                    break
                await asyncio.sleep(0.5)
            camera_cpu = (camera.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            end = time.time() * 1000
            after = [await page.evaluate(_INBOUND_STATS_JS) for page in pages]
            states = [await page.evaluate("window.peercamLatency") for page in pages]
        finally:
            await browser.close()
    viewers = [{**_chromium_viewer(s, start, end), "chromium_stats": _stats_delta(b, a)}
               for s, b, a in zip(states, before, after, strict=True)]
    for i, v in enumerate(viewers):
        _require_stamps(f"Chromium tab {i} of {tabs}", v)
    case = _case(name, tabs, viewers, camera_cpu, ("received", "presented", "callback", "read"))
    case["playout_delay_negotiated"] = all(negotiated)
    if any(negotiated) != all(negotiated):
        raise SystemExit(f"bench: latency: {sum(negotiated)} of {tabs} tabs negotiated the "
                         "playout-delay extension; a case must be one or the other")
    stats = [v["chromium_stats"] for v in viewers if v["chromium_stats"]]
    if stats:
        case["chromium_stats"] = {
            key: round(statistics.median(s[key] for s in stats), 1) for key in stats[0]
            if all(s.get(key) is not None for s in stats)}
    return case


def _stats_delta(before: dict[str, Any] | None,
                 after: dict[str, Any] | None) -> dict[str, float | None] | None:
    """Chromium's counters over the window: means per frame in ms, counts as counts."""
    if not before or not after:
        return None

    def delta(key: str) -> float | None:
        a, b = after.get(key), before.get(key)
        return None if a is None or b is None else a - b

    def per(key: str, frames: str) -> float | None:
        total, count = delta(key), delta(frames)
        return round(1000 * total / count, 1) if total is not None and count else None

    return {
        "jitter_buffer_ms": per("jitterBufferDelay", "jitterBufferEmittedCount"),
        "jitter_buffer_target_ms": per("jitterBufferTargetDelay", "jitterBufferEmittedCount"),
        "decode_ms": per("totalDecodeTime", "framesDecoded"),
        "processing_ms": per("totalProcessingDelay", "framesDecoded"),
        "frames_received": delta("framesReceived"),
        "frames_decoded": delta("framesDecoded"),
        "frames_dropped": delta("framesDropped"),
        "packets_lost": delta("packetsLost"),
        "freezes": delta("freezeCount"),
    }


def _chromium_viewer(state: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    window = [s for s in state["samples"] if start <= s[2] <= end
              and 0 <= s[2] - s[1] < PLAUSIBLE_MS]

    def since_capture(at: float | None, sample: list[Any]) -> float | None:
        # The callback's metadata describes the frame it was called for; when the
        # renderer is late the canvas may already hold a newer one. A time before that
        # frame's capture or after its read-back is the other frame's: left out.
        if at is None or not sample[1] <= at <= sample[2]:
            return None
        return round(float(at - sample[1]), 2)

    numbers = [int(s[0]) for s in window]
    seconds = (end - start) / 1000
    shown = sorted(s[2] for s in window)
    return {
        "intervals_ms": [round(b - a, 2) for a, b in zip(shown, shown[1:], strict=False)],
        "frames": len(window),
        "unreadable": state["unreadable"],
        "repeated": state["repeated"],
        "seconds": round(seconds, 2),
        "fps": round(len(window) / seconds, 2),
        "source_fps": _source_fps(numbers, seconds),
        "lost": _lost(numbers),
        "clock_skew_ms": round(state["clockSkewMs"], 2),
        "frame_numbers": numbers,
        "latency_ms": [round(s[2] - s[1], 2) for s in window],
        "stages_ms": {
            "received": [since_capture(s[3], s) for s in window],
            "presented": [since_capture(s[4], s) for s in window],
            "processing": [None if s[5] is None else round(s[5], 2) for s in window],
            "callback": [since_capture(s[6], s) for s in window],
        },
    }


# --- results --------------------------------------------------------------------------------


def _case(viewer: str, count: int, viewers: list[dict[str, Any]], camera_cpu: float,
          stages: tuple[str, ...]) -> dict[str, Any]:
    pooled = [x for v in viewers for x in v["latency_ms"]]
    stages_p50: dict[str, float] = {}
    for stage in stages:
        values = pooled if stage == "read" else [
            x for v in viewers for x in v["stages_ms"].get(stage, []) if x is not None]
        if values:
            stages_p50[stage] = round(statistics.median(values), 1)
    rates = [v["fps"] for v in viewers]
    return {"viewer": viewer, "viewers": count, "latency_ms": pooled, "summary": summary(pooled),
            "stages_p50": stages_p50, "fps_min": min(rates),
            "fps_median": round(statistics.median(rates), 1),
            "source_fps": round(statistics.median(v["source_fps"] for v in viewers), 1),
            "frames_min": min(v["frames"] for v in viewers),
            "lost": sum(v["lost"] for v in viewers),
            "camera_cpu_core": round(camera_cpu, 3), "per_viewer": viewers}


_LABELS = {"cli": "CLI (`peercam view` path)", "chromium": "Chromium (web viewer)",
           "chromium-hint": "Chromium, asked for minimal playout (not shipped)",
           "chromium-noext": "Chromium, playout-delay extension not negotiated",
           "chromium-jitter": "Chromium through a jittery link, playout-delay 0/0 negotiated",
           "chromium-jitter-noext": "Chromium through a jittery link, playout-delay extension "
                                    "not negotiated",
           "chromium-loss": "Chromium through a lossy link, playout-delay 0/0 negotiated",
           "chromium-loss-noext": "Chromium through a lossy link, playout-delay extension "
                                  "not negotiated"}


_STAGES = {"cli": ("arrived", "released", "decoded", "read")}
_CHROMIUM_STAGES = ("received", "presented", "callback", "read")


def merged(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The cases, those of the playout rounds pooled into one per variant (each round's
    tab counted as one viewer of it); in the order each variant first ran."""
    out: list[dict[str, Any]] = []
    rounds: dict[str, list[dict[str, Any]]] = {}
    for case in result["cases"]:
        if "round" not in case:
            out.append(case)
            continue
        if case["viewer"] not in rounds:
            rounds[case["viewer"]] = []
            out.append({"viewer": case["viewer"], "pending": True})
        rounds[case["viewer"]].append(case)
    for i, case in enumerate(out):
        if not case.get("pending"):
            continue
        runs = rounds[case["viewer"]]
        pooled = _case(case["viewer"], 1, [v for r in runs for v in r["per_viewer"]],
                       statistics.mean(r["camera_cpu_core"] for r in runs), _CHROMIUM_STAGES)
        pooled["rounds"] = len(runs)
        pooled["round_p50"] = [r["summary"]["p50"] for r in runs]
        pooled["round_p95"] = [r["summary"]["p95"] for r in runs]
        pooled["playout_delay_negotiated"] = all(r["playout_delay_negotiated"] for r in runs)
        stats = [r["chromium_stats"] for r in runs if r.get("chromium_stats")]
        if stats:
            sums = ("frames_received", "frames_decoded", "frames_dropped", "packets_lost",
                    "freezes")
            pooled["chromium_stats"] = {
                key: (sum(s[key] for s in stats) if key in sums
                      else round(statistics.median(s[key] for s in stats), 1))
                for key in stats[0] if all(s.get(key) is not None for s in stats)}
        out[i] = pooled
    return out


def _find(result: dict[str, Any], viewer: str, count: int) -> dict[str, Any] | None:
    for case in merged(result):
        if case["viewer"] == viewer and case["viewers"] == count:
            found: dict[str, Any] = case
            return found
    return None


def headline(result: dict[str, Any]) -> str:
    parts = []
    for case in merged(result):
        s = case["summary"]
        parts.append(f"{case['viewer']} x{case['viewers']} p50 {s['p50']} / p95 {s['p95']} ms"
                     f" ({case['fps_min']} fps min)")
    base = result["baseline"]["summary"]["p50"]
    return (f"latency: {'; '.join(parts)}; no-WebRTC codec baseline p50 {base} ms; "
            f"target p50 ≤ {result['target_p50_ms']:g} ms")


def _short(case: dict[str, Any]) -> str:
    rounds = f" ({case['rounds']} rounds)" if "rounds" in case else ""
    return f"{case['viewer']} × {case['viewers']}{rounds}"


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.2))
    series = [("no WebRTC (codec only)", result["baseline"]["latency_ms"])]
    series += [(_short(c), c["latency_ms"]) for c in merged(result)]
    for label, values in series:
        ordered = sorted(values)
        cdf.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    cdf.axvline(result["target_p50_ms"], color="grey", linestyle=":", label="target p50")
    cdf.set_xscale("log")
    cdf.set_xlabel("capture → stamp read back (ms, log)")
    cdf.set_ylabel("fraction of frames")
    cdf.set_title(f"Glass-to-glass latency, {result['video']}")
    cdf.grid(alpha=0.3, which="both")
    cdf.legend(fontsize=8)
    # Where the median goes: consecutive stage medians, stacked.
    rows = [("no WebRTC", result["baseline"]["stages_p50"])]
    rows += [(_short(c), c["stages_p50"]) for c in merged(result)]
    colours: dict[str, Any] = {}
    for y, (_label, stages) in enumerate(rows):
        left = 0.0
        for stage, at in stages.items():
            width = max(0.0, at - left)
            if stage not in colours:
                colours[stage] = f"C{len(colours)}"
                bars.barh(y, width, left=left, color=colours[stage], label=f"→ {stage}")
            else:
                bars.barh(y, width, left=left, color=colours[stage])
            left = max(left, at)
    bars.set_yticks(range(len(rows)), [r[0] for r in rows])
    bars.invert_yaxis()
    bars.set_xlabel("ms since capture, median of each stage")
    bars.set_title("Where the time goes (medians)")
    bars.grid(alpha=0.3, axis="x")
    bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    return ["latency.png"]


_STAGE_TEXT = {
    "drawn": "picture drawn and stamped",
    "encoded": "encoded (libx264)",
    "arrived": "last RTP packet of the frame received",
    "received": "frame received (`receiveTime`)",
    "released": "released by aiortc's jitter buffer",
    "decoded": "decoded",
    "presented": "decoded, handed to the compositor (`presentationTime`)",
    "callback": "`requestVideoFrameCallback` ran",
    "read": "stamp read back (the latency)",
}


def markdown(result: dict[str, Any]) -> list[str]:
    base = result["baseline"]
    lines = [
        f"## Glass-to-glass latency (loopback, {result['video']})",
        "",
        "The test pattern stamps each picture with its capture time (wall clock) before it",
        "draws and encodes it; the viewer decodes, reads the stamp back from the picture and",
        "subtracts it from the same machine's clock. A sample therefore spans the camera's",
        "drawing and libx264 encode, packetizing, SRTP, loopback UDP, the receiver's jitter",
        "buffer, depacketizing, decoding and the read-back (for Chromium: the compositor,",
        "then a canvas draw on `requestVideoFrameCallback`). It leaves out a real sensor's",
        "exposure and readout and a screen's scan-out, and the network is loopback: this is",
        "what peercam's pipeline adds on one machine. The no-WebRTC row runs the same",
        "picture, encoder settings, aiortc decoder and stamp reader in one thread, so the",
        "difference is the transport and the receivers' buffering.",
        f"Each case discards {result['warmup']:g} s, then measures until every viewer has "
        f"{result['frames']} stamped frames (at least {result['seconds']:g} s, at most "
        f"{result['max_seconds']:g} s). CLI viewers run the `peercam view` path "
        "(`camera.client.viewer.connect`, aiortc's decoder, `camera.stamp.read`), each in its own "
        "process; Chromium tabs are the web viewer as served, each a fresh profile, read by "
        "`bench/stamp_reader.js` (camera/stamp.py's reader in JavaScript).",
        f"Target: p50 ≤ {result['target_p50_ms']:g} ms added by the pipeline (pi-webrtc "
        "claims ~200 ms glass-to-glass on a Pi).",
        "",
        "| viewer | viewers | frames (all / fewest per viewer) | viewer fps (min / median) "
        "| camera fps | missed | p50 ms | p95 ms | p99 ms | max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    s = base["summary"]
    lines.append(f"| no WebRTC: draw + encode + decode + read, one thread | – | {s['n']} | – | "
                 f"{result['fps']} | – | {s['p50']} | {s['p95']} | {s['p99']} | {s['max']} |")
    for case in merged(result):
        s = case["summary"]
        lines.append(f"| {_label(case)} | {case['viewers']} | {s['n']} / "
                     f"{case['frames_min']} | {case['fps_min']} / {case['fps_median']} | "
                     f"{case['source_fps']} | {case['lost']} | {s['p50']} | {s['p95']} | "
                     f"{s['p99']} | {s['max']} |")
    lines += [
        "",
        "*camera fps*: pictures the camera made during the window (its frame numbers count "
        "every one); *missed*: frame numbers in the window that a viewer never showed, summed "
        "over viewers (for Chromium that includes frames its renderer dropped).",
        "",
        *_playout_table(result),
        "Where the median goes (ms since capture, median of each stage):",
        "",
    ]
    columns = [("no WebRTC", base["stages_p50"])]
    columns += [(_short(c), c["stages_p50"]) for c in merged(result)]
    lines.append("| stage | " + " | ".join(c[0] for c in columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    for stage, text in _STAGE_TEXT.items():
        cells = [str(c[1][stage]) if stage in c[1] else "" for c in columns]
        if any(cells):
            lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += ["", *_notes(result), "",
              *[line for note in result.get("notes", []) for line in (note, "")],
              "![latency](bench/latency.png)", ""]
    return lines


def _intervals(case: dict[str, Any]) -> str:
    gaps = sorted(x for v in case["per_viewer"] for x in v.get("intervals_ms", []))
    if not gaps:
        return "–"
    return (f"{_n(percentile(gaps, 0.05))} / {_n(percentile(gaps, 0.95))} / "
            f"{_n(gaps[-1])}")


def _label(case: dict[str, Any]) -> str:
    label = _LABELS[case["viewer"]]
    if case["viewer"] == "chromium" and case.get("playout_delay_negotiated"):
        label = "Chromium (web viewer; playout-delay 0/0 negotiated)"
    if "rounds" in case:
        label += f", {case['rounds']} rounds pooled"
    return label


def _playout_table(result: dict[str, Any]) -> list[str]:
    """The playout-delay extension with and without, rounds alternating in one run
    (on loopback, then through the jittery relay)."""
    cases = {c["viewer"]: c for c in merged(result) if "rounds" in c}
    lines: list[str] = []
    link = result.get("jitter_link", {})
    lossy = result.get("loss_link", {})
    for prefix, where in (("chromium", "on loopback"),
                          ("chromium-jitter", f"through a loopback relay adding "
                           f"{_n(link.get('delay_ms'))} ± {_n(link.get('jitter_ms'))} ms each "
                           "way (uniform, order kept)"),
                          ("chromium-loss", f"through a loopback relay losing "
                           f"{_n(lossy.get('loss_percent'))} % of the media each way at random "
                           f"after {_n(lossy.get('delay_ms'))} ms each way")):
        on, off = cases.get(prefix), cases.get(prefix + "-noext")
        if on is not None and off is not None:
            lines += _playout_rows(on, off, where)
    return lines


def _playout_rows(on: dict[str, Any], off: dict[str, Any], where: str) -> list[str]:
    lines = [
        f"Playout-delay header extension, one Chromium tab {where}, {on['rounds']} rounds of "
        "each alternating (ABBA) in this run: *with*, the camera answers the extension "
        "Chromium offers and stamps 0/0 (smallest/largest playout delay) on every video "
        "packet; *without*, the tab stops negotiating it (`setHeaderExtensionsToNegotiate`), "
        "as before the camera knew the extension. *Interval*: time between consecutive "
        "frames shown (33.3 ms is even pacing).",
        "",
        "| variant | frames | p50 ms | p95 ms | p99 ms | per-round p50 | per-round p95 "
        "| missed | dropped by Chromium | jitter buffer ms/frame | received → presented ms "
        "| interval p5 / p95 / max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in (("with (0/0)", on), ("without", off)):
        s, st, p = case["summary"], case.get("chromium_stats", {}), case["stages_p50"]
        hold = (round(p["presented"] - p["received"], 1)
                if "presented" in p and "received" in p else None)
        lines.append(
            f"| {name} | {s['n']} | {s['p50']} | {s['p95']} | {s['p99']} | "
            f"{', '.join(_n(x) for x in case['round_p50'])} | "
            f"{', '.join(_n(x) for x in case['round_p95'])} | {case['lost']} | "
            f"{_n(st.get('frames_dropped'))} | {_n(st.get('jitter_buffer_ms'))} | {_n(hold)} | "
            f"{_intervals(case)} |")
    a, b = on["summary"], off["summary"]
    lines += ["", f"With against without: p50 {_n(round(a['p50'] - b['p50'], 1))} ms "
              f"(ratio {a['p50'] / b['p50']:.2f}), p95 {_n(round(a['p95'] - b['p95'], 1))} ms; "
              f"missed frames {on['lost']} against {off['lost']}.", ""]
    return lines


def _n(value: float | None) -> str:
    """A number for the page: integers without a decimal point, None as a dash."""
    if value is None:
        return "–"
    return str(int(value)) if float(value).is_integer() else str(value)


def _notes(result: dict[str, Any]) -> list[str]:
    out = []
    base = result["baseline"]["summary"]["p50"]
    for viewer in ("cli", "chromium"):
        one = _find(result, viewer, 1)
        if one is not None:
            p50 = one["summary"]["p50"]
            met = "meets" if p50 <= result["target_p50_ms"] else "misses"
            out.append(f"- {_LABELS[viewer]}, one viewer: p50 {p50} ms {met} the target, "
                       f"{round(p50 - base, 1)} ms more than the codec alone.")
    one = _find(result, "chromium", 1)
    hinted = _find(result, "chromium-hint", 1)
    target = result.get("chromium_target_p50_ms")
    if one is not None and target is not None:
        p50 = one["summary"]["p50"]
        verdict = "met" if p50 <= target else f"MISSED by {round(p50 - target, 1)} ms"
        served = ("the page as served, playout-delay 0/0 negotiated"
                  if one.get("playout_delay_negotiated") else "the page as served")
        line = (f"- Chromium, one tab, {served}: p50 {p50} ms against ≤ {target:g} ms:"
                f" {verdict}; missed frames {one['lost']}")
        without = _find(result, "chromium-noext", 1)
        if without is not None:
            line += (f" (without the extension, same run: p50 {without['summary']['p50']} ms, "
                     f"missed frames {without['lost']})")
        if hinted is not None:
            h = hinted["summary"]
            line += (f". Same run, every receiver asked for minimal playout "
                     f"(`jitterBufferTarget = 0`, `playoutDelayHint = 0`): p50 {h['p50']} ms, "
                     f"p95 {h['p95']} ms, missed frames {hinted['lost']}")
        out.append(line + ".")
    interval = 1000 / result["fps"]
    cli = (_find(result, "cli", 1) or {}).get("stages_p50", {})
    if "arrived" in cli and "released" in cli:
        hold = round(cli["released"] - cli["arrived"], 1)
        if hold >= interval / 2:
            out.append(f"- The CLI's largest share is aiortc's jitter buffer ({hold} ms median "
                       f"for a {interval:.1f} ms frame interval): it hands a frame to the "
                       "decoder only when the first packet of the next frame arrives, not on "
                       "the RTP marker bit, so every frame waits about one frame interval. "
                       "Chromium does not.")
    for case in merged(result):
        st = case.get("chromium_stats")
        if not st:
            continue
        line = (f"- {_label(case)} × {case['viewers']}, its own `inbound-rtp` "
                f"counters over the "
                f"window ({'median round, counts summed' if 'rounds' in case else 'median tab'}): "
                f"jitter buffer {_n(st.get('jitter_buffer_ms'))} ms a "
                f"frame (target {_n(st.get('jitter_buffer_target_ms'))}), decode "
                f"{_n(st.get('decode_ms'))} ms, first packet to decoded "
                f"{_n(st.get('processing_ms'))} ms; frames dropped "
                f"{_n(st.get('frames_dropped'))}, packets lost {_n(st.get('packets_lost'))}.")
        p50 = case["stages_p50"]
        if all(k in p50 for k in ("presented", "callback", "read")):
            wait = round(p50["callback"] - p50["presented"], 1)
            line += (f" `presentationTime` → callback {wait} ms (the tab's next compositor "
                     f"frame), callback → stamp read {round(p50['read'] - p50['callback'], 1)} "
                     "ms (the canvas draw and read-back, which the measurement itself adds).")
        out.append(line)
    crowded = [c for c in merged(result) if c["viewers"] > 1]
    if crowded:
        out.append(
            "- With several viewers, each one decodes the full picture on the same 2 cores as "
            "the camera (Chromium also composites in software: `--disable-gpu`), so those rows "
            "measure a CPU-starved machine as much as the pipeline; read them with their frame "
            "rates. Camera CPU during each window: "
            + ", ".join(f"{c['viewer']} × {c['viewers']} {c['camera_cpu_core']} cores"
                        for c in merged(result)) + ".")
    return out
