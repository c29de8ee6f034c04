"""Side by side with a C media server: peercam against the Janus gateway, same run.

Janus (the Debian package, 1.1.x) runs as our own process with its own config
directory: the streaming plugin and the HTTP transport only, on a free loopback
port. One RTP mountpoint takes H.264 from a feeder process
(:mod:`bench.rtp_feeder`), which runs peercam's own test-pattern source with
the same libx264 settings as the peercam camera, so both servers relay the
same bitstream. The feeder's encode is its own process and is charged to
nobody; peercam's camera process includes its encoder, so the comparison is on
the *marginal* CPU per viewer (process CPU minus its 0-viewer baseline), with
the absolute numbers beside it.

Viewers are aiortc clients that receive and depayload but do not decode (the
counting-queue trick of :func:`bench.common.null_viewer`). First frame comes
from single joins, peercam and Janus interleaved, each server's joins a few
seconds apart: from the viewer's first signaling byte (peercam: opening the
rendezvous WebSocket; Janus: the session ``create``) to the first received
access unit, and to the first *keyframe* access unit, the first one a decoder
can start from. CPU comes from N viewers at a time (joining in a burst) for
each server in turn, while both servers and both encoders keep running, so the
background load is the same for both. On a shared machine one sweep cannot tell
noise from cost: ``--rounds N`` repeats it, which server goes first alternating
per count and per round, with a 0-viewer window before each round and after the
last (a round's baseline is the mean of the two around it); the ratios are
reported per round and as their median with min and max. A run at another
bitrate, stored elsewhere with ``--out``, joins the page's table of bitrates with
``python -m bench.janus fold DIR/janus.json``.

Keyframes on join are like for like: peercam asks its encoder for an IDR when a
viewer's media starts; so does Janus, with a PLI to the mountpoint's RTCP port,
which the feeder passes to its encoder through peercam's own keyframe limiter.
Viewers ask for nothing themselves unless ``--viewer-pli`` makes them send a
PLI for every frame before the first keyframe (what aiortc's decoder does); Janus
passes at most one PLI a second to its source and sends a held-back one when the
second is up, which then delays the next viewer's join keyframe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Camera,
    Missing,
    _CountingQueue,
    cpu_seconds,
    need_executable,
    pin_loopback,
    pyplot,
    rss_kib,
    start_rendezvous,
    summary,
)

NAME = "janus"
HELP = "peercam side by side with the Janus gateway (C): CPU per viewer, first frame"
SMOKE = ["--counts", "1,2", "--seconds", "2", "--width", "320", "--height", "240",
         "--warmup", "1", "--idle-seconds", "2", "--joins", "2", "--join-spacing", "1",
         "--decoded-trials", "1"]
NEEDS = ["janus"]
HOLD_FPS = 27.0
#: Where a join's time goes, in order (Viewer.marks).
STEPS = ("offer", "answer", "ice_checking", "ice_completed", "connected")
MOUNTPOINT = 1
PAYLOAD_TYPE = 96
#: What the feeder's libx264 emits (Constrained Baseline, level 3.1).
FMTP = "profile-level-id=42e01f;packetization-mode=1"
HOW = "apt install janus; scripts/setup --test installs it"
#: Where distributions put Janus's plugins and transports (Debian: multiarch).
PLUGIN_DIRS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus", "/opt/janus/lib/janus")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--joins", type=int, default=12,
                   help="first frame: single joins per server, interleaved")
    p.add_argument("--join-spacing", type=float, default=2.5,
                   help="seconds between two joins of one server (well over Janus's 1 s PLI "
                        "throttle and peercam's 2/s keyframe limit)")
    p.add_argument("--counts", default="1,4,8,16", help="viewer counts, comma-separated")
    p.add_argument("--join-gap", type=float, default=0.25,
                   help="seconds between the joins of one count (a burst)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window per count")
    p.add_argument("--warmup", type=float, default=3.0, help="after the last join (s)")
    p.add_argument("--idle-seconds", type=float, default=5.0, help="0-viewer baseline window")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the CPU sweep (every count, both servers) this many times, "
                        "which server goes first alternating per count and per round, an "
                        "idle window between rounds; the ratios are reported per round and "
                        "as their median with min/max")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--pattern", default="texture", choices=["bars", "texture"],
                   help="texture: libx264 reaches the bitrate; bars: the old, light content")
    p.add_argument("--clip", action="store_true",
                   help="camera and feeder play one pre-encoded clip (no encoder in either)")
    p.add_argument("--decoded-trials", type=int, default=5,
                   help="peercam's CLI viewer to the first decoded frame, for reference")
    p.add_argument("--keepalive", type=float, default=25.0, help="Janus session keepalive (s)")
    p.add_argument("--viewer-pli", action="store_true",
                   help="viewers send a PLI for each frame before the first keyframe, as "
                        "aiortc's decoder does (default: the servers' own join keyframe only)")


# --- The Janus API, sans I/O: request bodies in, checked replies out ---------------------


class JanusError(Exception):
    """Janus answered with an error (core or plugin)."""


def janus_request(kind: str, **fields: Any) -> dict[str, Any]:
    """A Janus API request (``create``, ``attach``, ``message``, ``keepalive``...)."""
    return {"janus": kind, "transaction": secrets.token_hex(6), **fields}


def checked(reply: dict[str, Any], want: tuple[str, ...] = ("success", "ack")) -> dict[str, Any]:
    """The reply if it is one of ``want``; JanusError with Janus's reason otherwise."""
    kind = reply.get("janus")
    if kind == "error":
        error = reply.get("error", {})
        raise JanusError(f"Janus error {error.get('code')}: {error.get('reason')}")
    if kind not in want:
        raise JanusError(f"Janus sent {kind!r}, expected {'/'.join(want)}: {reply}")
    return reply


def plugin_result(event: dict[str, Any]) -> dict[str, Any]:
    """The streaming plugin's payload of an event; JanusError if it reports an error."""
    data = event.get("plugindata", {}).get("data", {})
    if "error" in data or "error_code" in data:
        raise JanusError(f"streaming plugin error {data.get('error_code')}: {data.get('error')}")
    return dict(data)


_HOST_CANDIDATE = re.compile(r"^a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) \d+ typ host",
                             re.MULTILINE)


def ipv4_host_candidates(sdp: str) -> list[str]:
    """The IPv4 addresses of an SDP's host candidates (RFC 8839 section 5.1)."""
    return sorted(set(_HOST_CANDIDATE.findall(sdp)))


# --- Janus's configuration and process ---------------------------------------------------


@dataclass(frozen=True)
class JanusSetup:
    """Where our own Janus listens."""

    http_port: int
    """HTTP transport port on 127.0.0.1 (the Janus API)."""
    rtp_port: int
    """The mountpoint's RTP port on 127.0.0.1, fed by the feeder."""
    rtcp_port: int
    """The mountpoint's RTCP port: sender reports in, PLIs out to the feeder."""
    lib_dir: Path
    """Where the distribution put ``plugins/`` and ``transports/``."""


