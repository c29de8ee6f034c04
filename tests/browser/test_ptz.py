"""The web viewer's pan/tilt pad in real headless Chromium, down to the bytes on loop://."""

from __future__ import annotations

from typing import Any

import pytest

from camera.agent import CameraAgent
from tests.conftest import Stack, scaled
from tests.e2e.test_ptz import GOTO_3, RIGHT, STOP, h, nothing_more, ptz_camera, read

pytestmark = pytest.mark.browser

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
UP = h("ff 01 00 08 00 20 29")
ZOOM_IN = h("ff 01 00 20 00 00 21")
SET_2 = h("ff 01 00 03 00 02 06")


async def frames_until_stop(camera: CameraAgent, timeout: float = 3.0) -> list[bytes]:
    """Frames from the line up to and including the next stop."""
    frames: list[bytes] = []
    while not frames or frames[-1] != STOP:
        frames.append(await read(camera, 7, timeout))
    return frames


async def open_viewer(
    browser: Any, stack: Stack, camera: CameraAgent
) -> tuple[Any, Any, list[str]]:
    context = await browser.new_context(**DESKTOP)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{stack.link(camera)}&pair={camera.open_pairing()}")
    await page.wait_for_function("window.peercam.framesDecoded > 0", timeout=scaled(20) * 1000)
    return context, page, errors


async def test_pad_and_keys_drive_the_head(stack: Stack, browser: Any) -> None:
    camera = await ptz_camera(stack)
    context, page, errors = await open_viewer(browser, stack, camera)
    try:
        await page.wait_for_function("window.peercam.ptzAvailable === true",
                                     timeout=scaled(10) * 1000)
        assert await page.locator("#ptz").is_visible()

        # Hold the right arrow for a while: moves repeated while held, stop on release.
        box = await page.locator("#ptz-right").bounding_box()
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.mouse.down()
        assert await read(camera, 7) == RIGHT
        await page.wait_for_timeout(700)
        await page.mouse.up()
        frames = await frames_until_stop(camera)
        assert frames[:-1] == [RIGHT] * (len(frames) - 1) and len(frames) >= 3, frames
        # The pad is not the stage: pressing it did not toggle the statistics overlay.
        assert await page.locator("#overlay").is_hidden()

        # Keyboard: an arrow key held, then released.
        await page.keyboard.down("ArrowUp")
        assert await read(camera, 7) == UP
        await page.keyboard.up("ArrowUp")
        frames = await frames_until_stop(camera)
        assert set(frames[:-1]) <= {UP}
        # + zooms while held; a digit goes to its preset, Shift+digit stores one.
        await page.keyboard.down("+")
        assert await read(camera, 7) == ZOOM_IN
        await page.keyboard.up("+")
        assert set(await frames_until_stop(camera)) <= {ZOOM_IN, STOP}
        await page.keyboard.press("Digit3")
        assert await read(camera, 7) == GOTO_3
        await page.keyboard.press("Shift+Digit2")
        assert await read(camera, 7) == SET_2
        # Escape stops at once, even with nothing held.
        await page.keyboard.press("Escape")
        assert await read(camera, 7) == STOP
        assert await nothing_more(camera) == b""

        state = await page.evaluate("({...window.peercam})")
        assert state["ptzAcks"] == state["ptzSent"] and state["ptzLastError"] is None
        assert state["ptzLastAck"] == "stop"
        assert errors == []
    finally:
        await context.close()


async def test_pad_is_hidden_without_a_head(stack: Stack, browser: Any) -> None:
    camera = await stack.camera()
    context, page, errors = await open_viewer(browser, stack, camera)
    try:
        await page.wait_for_function("window.peercam.ptzAvailable === false",
                                     timeout=scaled(10) * 1000)
        assert await page.locator("#ptz").is_hidden()
        # Keys that would drive a head do what they did before (S toggles the overlay).
        await page.keyboard.press("s")
        assert await page.locator("#overlay").is_visible()
        assert await page.evaluate("window.peercam.ptzSent") == 0
        assert errors == []
    finally:
        await context.close()
