"""Snapshots: ``peercam snapshot`` and the gateway's /<camera>/snapshot.jpg, real camera."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import av
import numpy as np

from camera.client.receiver import stamp_region
from camera.client.snapshot import encode_jpeg, snapshot
from camera.stamp import read as read_stamp
from tests.camera.whep_helpers import TOKEN, running_gateway
from tests.conftest import Stack, scaled

ROOT = Path(__file__).resolve().parents[2]


def decode_jpeg(data: bytes) -> av.VideoFrame:
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    with av.open(io.BytesIO(data), format="mjpeg") as container:
        return next(container.decode(video=0))


def stamp_of(data: bytes) -> tuple[int, int] | None:
    return read_stamp(stamp_region(decode_jpeg(data)))


def test_a_decoded_frame_round_trips_through_jpeg() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, 320))[:240]
    frame = av.VideoFrame.from_ndarray(np.stack([ramp] * 3, -1), format="rgb24")
    back = decode_jpeg(encode_jpeg(frame.reformat(format="yuv420p"), 2))
    assert (back.width, back.height) == (320, 240)
    gray = back.to_ndarray(format="gray").astype(int)
    assert np.abs(gray - ramp.astype(int)).max() <= 6


async def test_snapshot_shows_the_cameras_frame_stamp(stack: Stack) -> None:
    agent = await stack.camera()
    picture = await snapshot(stack.link(agent), timeout=scaled(15))
    assert (picture.width, picture.height) == (320, 240)
    stamp = stamp_of(picture.jpeg)
    assert stamp is not None, "the test pattern's stamp did not survive decode + JPEG"
    # Pillow, where it is installed, reads it as a JPEG as well.
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(io.BytesIO(picture.jpeg)) as image:
        assert image.format == "JPEG" and image.size == (320, 240)


async def test_the_cli_writes_a_jpeg(stack: Stack, tmp_path: Path, viewer_dir: Path) -> None:
    agent = await stack.camera()
    out = tmp_path / "shot.jpg"
    env = {**os.environ, "PEERCAM_ICE_ADDRESSES": "127.0.0.1",
           "PEERCAM_VIEWER_DIR": str(viewer_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", "snapshot", stack.link(agent), "-o", str(out),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _stdout, stderr = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "320x240" in stderr.decode()
    assert stamp_of(out.read_bytes()) is not None


async def test_the_cli_says_why_without_a_camera(stack: Stack, tmp_path: Path,
                                                 viewer_dir: Path) -> None:
    from camera.identity import DeviceIdentity

    ghost = DeviceIdentity.load_or_create(tmp_path / "ghost").device_id
    env = {**os.environ, "PEERCAM_ICE_ADDRESSES": "127.0.0.1",
           "PEERCAM_VIEWER_DIR": str(viewer_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", "snapshot", ghost, "--rendezvous", stack.url,
        "-o", str(tmp_path / "none.jpg"), "--timeout", "5", cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _stdout, stderr = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode == 1
    assert "unavailable" in stderr.decode()
    assert not (tmp_path / "none.jpg").exists()


async def get_snapshot(http: aiohttp.ClientSession, url: str,
                       **headers: str) -> tuple[bytes, str]:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "image/jpeg"
        return await response.read(), response.headers["X-Snapshot-Source"]


async def test_gateway_snapshots_are_cached(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, snapshot_cache=1.0) as gw, \
            aiohttp.ClientSession() as http:
        url = f"{gw.url}/front/snapshot.jpg"
        first, how = await get_snapshot(http, f"{url}?token={TOKEN}")
        assert how == "miss" and stamp_of(first) is not None
        second, how = await get_snapshot(http, url, Authorization=f"Bearer {TOKEN}")
        assert how == "hit" and second == first
        assert gw.gateway.snapshot_sessions() == 1  # served from memory: no new session
        # Two pollers at once after the cache ran out share one session.
        await asyncio.sleep(1.1)
        results = await asyncio.gather(get_snapshot(http, f"{url}?token={TOKEN}"),
                                       get_snapshot(http, f"{url}?token={TOKEN}"))
        assert sorted(how for _data, how in results) == ["miss", "shared"]
        assert gw.gateway.snapshot_sessions() == 2
        third = results[0][0]
        stamps = stamp_of(first), stamp_of(third)
        assert stamps[0] is not None and stamps[1] is not None
        assert stamps[1][0] != stamps[0][0], "a fresh snapshot showed the old frame"
        # The camera has no snapshot session left open (warm is 0).
        async with asyncio.timeout(scaled(10)):
            while agent.sessions:
                await asyncio.sleep(0.05)


async def test_a_warm_session_serves_the_next_snapshot(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, snapshot_cache=0.0,
                               snapshot_warm=5.0) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/front/snapshot.jpg?token={TOKEN}"
        first, how = await get_snapshot(http, url)
        assert how == "miss"
        await asyncio.sleep(0.3)
        second, how = await get_snapshot(http, url)
        assert how == "warm"
        assert gw.gateway.snapshot_sessions() == 1
        first_stamp, second_stamp = stamp_of(first), stamp_of(second)
        assert first_stamp is not None and second_stamp is not None
        assert second_stamp[0] > first_stamp[0]  # a later frame of the same session
        assert len(agent.sessions) == 1


async def test_snapshot_of_an_offline_camera_says_so(stack: Stack, tmp_path: Path) -> None:
    from camera.client.whep_config import CameraEntry
    from camera.identity import DeviceIdentity

    agent = await stack.camera()
    ghost = DeviceIdentity.load_or_create(tmp_path / "ghost").device_id
    extra = (CameraEntry("ghost", ghost, stack.url),)
    async with running_gateway(stack.url, agent, tmp_path, extra_cameras=extra) as gw, \
            aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/ghost/snapshot.jpg?token={TOKEN}") as response:
            assert response.status == 503
            assert "offline" in await response.text()
        _data, how = await get_snapshot(http, f"{gw.url}/front/snapshot.jpg?token={TOKEN}")
        assert how == "miss"
