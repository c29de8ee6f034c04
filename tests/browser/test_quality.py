"""The web viewer's layer control in real headless Chromium against a real camera."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

VIDEO_SIZE = ("[document.querySelector('video').videoWidth,"
              " document.querySelector('video').videoHeight]")


async def test_the_page_shows_the_layer_and_pins_low_then_high(
    stack: Stack, browser: Any
) -> None:
    camera = await stack.camera()
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(link)
        timeout = scaled(20) * 1000
        await page.wait_for_function("window.peercam.framesDecoded > 10 && window.peercam.layer",
                                     timeout=timeout)
        state = await page.evaluate("({...window.peercam})")
        assert (state["layer"], state["qualityMode"], state["layers"]) == (
            "high", "auto", ["high", "low"])
        assert await page.locator("#quality").is_visible()
        assert await page.locator("#quality-layer").text_content() == "high"
        assert await page.locator("#quality-auto").get_attribute("aria-pressed") == "true"
        assert await page.evaluate(VIDEO_SIZE) == [320, 240]

        await page.locator("#quality-low").click()
        await page.wait_for_function(f"{VIDEO_SIZE}[0] === 160", timeout=timeout)
        await page.wait_for_function("window.peercam.layer === 'low'", timeout=timeout)
        assert await page.evaluate(VIDEO_SIZE) == [160, 120]
        assert await page.locator("#quality-layer").text_content() == "low"
        assert await page.locator("#quality-low").get_attribute("aria-pressed") == "true"
        (session,) = camera.sessions.values()
        assert session.layer == "low" and session.quality is not None
        assert session.quality.mode == "low"
        frames = await page.evaluate("window.peercam.framesDecoded")
        await page.wait_for_function(f"window.peercam.framesDecoded > {frames + 30}",
                                     timeout=timeout)  # it goes on playing small

        await page.locator("#quality-high").click()
        await page.wait_for_function(f"{VIDEO_SIZE}[0] === 320", timeout=timeout)
        await page.wait_for_function("window.peercam.layer === 'high'", timeout=timeout)
        state = await page.evaluate("({...window.peercam})")
        assert state["qualityMode"] == "high" and state["layerSwitches"] == 2
        assert state["qualityWanted"] == "high"
        assert session.layer == "high" and session.quality.mode == "high"
        assert state["state"] == "connected" and state["reconnects"] == 0
        assert errors == []
    finally:
        await context.close()
