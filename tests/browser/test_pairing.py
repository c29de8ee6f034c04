"""Pairing and signed sessions in real headless Chromium against a real camera.

The page's viewer key is a non-extractable WebCrypto key kept in IndexedDB, so
a reload in the same browser context is the same viewer; a new context is a
stranger. The rendezvous is the untrusted party: one test has it alter the
camera's answer in transit and expects the page to refuse it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from camera.acl import ViewerACL
from camera.agent import CameraAgent
from services.routing import Action, Peer
from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

NOT_PAIRED = "not paired with this camera"
STATE = "({...window.peercam, url: location.href})"


class Page:
    """A page plus what it said on the console and sent on its WebSockets."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        self.sent: list[str] = []
        page.on("console", lambda msg: self.console.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("websocket", self._on_socket)

    def _on_socket(self, ws: Any) -> None:
        ws.on("framesent", lambda payload: self.sent.append(str(payload)))

    def sent_types(self) -> list[str]:
        return [json.loads(text).get("type") for text in self.sent]

    async def wait(self, expression: str, seconds: float = 20) -> None:
        await self.page.wait_for_function(expression, timeout=scaled(seconds) * 1000)

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate(STATE)
        return result

    async def watch(self) -> dict[str, Any]:
        """Wait for video and check it is live: framesDecoded keeps rising."""
        await self.wait("window.peercam.framesDecoded > 0")
        first = await self.page.evaluate("window.peercam.framesDecoded")
        await self.page.wait_for_timeout(1500)
        stats = await self.state()
        assert stats["framesDecoded"] >= first + 15, stats
        assert stats["state"] == "connected", stats
        return stats


@pytest.fixture
async def context(browser: Any) -> AsyncIterator[Any]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield ctx
    finally:
        await ctx.close()


async def _eventually(check: Any, seconds: float = 10) -> None:
    for _ in range(int(scaled(seconds) * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    assert check()


def _pairing_link(stack: Stack, camera: CameraAgent, secret: str) -> str:
    return f"{stack.link(camera)}&pair={secret}"


async def test_pair_watch_reload_then_revoke(stack: Stack, context: Any) -> None:
    camera = await stack.camera()
    secret = camera.open_pairing(ttl=300)
    page = Page(await context.new_page())

    await page.page.goto(_pairing_link(stack, camera, secret))
    await page.wait("window.peercam.paired === true")
    stats = await page.watch()
    key = stats["viewerKey"]
    # The camera added this browser's key under a readable name.
    viewer = camera.acl.get(key)
    assert viewer is not None and viewer.name == "Chrome on Linux", viewer
    # The secret left the address bar (device= stays), and it never went out:
    # not on the wire (only its HMAC), not to the console.
    assert stats["url"].endswith(f"/#device={camera.device_id}"), stats["url"]
    assert page.sent_types()[:3] == ["pair", "prepare", "offer"], page.sent_types()
    assert not any(secret in text for text in page.sent + page.console)
    # Pairing took its own session; the video another.
    pair_msg, offer_msg = json.loads(page.sent[0]), json.loads(page.sent[2])
    assert pair_msg["session_id"] != offer_msg["session_id"]
    assert pair_msg["viewer_key"] == offer_msg["viewer_key"] == key

    # Reload: same context, so the same key from IndexedDB; no pairing again.
    page.sent.clear()
    await page.page.reload()
    stats = await page.watch()
    assert stats["viewerKey"] == key
    assert stats["paired"] is True
    assert "pair" not in page.sent_types(), page.sent_types()
    assert len(camera.sessions) == 1

    # Revoke it as `peercam viewers revoke` does over SSH (the file); the agent
    # notices and ends the live session. Asking again cannot help, so the page
    # stops and says what to do instead of knocking on the camera forever.
    refusals = camera.refusals
    assert [v.key for v in ViewerACL(camera.config.state_dir).revoke(key)] == [key]
    await page.wait(
        "window.peercam.paired === false"
        f" && (window.peercam.lastError || '').includes({NOT_PAIRED!r})"
    )
    await _eventually(lambda: not camera.sessions)
    await _gave_up(page, "not-authorized")
    assert camera.refusals == refusals
    assert page.errors == []


async def _gave_up(page: Page, code: str) -> None:
    """The page stopped for good: no retry within the longest backoff, instructions shown."""
    stats = await page.state()
    reconnects, offers = stats["reconnects"], page.sent_types().count("offer")
    await page.page.wait_for_timeout(11_000)  # the longest retry delay is 10 s
    stats = await page.state()
    assert stats["gaveUp"] == code and stats["state"] == "error", stats
    assert stats["reconnects"] == reconnects
    assert page.sent_types().count("offer") == offers
    notice = await page.page.locator("#notice").text_content()
    assert notice is not None and "peercam pair" in notice, notice
    assert "Trying again" not in notice


async def test_unpaired_browser_is_refused(stack: Stack, context: Any) -> None:
    camera = await stack.camera()
    page = Page(await context.new_page())
    await page.page.goto(stack.link(camera))
    await page.wait(f"(window.peercam.lastError || '').includes({NOT_PAIRED!r})")
    stats = await page.state()
    assert stats["state"] == "error" and stats["paired"] is False, stats
    assert stats["framesDecoded"] == 0
    assert stats["viewerKey"] not in camera.acl
    assert camera.refusals >= 1 and camera.sessions == {}
    notice = await page.page.locator("#notice").text_content()
    assert notice is not None and NOT_PAIRED in notice
    assert "pair" not in page.sent_types()
    await _gave_up(page, "not-authorized")
    assert page.errors == []


async def test_wrong_pairing_secret_is_refused(stack: Stack, context: Any) -> None:
    camera = await stack.camera()
    camera.open_pairing(ttl=300)
    page = Page(await context.new_page())
    await page.page.goto(_pairing_link(stack, camera, "0" * 26))
    await page.wait("(window.peercam.lastError || '').includes('refused to pair')")
    stats = await page.state()
    assert stats["state"] == "error" and stats["paired"] is None, stats
    assert "pairing refused" in stats["lastError"]
    assert stats["viewerKey"] not in camera.acl
    # Not paired: the link keeps its secret, nothing was offered.
    assert "&pair=" in stats["url"]
    assert page.sent_types() == ["pair"]
    # A used-up or wrong link will not start working: stop and say so.
    await _gave_up(page, "pair-refused")
    assert page.sent_types() == ["pair"]


async def test_altered_answer_is_refused(
    stack: Stack, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compromised server swaps the DTLS fingerprint in the answer: no video."""
    camera = await stack.camera()
    secret = camera.open_pairing(ttl=300)
    router = stack.rendezvous.router
    received = router.received
    altered: list[str] = []

    def tamper(peer: Peer, data: str | bytes, now: float) -> list[Action]:
        obj = json.loads(data)
        if obj.get("type") == "answer":
            lines = obj["sdp"].split("\r\n")
            for i, line in enumerate(lines):
                if line.startswith("a=fingerprint:"):
                    last = line[-1]
                    lines[i] = line[:-1] + ("0" if last != "0" else "1")
            obj["sdp"] = "\r\n".join(lines)
            altered.append(obj["session_id"])
            data = json.dumps(obj)
        return received(peer, data, now)

    monkeypatch.setattr(router, "received", tamper)
    page = Page(await context.new_page())
    await page.page.goto(_pairing_link(stack, camera, secret))
    await page.wait("(window.peercam.lastError || '').includes('not signed by this camera')")
    stats = await page.state()
    assert altered, "the answer went through the tampering router"
    # "error" stays up through the retries: they keep being refused.
    assert stats["state"] == "error", stats
    assert stats["paired"] is True  # pairing itself was genuine
    assert stats["framesDecoded"] == 0
    # The page dropped the session (bye), so the camera freed it. Later
    # retries make new sessions, so look at the first one only.
    await _eventually(lambda: altered[0] not in camera.sessions)
