"""What every benchmark shares: the camera process, the rendezvous, statistics, the machine.

The camera runs in its own process (``python -m bench _camera``) so its CPU and
memory are its own; its ICE host candidates are pinned to 127.0.0.1 so every
packet stays on loopback unless a benchmark says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHROMIUM = "/usr/bin/chromium"


class Missing(SystemExit):
    """A component the benchmark needs is not installed: exit non-zero, say what."""

    def __init__(self, what: str, how: str) -> None:
        super().__init__(f"bench: {what} is missing ({how}); nothing was measured")


def need_executable(path_or_name: str, how: str) -> str:
    found = path_or_name if os.path.exists(path_or_name) else shutil.which(path_or_name)
    if not found:
        raise Missing(path_or_name, how)
    return found


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"bench: {what} needs root (network namespaces); nothing was measured")


def pin_loopback() -> None:
    from camera.webrtc import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])


class Camera:
    """A camera agent in its own process (see bench/__main__.py ``_camera``)."""

    def __init__(self, rendezvous: str, mode: str, state_dir: Path, width: int = 1280,
                 height: int = 720, *, bitrate: int = 2_000_000, fps: int = 30,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 extra: list[str] | None = None, pattern: str = "bars",
                 clip: str = "") -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "bench", "_camera", "--mode", mode,
             "--rendezvous", rendezvous, "--state-dir", str(state_dir), "--width", str(width),
             "--height", str(height), "--bitrate", str(bitrate), "--fps", str(fps),
             "--pattern", pattern, *(["--clip", clip] if clip else []), *(extra or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.device_id = ""
        self.pair_secret = ""
        self.join_value = True
        """camera.broadcaster.JOIN_TAKES_ASKED_IDR in the camera (see join_takes_asked_idr)."""

    async def started(self) -> Camera:
        """Wait (without blocking the loop) for its device ID and pairing secret."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 60)
        if not line.startswith("DEVICE "):
            raise SystemExit(f"bench: camera did not start ({line!r})")
        self.device_id = line.split()[1]
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 30)
        self.pair_secret = line.split()[1]
        return self

    def link(self, url: str, pair: bool = False) -> str:
        base = url.replace("wss://", "https://").replace("ws://", "http://")
        link = f"{base}/#device={self.device_id}"
        return f"{link}&pair={self.pair_secret}" if pair else link

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def packets_sent(self) -> int:
        """RTP packets the camera's live video senders sent so far (its own counter)."""
        import signal

        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        self.proc.send_signal(signal.SIGUSR1)
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 10)
        if not line.startswith("SENT "):
            raise SystemExit(f"bench: the camera did not count its packets ({line!r})")
        return int(line.split()[1])

    async def join_takes_asked_idr(self, value: bool) -> None:
        """Set camera.broadcaster.JOIN_TAKES_ASKED_IDR in a camera started with
        ``--join-toggle`` (each SIGUSR2 flips it; the camera prints the new value)."""
        import signal

        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while self.join_value != value:
            self.proc.send_signal(signal.SIGUSR2)
            line = await asyncio.wait_for(
                loop.run_in_executor(None, self.proc.stdout.readline), 10)
            if not line.startswith("JOIN "):
                raise SystemExit(f"bench: the camera did not flip its join rule ({line!r})")
            self.join_value = line.split()[1] == "True"

    def rss_mib(self) -> float:
        return rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def start_rendezvous() -> tuple[Any, str]:
    from services.rendezvous import RendezvousConfig
    from services.rendezvous import start_rendezvous as start

    # Every bench viewer comes from 127.0.0.1: lift the per-address limits that
    # would refuse a burst of 32 joins (they protect a public server, not this).
    config = RendezvousConfig(connection_rate=1000.0, connection_burst=1000.0,
                              max_pending_per_ip=512)
    _server, runner, port = await start("127.0.0.1", 0, config)
    return runner, f"ws://127.0.0.1:{port}"


class _CountingQueue(queue.Queue):  # type: ignore[type-arg]
    """Stands in for aiortc's decoder queue: counts access units, decodes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.octets = 0
        """H.264 bytes of the access units counted (the encoder's bitrate)."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item)  # the receiver's stop signal for its decoder thread
        else:
            self.frames += 1
            self.octets += len(getattr(item[1], "data", b""))


async def null_viewer(url: str, device_id: str, seconds: float, warmup: float,
                      traffic: dict[str, float] | None = None) -> float:
    """Receive (SRTP, depayload) without decoding; return access units/s after warm-up.

    ``traffic``, if given, gets the window's ``kbit_s`` (H.264 payload received)."""
    import aiohttp
    from aiortc import RTCSessionDescription

    from camera.client.viewer import ViewerIdentity
    from camera.compat.receiver import set_decoder_queue
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
        set_decoder_queue(transceiver.receiver, counter)
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
        start, octets = counter.frames, counter.octets
        await asyncio.sleep(seconds)
        rate = (counter.frames - start) / seconds
        if traffic is not None:
            traffic["kbit_s"] = (counter.octets - octets) * 8 / seconds / 1000
        await ws.send_str(encode(Role.VIEWER, "bye", session_id=session))
        await pc.close()
        return rate


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p95": round(percentile(ordered, 0.95), 1),
        "p99": round(percentile(ordered, 0.99), 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
