"""The camera process benchmarks start (``python -m bench _camera``).

``passthrough`` is peercam as shipped; ``perviewer`` swaps in aiortc's default
path (raw frames, one encoder per viewer) with the same test pattern, so the two
are compared in the same run. It prints ``DEVICE <id>`` and ``PAIR <secret>``
(one reusable pairing window for the run) and stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import pin_loopback
from camera.sources.base import Layer


async def camera_main(args: argparse.Namespace) -> None:
    for name in filter(None, os.environ.get("PEERCAM_BENCH_DEBUG", "").split(",")):
        # Debug lines of these loggers on stderr (e.g. camera.quality's ladder samples).
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(created).3f %(name)s %(message)s"))
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    if not args.any_address:
        pin_loopback()
    if args.ice_before:
        from camera import compat
        from camera.ice import DirectFirst

        # The camera's ICE before rules 5 and 6 (camera/ice.py), for a same-run baseline.
        compat.install(compat.Settings(
            direct_first=DirectFirst(trickled_at_once=False, answer_hold=0.0)))
    if args.low_keyframe_spread is not None:
        import camera.track

        camera.track.LOW_KEYFRAME_SPREAD = args.low_keyframe_spread
    from camera.agent import CameraAgent
    from camera.config import CameraConfig, make_configured_source
    from camera.identity import DeviceIdentity
    from camera.sources.base import VideoSettings

    video = VideoSettings(width=args.width, height=args.height, fps=args.fps,
                          bitrate=args.bitrate, low_bitrate=args.low_bitrate)
    config = CameraConfig(rendezvous=args.rendezvous, state_dir=Path(args.state_dir),
                          video=video, max_viewers=256, **json.loads(args.settings))
    source: Any = make_configured_source(config)
    if args.clip:
        from camera.sources.file import FileSource

        # Pre-encoded H.264 played as recorded: the camera's CPU is its send path,
        # as on a board whose hardware encoder does the encoding.
        source = FileSource(video, ensure_clip(Path(args.clip), video, args.pattern))
    elif args.pattern != "bars" and config.source == "testpattern":
        from camera.sources.testpattern import TestPatternSource

        source = TestPatternSource(video, pattern=args.pattern)
    if args.mode == "aiortcsend":
        import camera.session

        # The shipped camera before shared packetization: aiortc's own send loop.
        camera.session.share_packetization = lambda sender: None  # type: ignore[assignment]
    if args.mode == "perviewer":
        install_per_viewer_encode(video, args.pattern)
        source = IdleSource()  # that path needs no shared encoder: don't charge it one
    tuning = json.loads(args.ladder)
    if tuning:
        use_ladder_tuning(tuning)
    count_packets_sent()
    if args.join_asks_again:
        import camera.broadcaster

        camera.broadcaster.JOIN_TAKES_ASKED_IDR = False
    if args.join_toggle:
        import signal

        import camera.broadcaster

        def flip_join() -> None:
            # SIGUSR2: a joining viewer takes the IDR already asked for, or asks again
            # (as before): one camera, both behaviours alternating in one run.
            value = not camera.broadcaster.JOIN_TAKES_ASKED_IDR
            camera.broadcaster.JOIN_TAKES_ASKED_IDR = value
            print(f"JOIN {value}", flush=True)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, flip_join)
    agent = CameraAgent(config, source, DeviceIdentity.load_or_create(config.state_dir))
    await agent.start()
    await agent.registered.wait()
    print(f"DEVICE {agent.device_id}", flush=True)
    print(f"PAIR {agent.open_pairing(ttl=86400, reusable=True)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await agent.close()


def use_ladder_tuning(fields: dict[str, Any]) -> None:
    """Every viewer's layer controller in this process gets this tuning (the camera has
    no setting for it: benchmarks compare controllers with it)."""
    from camera import ladder

    tuning = ladder.LadderTuning(**fields)
    plain = ladder.LadderController.__init__

    def init(self: Any, layers: int, _tuning: Any = None, *, layer: int = 0) -> None:
        plain(self, layers, tuning, layer=layer)

    ladder.LadderController.__init__ = init  # type: ignore[method-assign]


CLIP_SECONDS = 10
CLIP_GOP_SECONDS = 1.0
"""IDRs in the clip (a joining viewer waits for the next one: the file cannot make one)."""


def ensure_clip(folder: Path, video: Any, pattern: str) -> Path:
    """A raw H.264 clip of the test pattern at these settings, encoded once and kept
    in ``folder`` (its name says its settings)."""
    import dataclasses

    from camera.sources.testpattern import make_painter
    from camera.sources.x264 import X264Encoder

    settings = dataclasses.replace(video, low_layer=False, gop_seconds=CLIP_GOP_SECONDS)
    path = folder / (f"{pattern}-{settings.width}x{settings.height}-{settings.fps}-"
                     f"{settings.bitrate}-gop{CLIP_GOP_SECONDS:g}.h264")
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    painter = make_painter(pattern, settings.width, settings.height)
    encoder = X264Encoder(settings)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        for n in range(CLIP_SECONDS * settings.fps):
            for picture in encoder.encode_yuv(painter.render(n, 0)):
                out.write(picture.data)
    partial.rename(path)
    return path


def count_packets_sent() -> None:
    """On SIGUSR1, print ``SENT <n>``: RTP packets the live video senders sent so far
    (aiortc's own counter, which the shared-packetization loop keeps too). Every
    sender is held to the end of the process: with weak references a session's
    sender collected during a window took its packets out of the total, which then
    went backwards."""
    import signal

    import camera.session

    senders: list[Any] = []
    hook = camera.session.hook_sender

    def hook_and_note(sender: Any, request_keyframe: Any) -> None:
        senders.append(sender)
        hook(sender, request_keyframe)

    def report() -> None:
        total = sum(getattr(s, "_RTCRtpSender__packet_count", 0) for s in senders)
        print(f"SENT {total}", flush=True)

    camera.session.hook_sender = hook_and_note  # type: ignore[assignment]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)


def add_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--mode", choices=["passthrough", "aiortcsend", "perviewer"],
                   default="passthrough")
    c.add_argument("--rendezvous", required=True)
    c.add_argument("--state-dir", required=True)
    c.add_argument("--width", type=int, default=1280)
    c.add_argument("--height", type=int, default=720)
    c.add_argument("--fps", type=int, default=30)
    c.add_argument("--bitrate", type=int, default=2_000_000)
    c.add_argument("--ladder", default="{}",
                   help="the layer controller's tuning for every viewer, a JSON object of "
                   "camera.ladder.LadderTuning fields (e.g. {\"loss_only\": true})")
    c.add_argument("--low-bitrate", type=int, default=0,
                   help="the low layer's bitrate (0: the camera's default)")
    c.add_argument("--low-keyframe-spread", type=float, default=None,
                   help="seconds a low-layer IDR's packets are spread over (default: the "
                   "camera's, camera.track.LOW_KEYFRAME_SPREAD; 0: sent at once, as before)")
    c.add_argument("--pattern", default="bars", choices=["bars", "texture"],
                   help="test pattern: bars (cheap, well under the bitrate) or texture "
                   "(libx264 reaches the configured bitrate)")
    c.add_argument("--clip", default="",
                   help="a folder: play a pre-encoded clip of the pattern (made there once) "
                   "instead of encoding live")
    c.add_argument("--settings", default="{}",
                   help="more camera settings, a JSON object (e.g. {\"probe_revert\": false})")
    c.add_argument("--ice-before", action="store_true",
                   help="the camera's ICE without rules 5 and 6 of camera/ice.py (a "
                        "trickled candidate checked at once, the answer held for the "
                        "viewer's server-reflexive candidate): a same-run baseline")
    c.add_argument("--join-asks-again", action="store_true",
                   help="a viewer whose connection comes up before the IDR its offer asked "
                        "for asks for a second one, as before (a same-run baseline)")
    c.add_argument("--join-toggle", action="store_true",
                   help="SIGUSR2 flips camera.broadcaster.JOIN_TAKES_ASKED_IDR (prints JOIN "
                        "<value>): a same-run baseline of the join's second IDR request")
    c.add_argument("--any-address", action="store_true",
                   help="offer every host address (NAT lab), not only 127.0.0.1")


class IdleSource:
    """A source that never encodes (the per-viewer path renders its own raw frames)."""

    name = "idle"
    layers = (Layer.HIGH,)

    async def start(self, sink: Any) -> None:
        pass

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        pass

    async def close(self) -> None:
        pass


def install_per_viewer_encode(video: Any, pattern: str = "bars") -> None:
    """Replace the passthrough track with aiortc's default path: raw frames, one
    encoder per viewer. The raw pictures are the test pattern's, rendered once."""
    import av
    from aiortc import VideoStreamTrack

    import camera.session
    from camera.sources.testpattern import make_painter

    painter = make_painter(pattern, video.width, video.height)
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
        layer = Layer.HIGH
        layers = (Layer.HIGH,)

        def __init__(self, broadcaster: Any) -> None:
            super().__init__()  # the broadcaster is not used: nothing is shared here

        def request_keyframe(self, reason: str) -> None:
            pass  # aiortc's own encoder answers PLI itself on this path

        def prepare(self) -> None:
            pass  # nothing to ask ahead of time: its own encoder starts with an IDR

        def switch_to(self, layer: Layer) -> bool:
            return layer is Layer.HIGH

        async def recv(self) -> Any:
            pts, time_base = await self.next_timestamp()
            frame = current_frame()
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
            out.pts, out.time_base = pts, time_base
            return out

    camera.session.PassthroughTrack = RawTrack  # type: ignore[misc,assignment]
