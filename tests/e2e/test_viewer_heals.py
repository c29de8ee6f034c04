"""The CLI viewer never gives up: real rendezvous, real camera agents, real aiortc viewers.

Media outlives signaling (a rendezvous restart is not even a gap), a session
that dies is replaced (a camera restart is a gap, then video again, in the
same recording), a stalled session is replaced make-before-break with nothing
left behind, and a revoked viewer still ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCPeerConnection

from camera.acl import ViewerACL
from camera.agent import CameraAgent
from camera.client import heal
from camera.client.heal import STALLED
from camera.client.viewer import SessionEnded, ViewStats, stamp_region, view
from camera.config import CameraConfig, make_configured_source
from camera.identity import DeviceIdentity
from camera.stamp import read as read_stamp
from tests.conftest import SMALL_VIDEO, Stack, scaled
from tests.e2e.test_recovery import free_port


async def _rendezvous_process(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", "rendezvous", "--listen", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    async with asyncio.timeout(scaled(20)):
        while not (await proc.stdout.readline()).startswith(b"LISTENING"):
            pass
    return proc


@pytest.fixture
async def killable(tmp_path: Path, viewer_dir: Path) -> AsyncIterator[tuple[Stack, int]]:
    """A stack whose rendezvous is a process of its own, to be killed for real."""
    port = free_port()
    procs = [await _rendezvous_process(port)]
    stack = Stack(None, f"ws://127.0.0.1:{port}", tmp_path)  # type: ignore[arg-type]
    stack.procs = procs  # type: ignore[attr-defined]
    try:
        yield stack, port
    finally:
        for agent in stack.agents:
            await agent.close()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _watching(camera: CameraAgent) -> None:
    """Until the camera has a connected session, and a second of video more."""
    async with asyncio.timeout(scaled(10)):
        while not any(s.connected.is_set() for s in camera.sessions.values()):
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)


async def test_a_rendezvous_killed_and_restarted_never_interrupts_the_video(
    killable: tuple[Stack, int]
) -> None:
    stack, port = killable
    camera = await stack.camera()
    watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(8)))
    await _watching(camera)
    first = stack.procs[0]  # type: ignore[attr-defined]
    first.send_signal(signal.SIGKILL)  # no goodbyes: the process is gone
    await first.wait()
    await asyncio.sleep(1.5)  # refused connections meanwhile: both links retry
    stack.procs.append(await _rendezvous_process(port))  # type: ignore[attr-defined]
    stats: ViewStats = await asyncio.wait_for(watching, scaled(30))
    assert stats.frames > 150
    assert stats.sessions == 1 and stats.last_cause is None  # the session was never replaced
    assert stats.max_gap_ms is not None and stats.max_gap_ms < 500, stats.max_gap_ms
    assert stats.reconnects >= 1  # and the viewer's own link came back


async def _restarted(stack: Stack, state: Path) -> CameraAgent:
    """A new agent on the same state directory (same identity, same ACL)."""
    cfg = CameraConfig(rendezvous=stack.url, state_dir=state, video=SMALL_VIDEO,
                       backoff_base=0.1, backoff_cap=1.0)
    agent = CameraAgent(cfg, make_configured_source(cfg), DeviceIdentity.load_or_create(state))
    stack.agents.append(agent)
    await agent.start()
    return agent


async def test_a_restarted_camera_is_watched_again_and_the_recording_goes_on(
    stack: Stack, tmp_path: Path
) -> None:
    camera = await stack.camera()
    out = tmp_path / "clip.mp4"
    watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(9), record=out))
    await _watching(camera)
    await camera.close()  # the camera goes away (its sessions end with DTLS close)
    await asyncio.sleep(1.0)
    again = await _restarted(stack, tmp_path / "camera0")
    assert again.device_id == camera.device_id
    stats: ViewStats = await asyncio.wait_for(watching, scaled(40))
    assert stats.sessions == 2, stats
    assert stats.last_cause is not None and "closed" in stats.last_cause
    assert stats.max_gap_ms is not None and stats.max_gap_ms > 1000  # the outage
    # One file, playable, with frames of both sessions and the outage as a gap.
    captured: list[tuple[float, int]] = []
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            stamp = read_stamp(stamp_region(frame))
            assert frame.pts is not None
            if stamp is not None:
                captured.append((float(frame.pts * stream.time_base), stamp[1]))
    assert not (tmp_path / "clip.2.mp4").exists()
    pts = [p for p, _ in captured]
    assert pts == sorted(pts)
    jumps = [(b[1] - a[1], b[0] - a[0], n) for n, (a, b) in enumerate(zip(captured, captured[1:],
                                                                          strict=False))]
    wall_gap, file_gap, at = max(jumps)
    assert wall_gap > 1000  # capture times jump across the outage ...
    assert file_gap > 0.8 * wall_gap / 1000  # ... and the file shows it as a gap
    assert at > 20 and len(captured) - at > 20  # frames of both sessions


async def test_a_viewer_waiting_on_an_offline_camera_starts_when_it_registers(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No fallback retry within the test: only the rendezvous' ``online`` can start it.
    monkeypatch.setattr(heal, "WAIT_RETRY_BASE", 600.0)
    monkeypatch.setattr(heal, "WAIT_RETRY_CAP", 600.0)
    state = tmp_path / "camera0"
    device_id = DeviceIdentity.load_or_create(state).device_id
    ViewerACL(state).add(stack.viewer.key, stack.viewer.name)
    link = f"{stack.url.replace('ws://', 'http://')}/#device={device_id}"
    watching = asyncio.ensure_future(view(link, seconds=1, wait=scaled(120)))
    async with asyncio.timeout(scaled(10)):  # its first try failed; it watches
        while device_id not in stack.rendezvous.router.watchers:
            await asyncio.sleep(0.05)
    await _restarted(stack, state)
    stats: ViewStats = await asyncio.wait_for(watching, scaled(30))
    assert stats.frames > 0 and stats.sessions == 1
    assert stack.rendezvous.router.watchers == {}


async def test_a_revoked_viewer_ends_with_ended_by_camera_and_retries_once(
    stack: Stack
) -> None:
    camera = await stack.camera()
    watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(30)))
    await _watching(camera)
    paired = camera.acl.get(stack.viewer.key)
    assert paired is not None
    camera.acl.revoke(paired.fingerprint)
    assert camera.end_revoked_sessions() == 1
    with pytest.raises(SessionEnded, match="revoked") as ended:
        await asyncio.wait_for(watching, scaled(10))
    assert ended.value.stats is not None and ended.value.stats.frames > 0
    await asyncio.sleep(1.0)
    assert camera.refusals == 1  # the one new offer after the close, and no more


async def test_a_stalled_session_is_replaced_before_it_is_closed_leaving_nothing_behind(
    stack: Stack
) -> None:
    camera = await stack.camera()
    gc.collect()
    before = set(asyncio.all_tasks())
    # Peer connections this test makes (the viewer's and the camera's), not what other
    # tests in the same process may have left.
    pcs_before = {id(pc) for pc in gc.get_objects() if isinstance(pc, RTCPeerConnection)}
    watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(6), stall=1.0))
    await _watching(camera)
    (stalled,) = camera.sessions.values()
    assert stalled.track is not None
    stalled.track.stop()  # the camera stops sending to this session; ICE and DTLS stay up
    most = 0
    while not watching.done():  # make-before-break: the camera sees both at once
        most = max(most, len(camera.sessions))
        await asyncio.sleep(0.02)
    stats: ViewStats = watching.result()
    assert stats.sessions == 2 and stats.last_cause == STALLED
    assert most == 2
    assert stats.max_gap_ms is not None and 1000 <= stats.max_gap_ms < scaled(4000)
    async with asyncio.timeout(scaled(10)):  # the viewer closed both: so does the camera
        while camera.sessions:
            await asyncio.sleep(0.05)

    def leftovers() -> tuple[list[RTCPeerConnection], list[asyncio.Task[Any]]]:
        gc.collect()
        open_pcs = [pc for pc in gc.get_objects()
                    if isinstance(pc, RTCPeerConnection) and pc.connectionState != "closed"
                    and id(pc) not in pcs_before]
        left = [t for t in asyncio.all_tasks() - before
                if t is not asyncio.current_task() and not t.done()]
        return open_pcs, left

    # A closed session leaves the camera's table at once and finishes closing (its
    # peer connection, its tasks) in a task of its own: give that a moment on a busy
    # machine; a leak stays.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(scaled(5)):
            while any(leftovers()):
                await asyncio.sleep(0.1)
    open_pcs, left = leftovers()
    assert open_pcs == []
    assert left == [], [t.get_coro() for t in left]