def render_config(setup: JanusSetup, folder: Path) -> dict[str, str]:
    """The jcfg files for ``-F folder``: file name -> text (libconfig syntax)."""
    return {
        "janus.jcfg": f"""general: {{
	configs_folder = "{folder}"
	plugins_folder = "{folder / 'plugins'}"
	transports_folder = "{folder / 'transports'}"
	events_folder = "{folder / 'none'}"
	loggers_folder = "{folder / 'none'}"
	debug_level = 4
	server_name = "peercam-bench"
	session_timeout = 60
}}
media: {{
	ipv6 = false
}}
nat: {{
	nice_debug = false
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
events: {{
	broadcast = false
}}
""",
        "janus.transport.http.jcfg": f"""general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	ip = "127.0.0.1"
	port = {setup.http_port}
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
""",
        "janus.plugin.streaming.jcfg": f"""general: {{
	events = false
}}
peercam: {{
	type = "rtp"
	id = {MOUNTPOINT}
	description = "peercam test pattern"
	media = (
		{{
			type = "video"
			mid = "v"
			port = {setup.rtp_port}
			rtcpport = {setup.rtcp_port}
			iface = "127.0.0.1"
			pt = {PAYLOAD_TYPE}
			codec = "h264"
			fmtp = "{FMTP}"
		}}
	)
}}
""",
    }


def find_janus_libs() -> Path:
    """The directory holding Janus's streaming plugin and HTTP transport."""
    for pattern in PLUGIN_DIRS:
        for lib in sorted(glob.glob(pattern)):
            path = Path(lib)
            if ((path / "plugins" / "libjanus_streaming.so").exists()
                    and (path / "transports" / "libjanus_http.so").exists()):
                return path
    raise Missing("janus streaming plugin / HTTP transport (libjanus_streaming.so)", HOW)


