"""Metrics with a real camera agent, a real rendezvous and a real viewer on loopback:
both expositions pass promtool, and their values move as a viewer joins and leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from camera.client.viewer import view
from tests.conftest import Stack, scaled
from tests.prometheus import assert_lint_clean, value


async def until(read: Callable[[], str], check: Callable[[str], bool], what: str) -> str:
    """Poll ``read`` until ``check`` holds for its text (or fail naming ``what``)."""
    text = ""
    for _ in range(int(scaled(100))):
        try:
            text = read()
            if check(text):
                return text
        except (FileNotFoundError, AssertionError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}; last text:\n{text}")


async def test_values_move_when_a_viewer_joins_and_leaves(stack: Stack, tmp_path: Path) -> None:
    directory = tmp_path / "textfiles"
    directory.mkdir()
    textfile = directory / "metrics.prom"
    camera = await stack.camera(metrics_file=str(textfile))
    camera.supervisor.metrics.every = 0.2  # the test need not wait 5 s per write
    base = stack.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:

        async def rendezvous() -> str:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                return await response.text()

        before = await rendezvous()
        assert value(before, "peercam_rendezvous_cameras_online") == 1
        assert value(before, "peercam_rendezvous_viewer_sessions_started_total", kind="offer") == 0
        idle = await until(textfile.read_text,
                           lambda t: value(t, "peercam_camera_frames_published_total") > 0,
                           "the camera wrote no frames count")
        assert_lint_clean(idle)
        assert value(idle, "peercam_camera_rendezvous_registered") == 1
        assert value(idle, "peercam_camera_viewers", phase="live") == 0

        watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(4)))
        live = await until(textfile.read_text,
                           lambda t: value(t, "peercam_camera_viewers_connected",
                                           path="direct") == 1,
                           "the camera's textfile never showed the viewer")
        during = await rendezvous()
        assert_lint_clean(live)
        assert_lint_clean(during)
        assert value(live, "peercam_camera_viewers", phase="live") == 1
        assert value(live, "peercam_camera_viewer_path_info", path="direct",
                     pair="host->host") == 1
        assert value(live, "peercam_camera_keyframe_requests_total") >= 1  # the join asked
        assert value(during, "peercam_rendezvous_viewer_sessions_started_total",
                     kind="offer") == 1
        assert value(during, "peercam_rendezvous_viewer_sessions_active", kind="offer") == 1
        assert value(during, "peercam_rendezvous_viewers_connected") == 1
        stats = await watching
        assert stats.frames > 0

        left = await until(textfile.read_text,
                           lambda t: value(t, "peercam_camera_viewers", phase="live") == 0
                           and value(t, "peercam_camera_viewers_connected", path="direct") == 0,
                           "the camera's textfile kept the viewer after it left")
        assert "peercam_camera_viewer_path_info{" not in left
        assert (value(left, "peercam_camera_frames_published_total")
                > value(idle, "peercam_camera_frames_published_total"))
        after = await rendezvous()
        for _ in range(int(scaled(50))):
            if value(after, "peercam_rendezvous_viewers_connected") == 0:
                break
            await asyncio.sleep(0.1)
            after = await rendezvous()
        assert value(after, "peercam_rendezvous_viewer_sessions_active", kind="offer") == 0
        assert value(after, "peercam_rendezvous_viewer_sessions_started_total",
                     kind="offer") == 1
        assert value(after, "peercam_rendezvous_viewer_sessions_answered_total",
                     kind="offer") == 1
        assert value(after, "peercam_rendezvous_viewers_connected") == 0
        assert_lint_clean(after)


async def test_a_textfile_that_cannot_be_written_costs_nothing_but_a_warning(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    camera = await stack.camera()
    metrics = camera.supervisor.metrics
    assert metrics.path == camera.config.state_dir / "metrics.prom"  # the default
    gone = tmp_path / "gone"
    metrics.path, metrics.every = gone / "metrics.prom", 0.1
    with caplog.at_level(logging.INFO, logger="camera.metrics"):
        await asyncio.sleep(1.0)
        warnings = [r for r in caplog.records if "cannot write the metrics file" in r.message]
        assert len(warnings) == 1  # once, not every tick
        gone.mkdir()
        await until((gone / "metrics.prom").read_text,
                    lambda t: value(t, "peercam_camera_rendezvous_registered") == 1,
                    "the textfile did not come back")
    assert any("written again" in r.message for r in caplog.records)
    assert camera.registered.is_set() and camera.broadcaster.frames_published > 0
