"""The web viewer in real headless Chromium against a real camera on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 3}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


async def _watch(browser: Any, link: str, context_args: dict[str, Any]) -> dict[str, Any]:
    context = await browser.new_context(**context_args)
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(link)
        await page.wait_for_function(
            "window.peercam && window.peercam.framesDecoded > 0", timeout=scaled(20) * 1000
        )
        first = await page.evaluate("window.peercam.framesDecoded")
        await page.wait_for_timeout(2000)
        stats: dict[str, Any] = await page.evaluate("({...window.peercam})")
        stats["first_count"] = first
        stats["errors"] = errors
        stats["video_size"] = await page.evaluate(
            "[document.querySelector('video').videoWidth,"
            " document.querySelector('video').videoHeight]"
        )
        box = await page.locator("video").bounding_box()
        stats["video_box"] = box
        return stats
    finally:
        await context.close()


@pytest.mark.parametrize("context_args", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_chromium_decodes_the_camera(
    stack: Stack, browser: Any, context_args: dict[str, Any]
) -> None:
    camera = await stack.camera()
    # A fresh browser profile has a fresh key: it pairs from the link, as a user would.
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    stats = await _watch(browser, link, context_args)
    assert stats["errors"] == []
    # framesDecoded keeps rising: live video, not one frame.
    assert stats["framesDecoded"] >= stats["first_count"] + 30, stats
    assert stats["video_size"] == [320, 240]
    assert stats["state"] == "connected"
    assert stats["ttffMs"] is not None and stats["ttffMs"] > 0
    # No ICE servers: a direct path. Chromium learns its own loopback address as
    # peer-reflexive (it does not advertise loopback host candidates).
    assert stats["remoteCandidateType"] == "host"
    assert stats["localCandidateType"] in ("host", "prflx")
    # The video fills the viewport width (responsive layout on a phone too).
    width = context_args["viewport"]["width"]
    assert stats["video_box"]["width"] >= width * 0.95
    # Closing the page ended the session on the camera (pagehide bye).
    for _ in range(50):
        if not camera.sessions:
            break
        await asyncio.sleep(0.1)
    assert camera.sessions == {}
    assert camera.broadcaster.viewer_count == 0


async def test_chromium_reconnects_after_the_camera_restarts(stack: Stack, browser: Any) -> None:
    camera = await stack.camera()
    context = await browser.new_context(**DESKTOP)
    try:
        page = await context.new_page()
        await page.goto(f"{stack.link(camera)}&pair={camera.open_pairing()}")
        await page.wait_for_function("window.peercam.framesDecoded > 0", timeout=20_000)
        # Drop every session on the camera side: the page must notice and come back.
        for session in list(camera.sessions.values()):
            await session.close("test: simulated drop")
        await page.wait_for_function("window.peercam.reconnects >= 1", timeout=20_000)
        await page.wait_for_function(
            "window.peercam.state === 'connected' && window.peercam.framesDecoded > 10",
            timeout=30_000,
        )
        assert len(camera.sessions) == 1
    finally:
        await context.close()