def free_port(kind: int) -> int:
    """A port the kernel just gave out on 127.0.0.1 (SOCK_DGRAM or SOCK_STREAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JanusProcess:
    """Our own Janus: started with its own config folder, stopped on exit."""

    def __init__(self, executable: str, setup: JanusSetup, folder: Path) -> None:
        self.setup = setup
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for sub, name in (("plugins", "libjanus_streaming.so"), ("transports", "libjanus_http.so")):
            (folder / sub).mkdir(exist_ok=True)
            link = folder / sub / name
            link.unlink(missing_ok=True)
            link.symlink_to(setup.lib_dir / sub / name)  # only these load: fast, no stray ports
        (folder / "none").mkdir(exist_ok=True)
        for name, text in render_config(setup, folder).items():
            (folder / name).write_text(text)
        self.log = folder / "janus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [executable, "-C", str(folder / "janus.jcfg"), "-F", str(folder), "-o"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder)
        self.base = f"http://127.0.0.1:{setup.http_port}/janus"

    async def ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the HTTP API answers ``info``; fail loudly with the log if it doesn't."""
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise self.failure(f"Janus exited with status {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.base}/info") as reply:
                        info: dict[str, Any] = await reply.json()
                        if "janus.plugin.streaming" not in info.get("plugins", {}):
                            raise self.failure("Janus started without its streaming plugin")
                        return info
                await asyncio.sleep(0.1)
        raise self.failure(f"Janus's HTTP API did not answer within {timeout:.0f} s")

    async def mountpoint_live(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the mountpoint has RTP from the feeder (``info``: ``age_ms``)."""
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
                async with http.post(self.base + path, json=body) as reply:
                    return checked(await reply.json())

            session = (await call("", janus_request("create")))["data"]["id"]
            try:
                handle = (await call(f"/{session}", janus_request(
                    "attach", plugin="janus.plugin.streaming")))["data"]["id"]
                while time.monotonic() < deadline:
                    reply = await call(f"/{session}/{handle}", janus_request(
                        "message", body={"request": "info", "id": MOUNTPOINT}))
                    info: dict[str, Any] = plugin_result(reply)["info"]
                    ages = [m.get("age_ms") for m in info.get("media", [])]
                    if ages and all(a is not None and a < 500 for a in ages):
                        return info
                    await asyncio.sleep(0.2)
            finally:
                await call(f"/{session}", janus_request("destroy"))
        raise self.failure(f"the mountpoint got no RTP from the feeder within {timeout:.0f} s")

    def failure(self, what: str) -> SystemExit:
        return SystemExit(f"bench: {what}; nothing more was measured. "
                          f"Janus log ({self.log}), last lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)  # every thread's time: /proc/PID/stat sums them

    def rss_mib(self) -> float:
        return rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        """SIGTERM (Janus's orderly stop), SIGKILL after 5 s. Safe twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Feeder:
    """The feeder process (bench/rtp_feeder.py): the test pattern as RTP to the mountpoint."""

    def __init__(self, setup: JanusSetup, width: int, height: int, bitrate: int,
                 pattern: str = "bars", clip: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rtp_feeder", "--port", str(setup.rtp_port),
             "--rtcp-port", str(setup.rtcp_port), "--payload-type", str(PAYLOAD_TYPE),
             "--width", str(width), "--height", str(height), "--bitrate", str(bitrate),
             "--pattern", pattern, *(["--clip", clip] if clip else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.stats: dict[str, Any] = {}

    async def feeding(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline),
                                      timeout)
        if line.strip() != "FEEDING":
            raise SystemExit(f"bench: the RTP feeder did not start ({line!r}); "
                             "nothing was measured")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Close stdin, read its STATS line; kill it if it hangs. Safe twice."""
        if self.proc.poll() is None:
            try:
                out, _ = self.proc.communicate(input="", timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            for line in (out or "").splitlines():
                if line.startswith("STATS "):
                    self.stats = json.loads(line[6:])


# --- Viewers -----------------------------------------------------------------------------


class _TimedQueue(_CountingQueue):
    """Counts access units like null_viewer's queue and times the first one and the
    first keyframe. With ``pli`` it also acts like the decoder it stands in for: an
    access unit before the first IDR cannot be decoded, so it raises the receiver's
    decode-error flag and aiortc sends a PLI (RFC 4585 section 6.3.1), as aiortc's
    decoder thread does on every failed decode."""

    def __init__(self, receiver: Any, started: float, pli: bool) -> None:
        super().__init__()
        self._receiver = receiver
        self._pli = pli
        self.started = started
        self.first_au_ms: float | None = None
        self.first_key_ms: float | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None and self.first_key_ms is None:
            from camera.h264 import is_idr

            now_ms = 1000 * (time.perf_counter() - self.started)
            if self.first_au_ms is None:
                self.first_au_ms = now_ms
            try:
                key = is_idr(item[1].data)
            except ValueError:
                key = False
            if key:
                self.first_key_ms = now_ms
            elif self._pli:
                from camera.compat.receiver import decoder_error

                decoder_error(self._receiver).set()
        super().put(item, block, timeout)


class Viewer:
    """One viewer session as a task with a stop path; ``queue`` once media is set up."""

    def __init__(self, pli: bool = False) -> None:
        self.pli = pli
        """Ask for a keyframe (PLI) on each frame received before the first one."""
        self.queue: _TimedQueue | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Future[None] | None = None
        self.started = time.perf_counter()
        self.marks: dict[str, float] = {}
        """Milliseconds from ``started`` to each step (answer, connected, ...)."""
        self.pc: Any = None

    def begin(self) -> float:
        """The first signaling byte is about to go: time from here."""
        self.started = time.perf_counter()
        return self.started

    def mark(self, step: str) -> None:
        self.marks.setdefault(step, round(1000 * (time.perf_counter() - self.started), 1))

    def watch_connection(self, pc: Any) -> None:
        self.pc = pc

        def ice_changed() -> None:
            if pc.iceConnectionState in ("checking", "completed"):
                self.mark("ice_" + pc.iceConnectionState)

        def changed() -> None:
            if pc.connectionState == "connected":
                self.mark("connected")  # ICE and DTLS done

        pc.on("iceconnectionstatechange", ice_changed)
        pc.on("connectionstatechange", changed)

    @property
    def frames(self) -> int:
        return self.queue.frames if self.queue else 0

    def install(self, receiver: Any, started: float) -> None:
        from camera.compat.receiver import set_decoder_queue

        self.queue = _TimedQueue(receiver, started, self.pli)
        set_decoder_queue(receiver, self.queue)

    async def wait_first_frame(self, timeout: float) -> None:
        async def keyframe() -> None:
            while self.queue is None or self.queue.first_key_ms is None:
                if self.task is not None and self.task.done():
                    self.task.result()  # the session failed: say why
                    raise RuntimeError("the viewer session ended before any keyframe")
                await asyncio.sleep(0.01)

        async with asyncio.timeout(timeout):
            await keyframe()


async def peercam_viewer(viewer: Viewer, link: str) -> None:
    """The peercam CLI viewer's own session code (signed offer, checked answer), no decode."""
    from camera.client.viewer import connect
    from camera.webrtc import prefer_h264

    started = viewer.begin()  # before the WebSocket to the rendezvous opens

    def setup(connection: Any) -> None:
        viewer.mark("offer")
        transceiver = connection.pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        viewer.install(transceiver.receiver, started)
        viewer.watch_connection(connection.pc)

    # No ICE server list to fetch (host candidates on loopback), as for Janus.
    async with connect(link, setup, ice_servers=[]):
        viewer.mark("answer")
        await viewer.stop.wait()


async def janus_viewer(viewer: Viewer, base: str, keepalive: float) -> None:
    """A Janus streaming viewer over the HTTP API: create, attach, watch (Janus
    offers), start (we answer), keepalive; destroy on the way out."""
    import aiohttp
    from aiortc import RTCSessionDescription

    from camera.webrtc import make_peer_connection, restrict_host_addresses

    started = viewer.begin()  # before the session create
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(base + path, json=body) as reply:
                return checked(await reply.json())

        session = (await call("", janus_request("create")))["data"]["id"]
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def poll_events() -> None:
            # Janus's long poll returns an event, or a keepalive after 30 s.
            while True:
                async with http.get(f"{base}/{session}?maxev=1",
                                    timeout=aiohttp.ClientTimeout(total=40)) as reply:
                    event = await reply.json()
                if event.get("janus") == "event":
                    await events.put(event)

        poller = asyncio.ensure_future(poll_events())
        pc = None
        try:
            handle = (await call(f"/{session}", janus_request(
                "attach", plugin="janus.plugin.streaming")))["data"]["id"]
            path = f"/{session}/{handle}"
            await call(path, janus_request("message", body={"request": "watch",
                                                             "id": MOUNTPOINT}))
            async with asyncio.timeout(10):
                while True:
                    event = await events.get()
                    plugin_result(event)
                    if "jsep" in event:
                        break
            offer = event["jsep"]
            viewer.mark("offer")
            # libnice does not gather on loopback: answer from the address Janus
            # offers (the host's own; packets still never leave the kernel).
            addresses = ipv4_host_candidates(offer["sdp"])
            if not addresses:
                raise JanusError("Janus's offer has no IPv4 host candidate")
            restrict_host_addresses(addresses)
            pc = make_peer_connection([])
            viewer.watch_connection(pc)
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            viewer.install(pc.getTransceivers()[0].receiver, started)
            await pc.setLocalDescription(await pc.createAnswer())
            await call(path, janus_request("message", body={"request": "start"},
                                           jsep={"type": "answer",
                                                 "sdp": pc.localDescription.sdp}))
            viewer.mark("answer")
            # aiortc does not trickle: every candidate is in the answer.
            await call(path, janus_request("trickle", candidate={"completed": True}))
            while not viewer.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(viewer.stop.wait(), keepalive)
                if not viewer.stop.is_set():
                    await call(f"/{session}", janus_request("keepalive"))
                if poller.done():
                    poller.result()  # the long poll failed: say why
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await call(f"/{session}", janus_request("destroy"))
            if pc is not None:
                await pc.close()


# --- The run ----------------------------------------------------------------------------


StartViewer = Callable[[Viewer], Awaitable[None]]


@dataclass
class Procs:
    """The processes whose CPU is read, and the bench itself (the viewers)."""

    camera: Camera
    janus: JanusProcess
    feeder: Feeder

    def cpu(self) -> dict[str, float]:
        return {"peercam": self.camera.cpu_seconds(), "janus": self.janus.cpu_seconds(),
                "feeder": self.feeder.cpu_seconds(), "viewers": cpu_seconds(os.getpid())}


async def cpu_window(procs: Procs, seconds: float) -> dict[str, float]:
    """Cores used by each process over the next ``seconds``."""
    c0, t0 = procs.cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, elapsed = procs.cpu(), time.monotonic() - t0
    return {k: round((c1[k] - c0[k]) / elapsed, 4) for k in c0}


async def watching(server: str, viewers: list[Viewer], procs: Procs) -> None:
    """Every viewer got a keyframe, or the run ends loudly (with Janus's log if it is Janus)."""
    try:
        await asyncio.gather(*(v.wait_first_frame(20.0) for v in viewers))
    except Exception as exc:
        why = f"a {server} viewer got no keyframe within 20 s ({exc!r})"
        if server == "janus":
            raise procs.janus.failure(why + "; did the mountpoint deliver?") from exc
        raise SystemExit(f"bench: {why}; nothing more was measured") from exc


async def leave(server: str, viewers: list[Viewer]) -> None:
    """Stop every viewer (Janus: destroy the session; peercam: bye); fail if one failed."""
    for viewer in viewers:
        viewer.stop.set()
    tasks = [v.task for v in viewers if v.task is not None]
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise SystemExit(f"bench: a {server} viewer failed: {task.exception()!r}")


def join(start_viewer: StartViewer, pli: bool) -> Viewer:
    viewer = Viewer(pli=pli)
    viewer.task = asyncio.ensure_future(start_viewer(viewer))
    return viewer


def first_frames(viewers: list[Viewer]) -> dict[str, list[Any]]:
    queues = [v.queue for v in viewers if v.queue is not None]
    return {"first_au_ms": [round(q.first_au_ms or 0.0, 1) for q in queues],
            "first_key_ms": [round(q.first_key_ms or 0.0, 1) for q in queues],
            "steps_ms": [v.marks for v in viewers]}


async def spaced_joins(servers: dict[str, StartViewer], procs: Procs,
                       args: argparse.Namespace) -> dict[str, dict[str, list[Any]]]:
    """One viewer at a time, peercam and Janus interleaved, each server's joins
    ``join_spacing`` apart: what one viewer joining an idle stream sees."""
    out: dict[str, list[Viewer]] = {name: [] for name in servers}
    for i in range(args.joins):
        for name in (("peercam", "janus") if i % 2 == 0 else ("janus", "peercam")):
            if name == "peercam":
                pin_loopback()
            viewer = join(servers[name], args.viewer_pli)
            try:
                await watching(name, [viewer], procs)
            finally:
                await leave(name, [viewer])
            out[name].append(viewer)
            await asyncio.sleep(args.join_spacing / 2)
    return {name: first_frames(viewers) for name, viewers in out.items()}


async def measure(server: str, count: int, start_viewer: StartViewer, procs: Procs,
                  args: argparse.Namespace) -> dict[str, Any]:
    """N viewers of one server (joining ``join_gap`` apart), then CPU, RSS and fps."""
    viewers: list[Viewer] = []
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(args.join_gap)
            viewers.append(join(start_viewer, args.viewer_pli))
        await watching(server, viewers, procs)
        await asyncio.sleep(args.warmup)
        frames0 = [v.frames for v in viewers]
        octets0 = [v.queue.octets if v.queue else 0 for v in viewers]
        sent0 = await procs.camera.packets_sent() if server == "peercam" else 0
        t0 = time.monotonic()
        cores = await cpu_window(procs, args.seconds)
        elapsed = time.monotonic() - t0
        # peercam's senders count their packets; Janus's rows are filled in from the
        # feeder's packets per frame once it stops (Janus forwards each to each viewer).
        packets = ((await procs.camera.packets_sent() - sent0) / (time.monotonic() - t0)
                   if server == "peercam" else None)
        rates = [(v.frames - f0) / elapsed for v, f0 in zip(viewers, frames0, strict=True)]
        kbits = [((v.queue.octets if v.queue else 0) - o0) * 8 / elapsed / 1000
                 for v, o0 in zip(viewers, octets0, strict=True)]
        rss = procs.camera.rss_mib() if server == "peercam" else procs.janus.rss_mib()
    finally:
        await leave(server, viewers)
    return {
        "server": server, "viewers": count, "cpu_core": cores[server],
        "cpu_all": cores, "rss_mib": round(rss, 1),
        "fps": [round(r, 2) for r in rates],
        "fps_min": round(min(rates), 1), "fps_median": round(statistics.median(rates), 1),
        "kbit_s": round(statistics.median(kbits), 1),
        "packets_s_sent": None if packets is None else round(packets, 1),
        **first_frames(viewers),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    executable = need_executable("janus", HOW)
    lib_dir = find_janus_libs()
    from camera.client.viewer import view

    counts = [int(c) for c in args.counts.split(",")]
    pin_loopback()
    setup = JanusSetup(http_port=free_port(socket.SOCK_STREAM),
                       rtp_port=free_port(socket.SOCK_DGRAM),
                       rtcp_port=free_port(socket.SOCK_DGRAM), lib_dir=lib_dir)
    state = Path(args.state)
    clip = str(state / "clips") if args.clip else ""
    runner, url = await start_rendezvous()
    camera: Camera | None = None
    janus: JanusProcess | None = None
    feeder: Feeder | None = None
    rows: list[dict[str, Any]] = []
    idle: list[dict[str, float]] = []
    decoded: list[float] = []
    try:
        camera = await Camera(url, "passthrough", state / "janus-camera", args.width,
                              args.height, bitrate=args.bitrate, pattern=args.pattern,
                              clip=clip).started()
        janus = JanusProcess(executable, setup, state / "janus")
        info = await janus.ready()
        feeder = Feeder(setup, args.width, args.height, args.bitrate, args.pattern, clip)
        await feeder.feeding()
        mountpoint = await janus.mountpoint_live()
        procs = Procs(camera, janus, feeder)
        await view(camera.link(url, pair=True), seconds=0.1)  # pair this key, untimed
        link = camera.link(url)
        base = janus.base
        servers: dict[str, StartViewer] = {
            "peercam": lambda viewer: peercam_viewer(viewer, link),
            "janus": lambda viewer: janus_viewer(viewer, base, args.keepalive),
        }
        await asyncio.sleep(1.0)
        joins = await spaced_joins(servers, procs, args)
        await asyncio.sleep(1.0)
        # An idle window before each round and after the last: a round's baseline is
        # the mean of the two around it, so slow drift in the machine's load is shared.
        idle.append(await cpu_window(procs, args.idle_seconds))
        for rnd in range(args.rounds):
            for i, count in enumerate(counts):
                # Alternate who goes first per count and per round, for the same reason.
                for server in order(i + rnd):
                    if server == "peercam":
                        pin_loopback()
                    row = await measure(server, count, servers[server], procs, args)
                    row["round"] = rnd
                    print(json.dumps({k: v for k, v in row.items()
                                      if k not in ("fps", "first_au_ms", "first_key_ms",
                                                   "steps_ms", "cpu_all")}), flush=True)
                    rows.append(row)
                    await asyncio.sleep(1.0)  # let the last viewers' teardown settle
            idle.append(await cpu_window(procs, args.idle_seconds))
            print(json.dumps({"round": rnd, "idle_core": idle[-1]}), flush=True)
        pin_loopback()
        for _ in range(args.decoded_trials):
            stats = await view(link, seconds=0.3)
            if stats.ttff_ms is None:
                raise SystemExit("bench: a peercam CLI viewer got no frame")
            decoded.append(round(stats.ttff_ms, 1))
            await asyncio.sleep(1.0)
    finally:
        if feeder is not None:
            feeder.stop()
        if janus is not None:
            janus.stop()
        if camera is not None:
            camera.stop()
        await runner.cleanup()
    per_frame = (feeder.stats.get("packets", 0) / feeder.stats["frames"]
                 if feeder.stats.get("frames") else None)
    for row in rows:
        if row["server"] == "janus" and per_frame is not None:
            row["packets_s_sent"] = round(sum(row["fps"]) * per_frame, 1)
    result = {**result_of(args, joins, rows, idle, decoded, info),
              "feeder": feeder.stats, "mountpoint": mountpoint}
    stored = Path(args.out) / f"{NAME}.json"
    if not args.smoke and stored.exists():
        # Runs folded in at other bitrates stay; one like this run is superseded by it.
        result["other_runs"] = merge_other_runs(
            json.loads(stored.read_text()).get("other_runs", []), [], drop=run_key(result))
    return result


SERVERS = ("peercam", "janus")


def order(step: int) -> tuple[str, str]:
    """Who goes first at this step (count index plus round index): alternating."""
    return ("peercam", "janus") if step % 2 == 0 else ("janus", "peercam")


def result_of(args: argparse.Namespace, joins: dict[str, dict[str, list[Any]]],
              rows: list[dict[str, Any]], idle: list[dict[str, float]], decoded: list[float],
              info: dict[str, Any]) -> dict[str, Any]:
    baseline = {k: round(statistics.mean(w[k] for w in idle), 4) for k in idle[0]}
    for row in rows:
        row.setdefault("round", 0)
        rnd = row["round"]
        # This round's own baseline: the idle windows before and after it.
        row["baseline_core"] = round(statistics.mean(
            w[row["server"]] for w in idle[rnd:rnd + 2]), 4)
        row["marginal_core"] = round((row["cpu_core"] - row["baseline_core"])
                                     / row["viewers"], 4)
    rounds = [round_figures([r for r in rows if r["round"] == rnd], rnd)
              for rnd in sorted({r["round"] for r in rows})]
    marginal = {s: round(statistics.median(f["marginal_core"][s] for f in rounds), 5)
                for s in SERVERS}
    # The feeder runs the same encoder on the same machine in the same window: taking
    # its CPU off the camera's removes most of what contention does to the encoder.
    adjusted = slope([(0, round(statistics.mean(w["peercam"] - w["feeder"] for w in idle), 4))]
                     + [(r["viewers"], r["cpu_all"]["peercam"] - r["cpu_all"]["feeder"])
                        for r in rows if r["server"] == "peercam"])
    first = {s: {kind: summary(joins[s][kind]) for kind in ("first_key_ms", "first_au_ms")}
             for s in SERVERS}
    burst = {s: summary(list(itertools.chain.from_iterable(
        r["first_key_ms"] for r in rows if r["server"] == s))) for s in SERVERS}
    steps = {s: {step: round(statistics.median(values), 1) for step in STEPS
                 if (values := [m[step] for m in joins[s]["steps_ms"] if step in m])}
             for s in SERVERS}
    for s in SERVERS:
        steps[s]["first keyframe"] = first[s]["first_key_ms"]["p50"]
    # The server's own join path (keyframe on join), without the handshakes before it.
    after_connected = {s: summary([k - m["connected"] for k, m in zip(
        joins[s]["first_key_ms"], joins[s]["steps_ms"], strict=True) if "connected" in m])
        for s in SERVERS}
    # ICE done but DTLS not for over half a second (a resent first DTLS flight).
    dtls_stalls = {s: sum(1 for m in joins[s]["steps_ms"]
                          if m.get("connected", 0) - m.get("ice_completed", 0) > 500)
                   for s in SERVERS}
    return {
        "video": f"{args.width}x{args.height}@30 {args.bitrate / 1e6:g} Mbit/s",
        "pattern": args.pattern, "clip": args.clip,
        "janus_version": info.get("version_string", "?"),
        "counts": [int(c) for c in args.counts.split(",")],
        "seconds": args.seconds, "warmup": args.warmup, "join_gap": args.join_gap,
        "join_spacing": args.join_spacing, "viewer_pli": args.viewer_pli,
        "idle": idle, "baseline_core": baseline, "rows": rows,
        "rounds": rounds, "spread": spread(rounds),
        "marginal_core": marginal,
        # The median of the rounds' own ratios (each round's servers ran minutes apart).
        "marginal_ratio": spread(rounds)["marginal_ratio"]["median"],
        "peercam_marginal_encoder_adjusted": adjusted,
        "marginal_ratio_encoder_adjusted": ratio(adjusted, marginal["janus"]),
        "joins": joins,
        "first_frame": first,
        "first_frame_ratio": ratio(first["peercam"]["first_key_ms"]["p50"],
                                   first["janus"]["first_key_ms"]["p50"]),
        "first_frame_burst": burst,
        "first_key_after_connected_ms": after_connected,
        "dtls_stalls": dtls_stalls,
        "steps_p50_ms": steps,
        "peercam_decoded_ttff_ms": decoded,
        "peercam_decoded_ttff": summary(decoded) if decoded else None,
        "holds_up_to": {s: holds_up_to([r for r in rows if r["server"] == s])
                        for s in SERVERS},
    }


def round_figures(rows: list[dict[str, Any]], rnd: int) -> dict[str, Any]:
    """One round's figures: each server's marginal CPU per viewer (slope from its
    0-viewer baseline), CPU per packet, and peercam's over Janus's for both."""
    base = {s: next(r["baseline_core"] for r in rows if r["server"] == s) for s in SERVERS}
    marginal = {s: slope([(0, base[s])] + [(r["viewers"], r["cpu_core"])
                                           for r in rows if r["server"] == s])
                for s in SERVERS}
    per_packet = {(r["server"], r["viewers"]): us_per_packet(r, base) for r in rows}
    pp = {s: [v for (server, _), v in per_packet.items() if server == s and v is not None]
          for s in SERVERS}
    ratios = [a / b for (server, n), a in per_packet.items() if server == "peercam"
              and a is not None and (b := per_packet.get(("janus", n))) is not None and b > 0]
    return {
        "round": rnd, "first": rows[0]["server"], "baseline_core": base, "marginal_core": marginal,
        "marginal_ratio": ratio(marginal["peercam"], marginal["janus"]),
        "us_per_packet": {s: round(statistics.median(v), 1) if v else None
                          for s, v in pp.items()},
        "per_packet_ratio": round(statistics.median(ratios), 2) if ratios else None,
        "kbit_s": round(statistics.median(r["kbit_s"] for r in rows), 1),
        "packets_s_per_viewer": round(statistics.median(
            r["packets_s_sent"] / r["viewers"] for r in rows
            if r["server"] == "peercam" and r.get("packets_s_sent")), 1)
        if any(r["server"] == "peercam" and r.get("packets_s_sent") for r in rows) else None,
    }


def spread(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median, min and max over the rounds of each ratio (rounds without one left out)."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("marginal_ratio", "per_packet_ratio"):
        values = sorted(v for f in rounds if (v := f.get(key)) is not None)
        out[key] = {"n": len(values),
                    "median": round(statistics.median(values), 2) if values else None,
                    "min": values[0] if values else None, "max": values[-1] if values else None,
                    "over_1": sum(1 for v in values if v > 1.0)}
    return out


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope (cores per viewer)."""
    mx = statistics.mean(p[0] for p in points)
    my = statistics.mean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / den, 5) if den else 0.0


def ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs, or None when theirs is not above zero (below the noise)."""
    return round(ours / theirs, 2) if theirs > 0 else None


def holds_up_to(rows: list[dict[str, Any]]) -> int | None:
    best = None
    for r in sorted(rows, key=lambda r: r["viewers"]):
        if r["fps_min"] < HOLD_FPS:
            break
        best = r["viewers"]
    return best


# --- Report -----------------------------------------------------------------------------


def _pct(cores: float) -> str:
    return f"{100 * cores:.2f}%"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _range(result: dict[str, Any], key: str) -> str:
    """``**0.92** (0.81–1.10)`` over a run's rounds; its one value for an older run."""
    sp = (result.get("spread") or {}).get(key)
    if not sp or sp["n"] < 2:
        return f"**{_ratio(result.get(key))}**"
    return f"**{_ratio(sp['median'])}** ({sp['min']}–{sp['max']})"


def verdict(result: dict[str, Any], key: str) -> str:
    """Against the target (ratio ≤ 1.0): met or missed by how much, with how many rounds
    went over it."""
    sp = (result.get("spread") or {}).get(key)
    value = sp["median"] if sp else result.get(key)
    if value is None:
        return ""
    said = "meets it" if value <= 1.0 else f"misses by {value - 1:.2f}"
    if sp and sp["n"] > 1 and sp["over_1"]:
        said += f" ({sp['over_1']} of {sp['n']} rounds over 1.0)"
    return said


def merged_rows(result: dict[str, Any], server: str) -> list[dict[str, Any]]:
    """One row per viewer count: medians over the rounds (the row itself for one round)."""
    out = []
    rows = [r for r in result["rows"] if r["server"] == server]
    for count in sorted({r["viewers"] for r in rows}):
        mine = [r for r in rows if r["viewers"] == count]
        per = [v for r in mine if (v := us_per_packet(r, result["baseline_core"])) is not None]
        packets = [r["packets_s_sent"] for r in mine if r.get("packets_s_sent")]

        def med(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return round(float(statistics.median(r[key] for r in rows)), 4)

        out.append({
            "viewers": count, "cpu_core": med("cpu_core"), "marginal_core": med("marginal_core"),
            "packets_s_sent": round(statistics.median(packets), 1) if packets else None,
            "us_per_packet": round(statistics.median(per), 1) if per else None,
            "kbit_s": round(med("kbit_s"), 1), "rss_mib": max(r["rss_mib"] for r in mine),
            "fps_min": min(r["fps_min"] for r in mine),
            "fps_median": round(med("fps_median"), 1),
            "first_key": summary(list(itertools.chain.from_iterable(
                r["first_key_ms"] for r in mine))),
        })
    return out


def us_per_packet(row: dict[str, Any], baseline: dict[str, float]) -> float | None:
    """A server's CPU above its 0-viewer baseline (its round's, if the row has one), in
    microseconds per packet sent."""
    packets = row.get("packets_s_sent")
    if not packets:
        return None
    base = float(row.get("baseline_core", baseline[row["server"]]))
    return round(1e6 * (float(row["cpu_core"]) - base) / float(packets), 1)


def per_packet_ratio(result: dict[str, Any]) -> float | None:
    """Median over the rounds (or, stored before rounds, over the viewer counts) of
    peercam's CPU per packet over Janus's."""
    if "spread" in result:
        value: float | None = result["spread"]["per_packet_ratio"]["median"]
        return value
    base = result["baseline_core"]
    by = {(r["server"], r["viewers"]): us_per_packet(r, base) for r in result["rows"]}
    ratios = [a / b for (server, n), a in by.items() if server == "peercam" and a is not None
              and (b := by.get(("janus", n))) is not None and b > 0]
    return round(statistics.median(ratios), 2) if ratios else None


def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    """One line of a run, for the table of runs at other bitrates (with its rounds)."""
    base = result["baseline_core"]
    return {"video": result["video"], "pattern": result.get("pattern"),
            "clip": result.get("clip"), "marginal_core": result["marginal_core"],
            "marginal_ratio": result["marginal_ratio"],
            "per_packet_ratio": per_packet_ratio(result),
            "date": result.get("machine", {}).get("date"),
            "seconds_taken": result.get("seconds_taken"),
            "rounds": result.get("rounds", []), "spread": result.get("spread"),
            "us_per_packet": {s: statistics.median(
                v for r in result["rows"] if r["server"] == s
                and (v := us_per_packet(r, base)) is not None) for s in SERVERS},
            "packets_s_per_viewer": max(
                r["packets_s_sent"] / r["viewers"] for r in result["rows"]
                if r["server"] == "peercam" and r.get("packets_s_sent")),
            "kbit_s": max(r.get("kbit_s", 0) for r in result["rows"]),
            "kbit_s_by_server": kbit_by_server(result)}


def kbit_by_server(result: dict[str, Any]) -> dict[str, float]:
    """The median over a run's rows of what each server's viewers received (kbit/s)."""
    return {s: round(statistics.median(r["kbit_s"] for r in result["rows"]
                                       if r["server"] == s), 1) for s in SERVERS}


def short_delivery(kbit: dict[str, float] | None) -> str:
    """A caveat when Janus's viewers received under 90% of what peercam's did."""
    if not kbit or kbit["janus"] >= 0.9 * kbit["peercam"]:
        return ""
    return (f"Janus's viewers received {kbit['janus']} kbit/s against peercam's "
            f"{kbit['peercam']} ({100 * kbit['janus'] / kbit['peercam']:.0f}%): Janus relayed "
            "less of the stream, so its CPU covers less work, and its packets/s (frames "
            "received times the feeder's packets per frame) count packets it did not send; "
            "both make the ratios lean in Janus's favour.")


def _spread(result: dict[str, Any], key: str) -> str:
    """``0.92 (min 0.81, max 1.10, 5 rounds)``; a run stored before rounds: its one value."""
    sp = (result.get("spread") or {}).get(key)
    if not sp:
        value = result.get(key)
        return f"{_ratio(value)} (one run)"
    if sp["n"] < 2:
        return f"{_ratio(sp['median'])} (one round)"
    return f"{_ratio(sp['median'])} (min {sp['min']}, max {sp['max']}, {sp['n']} rounds)"


def headline(result: dict[str, Any]) -> str:
    mg, ff = result["marginal_core"], result["first_frame"]
    return (f"janus ({result['video']}, {result.get('pattern')}"
            f"{' clip' if result.get('clip') else ''}): marginal CPU per viewer peercam "
            f"{_pct(mg['peercam'])} vs Janus {_pct(mg['janus'])} of a core, median ratio "
            f"{_spread(result, 'marginal_ratio')}, per packet "
            f"{_spread(result, 'per_packet_ratio')}; "
            f"first frame p50 peercam {ff['peercam']['first_key_ms']['p50']} ms vs Janus "
            f"{ff['janus']['first_key_ms']['p50']} ms (ratio "
            f"{_ratio(result['first_frame_ratio'])})")


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, (cpu, first) = plt.subplots(1, 2, figsize=(10, 4))
    base = result["baseline_core"]
    clip = bool(result.get("clip"))
    for n, (server, label) in enumerate((
            ("peercam", "peercam camera" + ("" if clip else " (incl. its encoder)")),
            ("janus", "Janus" + ("" if clip else " (feeder's encoder not counted)")))):
        merged = merged_rows(result, server)
        cpu.plot([0] + [r["viewers"] for r in merged],
                 [100 * base[server]] + [100 * r["cpu_core"] for r in merged], "o-",
                 color=f"C{n}", label=label + (", median of the rounds"
                                               if len(result.get("rounds", [])) > 1 else ""))
        rows = [r for r in result["rows"] if r["server"] == server]
        if len(result.get("rounds", [])) > 1:
            cpu.plot([r["viewers"] for r in rows], [100 * r["cpu_core"] for r in rows], ".",
                     color=f"C{n}", alpha=0.4)
    rows = [r for r in result["rows"] if r["server"] == "peercam"]
    if not clip:
        idle = statistics.mean(w["peercam"] - w["feeder"] for w in result["idle"])
        counts = sorted({r["viewers"] for r in rows})
        cpu.plot([0, *counts], [100 * idle] + [100 * statistics.median(
            r["cpu_all"]["peercam"] - r["cpu_all"]["feeder"] for r in rows
            if r["viewers"] == c) for c in counts], "o--", color="C0", alpha=0.6,
            label="peercam minus the feeder's encoder, same window")
    cpu.set_xlabel("viewers")
    cpu.set_ylabel("process CPU (% of one core)")
    cpu.set_title(f"CPU, {result['video']}")
    cpu.grid(alpha=0.3)
    cpu.legend(fontsize=8)
    joins = result["joins"]
    data = [joins["peercam"]["first_key_ms"], joins["janus"]["first_key_ms"],
            joins["janus"]["first_au_ms"]]
    labels = ["peercam\nkeyframe", "Janus\nkeyframe", "Janus\nany frame"]
    first.boxplot(data, tick_labels=labels)
    first.set_ylabel("ms to first received access unit")
    first.set_title(f"First frame, {len(data[0])} single joins each (not decoded)")
    first.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "janus.png", dpi=100)
    plt.close(fig)
    return ["janus.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    mg, ff, base = result["marginal_core"], result["first_frame"], result["baseline_core"]
    burst, decoded = result["first_frame_burst"], result.get("peercam_decoded_ttff")
    lines = [
        f"## Side by side with Janus ({result['video']})",
        "",
        f"peercam's camera and the Janus gateway ({result['janus_version']}, streaming plugin)",
        "relay the same H.264 (peercam's test pattern, libx264, same settings) to aiortc",
        "viewers, in the same run, one server at a time while both keep running. Viewers",
        "receive and depayload but do not decode. Aim: parity or better.",
        *(["With `--clip` both play one pre-encoded clip of the pattern (the camera's "
           "`file` source, the feeder likewise), so no encoder runs in either process and "
           "a joining viewer waits for the clip's next IDR (one a second) instead of "
           "a fresh one: first-frame times here include up to that second."]
          if result.get("clip") else []),
        "The machine was shared with other engineers' work while these ran: compare "
        "the servers count by count (they ran in the same minute), by ratio.",
        *([""] + ["**Marginal CPU per viewer, peercam/Janus, median of the rounds (min–max)**: "
                  + "; ".join(f"{o['video']} {o['pattern']}: {_range(o, 'marginal_ratio')}, "
                              f"per packet {_range(o, 'per_packet_ratio')}"
                              for o in [summary_of(result), *result.get("other_runs", [])]
                              if o.get("rounds"))
                  + " (each its own run; *By bitrate* below)."]
          if result.get("rounds") else []),
        "",
        "**First frame**: from a viewer's first signaling byte (peercam: opening the",
        "rendezvous WebSocket; Janus: the session `create`) to the first received keyframe",
        f"access unit; {ff['peercam']['first_key_ms']['n']} single joins per server, "
        f"interleaved, each server's joins {result['join_spacing']} s apart.",
        "",
        "| server | joins | p50 ms | p95 ms | min | max | first access unit of any kind, p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for server in SERVERS:
        k, a = ff[server]["first_key_ms"], ff[server]["first_au_ms"]
        lines.append(f"| {server} | {k['n']} | {k['p50']} | {k['p95']} | {k['min']} | "
                     f"{k['max']} | {a['p50']} |")
    lines += [
        "",
        f"**Ratio peercam/Janus (first keyframe p50): {_ratio(result['first_frame_ratio'])}.**",
        "peercam's first access unit is always its keyframe; Janus relays whatever comes",
        "next, so its first access unit may be a P-frame no decoder can use.",
    ]
    for server, steps in result["steps_p50_ms"].items():
        lines.append(f"Where a {server} join's time goes (medians, ms): " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in steps.items()) + ".")
    after, stalls = result["first_key_after_connected_ms"], result["dtls_stalls"]
    lines.append(
        "From `connected` (ICE and DTLS done) to the first keyframe, the part each server's "
        f"keyframe-on-join controls: peercam p50 {after['peercam']['p50']} ms, Janus p50 "
        f"{after['janus']['p50']} ms. Joins whose DTLS took over 0.5 s after ICE: peercam "
        f"{stalls['peercam']}, Janus {stalls['janus']} of {ff['janus']['first_key_ms']['n']}.")
    if decoded:
        lines.append(f"For reference, peercam's CLI viewer to the first *decoded* frame "
                     f"(from its peer connection, as `scripts/bench ttff` measures): p50 "
                     f"{decoded['p50']} ms over {decoded['n']} trials.")
    rounds = result.get("rounds", [])
    lines += [
        "",
        f"**CPU per viewer**: process CPU over {result['seconds']} s with N viewers, after a "
        f"{result['warmup']} s warm-up; the N viewers join {result['join_gap']} s apart."
        + (f" The sweep (every count, both servers) ran {len(rounds)} times, which server "
           "went first alternating per count and per round; a 0-viewer window before each "
           "round and after the last gives each round its own baseline (the mean of the two "
           "around it). The table holds the medians over the rounds; the ratios are each "
           "round's own, then their median." if len(rounds) > 1 else ""),
        "",
        f"Content: the `{result.get('pattern', 'bars')}` test pattern"
        + (", pre-encoded, played by the camera's `file` source and by the feeder (no encoder "
           "in either)" if result.get("clip") else ", encoded live by each")
        + "; *kbit/s*: the H.264 bitrate a viewer received (median); *packets/s*: RTP "
        "packets sent to all viewers",
        "(peercam: its senders' counters; Janus: the frames its viewers got times the",
        "feeder's packets per frame).",
        "",
        "| server | viewers | process CPU (cores) | marginal per viewer | packets/s | "
        "µs/packet | kbit/s per viewer | RSS MiB | viewer fps (min / median) | "
        "first keyframe p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in SERVERS:
        lines.append(f"| {server} | 0 | {base[server]} | | | | | | | |")
        for r in merged_rows(result, server):
            lines.append(
                f"| {server} | {r['viewers']} | {r['cpu_core']} | {_pct(r['marginal_core'])} | "
                f"{r['packets_s_sent'] or '–'} | {r['us_per_packet'] or '–'} | "
                f"{r['kbit_s']} | {r['rss_mib']} | {r['fps_min']} / {r['fps_median']} | "
                f"{r['first_key']['p50']} / {r['first_key']['p95']} |")
    if len(rounds) > 1:
        lines += [
            "",
            "Each round on its own (marginal: least-squares slope from the round's 0-viewer "
            "baseline; per packet: median over the counts of peercam's µs/packet over Janus's):",
            "",
            "| round | first at 1 viewer | idle peercam / Janus (cores) | marginal per viewer "
            "peercam / Janus | ratio | µs/packet peercam / Janus | ratio per packet | "
            "kbit/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in rounds:
            b, m, u = f["baseline_core"], f["marginal_core"], f["us_per_packet"]
            lines.append(
                f"| {f['round'] + 1} | {f['first']} | {b['peercam']} / {b['janus']} | "
                f"{_pct(m['peercam'])} / {_pct(m['janus'])} | {_ratio(f['marginal_ratio'])} | "
                f"{u['peercam']} / {u['janus']} | {_ratio(f['per_packet_ratio'])} | "
                f"{f['kbit_s']} |")
    lines += [
        "",
        f"Marginal CPU per viewer (least-squares slope from 0 viewers"
        f"{', median over the rounds' if len(rounds) > 1 else ''}): peercam "
        f"{_pct(mg['peercam'])}, Janus {_pct(mg['janus'])} of a core; "
        f"**ratio peercam/Janus {_spread(result, 'marginal_ratio')}**. "
        + ("" if result.get("clip") else
           "The camera's encoder dominates its CPU and slows down when the machine is busy; "
           "taking off the feeder's CPU in the same window (the same encoder, same settings) "
           f"leaves peercam {_pct(result['peercam_marginal_encoder_adjusted'])} per viewer, "
           f"ratio {_ratio(result['marginal_ratio_encoder_adjusted'])}. When the two ratios "
           "disagree, the machine was too busy for the first one."),
        "Largest count with every viewer at ≥ 27 fps: " + ", ".join(
            f"{k} {'none' if v is None else v}" for k, v in result["holds_up_to"].items())
        + ".",
        f"First keyframe under these bursts, all counts: peercam p50 {burst['peercam']['p50']} "
        f"ms (p95 {burst['peercam']['p95']}), Janus p50 {burst['janus']['p50']} ms "
        f"(p95 {burst['janus']['p95']}).",
    ]
    ratio_pp = per_packet_ratio(result)
    if ratio_pp is not None:
        lines.append("CPU per packet sent (above each server's idle; median over the counts "
                     "of the per-count ratio" + (", then over the rounds" if len(rounds) > 1
                                                 else "")
                     + f"): **peercam/Janus {_spread(result, 'per_packet_ratio')}**. "
                     "Being a median over the counts, it weighs 1 and 4 viewers, where each "
                     "session's fixed cost (RTCP, consent checks, timers) is spread over few "
                     "packets, as much as 16; the marginal slope is set mostly by the larger "
                     "counts.")
    verdicts = []
    for label, key in (("marginal", "marginal_ratio"), ("per packet", "per_packet_ratio")):
        verdicts += [f"{label} {v}" for v in [verdict(result, key)] if v]
    lines.append("Against the target (ratio ≤ 1.0): " + ", ".join(verdicts) + ". What is left of "
                 "peercam's cost per packet is in its [profile](bench/profile-viewers.md): the "
                 "`sendto` itself, SRTP, a few Python steps per packet and aiortc's RTCP "
                 "receive path, against C in Janus.")
    others = result.get("other_runs", [])
    if others:
        lines += ["", "**By bitrate**: this run first, then the others, each its own run "
                  "(both servers in it, same settings otherwise, folded in with "
                  "`python -m bench.janus fold`, raw samples in `bench/janus-*.json`). "
                  "*median (min–max)* is over the run's "
                  "rounds; a run of one round gives one ratio, and on this shared machine "
                  "one round cannot tell noise from cost.", "",
                  "| video | content | measured kbit/s, peercam / Janus | packets/s per viewer | "
                  "rounds | "
                  "marginal per viewer peercam / Janus | **ratio**, median (min–max) | "
                  "µs/packet peercam / Janus | **ratio per packet**, median (min–max) | "
                  "each round's ratio | against ≤ 1.0: marginal; per packet |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in [{**summary_of(result), "note": "this run"}, *others]:
            mo, up = o["marginal_core"], o["us_per_packet"]
            n = len(o.get("rounds") or [])
            lines.append(
                f"| {o['video']} | {o['pattern']}{' clip' if o.get('clip') else ''}"
                f"{' (' + o['note'] + ')' if o.get('note') else ''} | "
                + (f"{k['peercam']} / {k['janus']}" if (k := o.get("kbit_s_by_server"))
                   else f"{o['kbit_s']}") + " | "
                f"{o['packets_s_per_viewer']:.0f} | "
                f"{n or ('1' if o.get('note') == 'this run' else '1 (earlier, single run)')} | "
                f"{_pct(mo['peercam'])} / {_pct(mo['janus'])} | "
                f"{_range(o, 'marginal_ratio')} | "
                f"{_num(up['peercam'])} / {_num(up['janus'])} | "
                f"{_range(o, 'per_packet_ratio')} | "
                + (", ".join(_ratio(f["marginal_ratio"]) for f in o["rounds"]) if n else "–")
                + f" | {verdict(o, 'marginal_ratio')}; {verdict(o, 'per_packet_ratio')} |")
        caveats = [f"At {o['video']}: {said}" for o in [summary_of(result), *others]
                   if (said := short_delivery(o.get("kbit_s_by_server")))]
        if caveats:
            lines += ["", *caveats]
    lines += [
        "",
        "How it was set up: our own `janus` process with its own config folder (only",
        "`libjanus_streaming.so` and `libjanus_http.so` loaded, HTTP API on a free loopback",
        "port); one `rtp` mountpoint (H.264, pt 96, `profile-level-id=42e01f;"
        "packetization-mode=1`,",
        "an RTCP port); a feeder process (`bench/rtp_feeder.py`) running peercam's test-pattern",
        "source and aiortc's RFC 6184 packetizer into it. Janus viewers speak the Janus HTTP",
        "API (create, attach, `watch`: Janus offers; `start` with our answer; keepalive).",
        "When a viewer's media starts, peercam asks its encoder for an IDR; Janus sends its",
        "source a PLI, which the feeder's encoder obeys through peercam's own keyframe",
        "limiter. " + ("Viewers also send a PLI for each frame before their first keyframe, "
                      "as aiortc's decoder does." if result["viewer_pli"] else
                      "Viewers ask for nothing themselves (`--viewer-pli` makes them PLI like "
                      "aiortc's decoder)."),
        "",
        "Caveats: " + ("neither process encodes (a clip); " if result.get("clip") else
                       "peercam's process CPU includes its encoder and Janus's does not (the "
                       "feeder encodes), hence the marginal figures; ")
        + "both include signaling. Janus passes at most",
        "one PLI a second to its source and sends a held-back one when the second is up, so",
        "joins less than about a second apart (or viewers that PLI) can wait up to a second",
        "for a keyframe: the burst figures above show it, the single joins avoid it.",
        "libnice does not gather on loopback, so Janus viewers use the host's own address",
        "(packets still stay in the kernel); peercam's use 127.0.0.1. Some Janus joins stall",
        "about a second between ICE and DTLS done (counted above): it looks like the first",
        "DTLS flight going unanswered until aiortc resends it after 1 s; it came and went with",
        "the machine's load while this was built. The viewers (Python), both encoders and",
        "both servers share",
        "the machine: when it is short of CPU the encoders skip late pictures and every",
        "viewer's frame rate drops, whichever server it watches. Janus runs its defaults",
        "(no relay helper threads, no keyframe buffering).",
        "",
        "![peercam and Janus](bench/janus.png)",
        "",
    ]
    return lines


# --- Folding a run at another bitrate into the stored result -------------------------------


def run_key(result: dict[str, Any]) -> tuple[str, str, bool]:
    """What makes two runs the same measurement: video, content, clip or live."""
    return (result["video"], str(result.get("pattern")), bool(result.get("clip")))


def merge_other_runs(others: list[dict[str, Any]], new: list[dict[str, Any]],
                     drop: tuple[str, str, bool] | None = None) -> list[dict[str, Any]]:
    """``others`` with ``new`` added; an older line for the same video and content as a
    new one (or as ``drop``) goes. Runs with rounds first, then by video."""
    gone = {run_key(o) for o in new} | ({drop} if drop else set())
    kept = [o for o in others if run_key(o) not in gone]
    return sorted([*new, *kept], key=lambda o: (not o.get("rounds"), o["video"]))


def fold(into: Path, run: Path, note: str = "") -> dict[str, Any]:
    """Add ``run`` (a janus result stored elsewhere with ``--out``) to the runs at other
    bitrates of the result in ``into``; an earlier line for the same video and content
    is replaced. Returns the updated result (also written to ``into``)."""
    main: dict[str, Any] = json.loads(into.read_text())
    other: dict[str, Any] = json.loads(run.read_text())
    if "rows" not in other or "video" not in other:
        raise SystemExit(f"bench: {run} is not a stored janus result")
    if run_key(other) == run_key(main):
        raise SystemExit(f"bench: {run} measured what {into} did ({other['video']}, "
                         f"{other.get('pattern')}): run it as the main result instead")
    # Its raw samples stay beside the stored result (the page reads only the summary).
    slug = re.sub(r"[^0-9A-Za-z]+", "-", f"{other['video']} {other.get('pattern')}").strip("-")
    raw = into.with_name(f"{NAME}-{slug}{'-clip' if other.get('clip') else ''}.json")
    raw.write_text(json.dumps(other, indent=1))
    line = {**summary_of(other), "raw": raw.name, **({"note": note} if note else {})}
    main["other_runs"] = merge_other_runs(main.get("other_runs", []), [line])
    into.write_text(json.dumps(main, indent=1))
    return main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.janus",
        description="Fold a janus run at another bitrate (stored with --out elsewhere) into "
                    "the stored result, then rewrite the benchmarks page.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fold", help="add a run to the table of runs at other bitrates")
    f.add_argument("run", type=Path, help="that run's janus.json")
    f.add_argument("--into", type=Path, default=ROOT / "docs" / "bench" / f"{NAME}.json")
    f.add_argument("--note", default="", help="a word on the run, shown beside its content")
    args = parser.parse_args(argv)
    from bench.__main__ import benchmarks
    from bench.report import write_report

    result = fold(args.into, args.run, args.note)
    print(f"{NAME}: {len(result['other_runs'])} other run(s) in {args.into}; "
          f"report: {write_report(args.into.parent, benchmarks())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
