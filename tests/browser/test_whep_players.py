"""Third-party WHEP players from npm, in headless Chromium, play a camera through the gateway.

``@eyevinn/webrtc-player`` (non-trickle: it waits for ICE gathering, then POSTs
one complete offer, audio and video) and ``whip-whep``'s WHEPClient (POSTs an
offer before gathering starts and trickles every candidate by PATCH). The
versions are pinned in tests/browser/whep/package-lock.json and installed by
``scripts/setup --test``. whip-whep ships an ES module the page imports as it
is; the Eyevinn player ships CommonJS only, so esbuild (pinned there too)
bundles it into one script for the page. A page on its own origin calls the
gateway cross-origin, as a player on another host would: CORS is exercised.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.camera.whep_helpers import TOKEN, running_gateway
from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

PLAYERS = Path(__file__).resolve().parent / "whep"
MODULES = PLAYERS / "node_modules"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WHEP players</title></head>
<body><video id="video" autoplay muted playsinline></video>
<script src="/eyevinn.js"></script>
<script type="module">
import { WHEPClient } from "/whep.js";
const video = document.getElementById("video");
window.playWhipWhep = async (url, token) => {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => { video.srcObject = event.streams[0] || new MediaStream([event.track]); };
  const client = new WHEPClient();
  window.whep = { pc, client };
  await client.view(pc, url, token);
  return client.resourceURL.toString();
};
window.stopWhipWhep = async () => { await window.whep.client.stop(); };
window.playEyevinn = async (url, token) => {
  const player = new WebRTCPlayer({ video, type: "whep", iceServers: [] });
  window.eyevinn = player;
  await player.load(new URL(url), "Bearer " + token);
};
window.stopEyevinn = async () => { await window.eyevinn.unload(); };
window.framesDecoded = async (pc) => {
  if (!pc) return 0;
  let frames = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
  });
  return frames;
};
window.ready = true;
</script></body></html>
"""


def bundle_eyevinn(out: Path) -> Path:
    """The Eyevinn player (CommonJS) as one browser script defining ``WebRTCPlayer``."""
    esbuild = MODULES / ".bin" / "esbuild"
    if not esbuild.exists():
        raise AssertionError(f"{esbuild} is missing: run scripts/setup --test (it runs "
                             "npm ci in tests/browser/whep)")
    entry = out / "entry.js"
    entry.write_text('import { WebRTCPlayer } from "@eyevinn/webrtc-player";\n'
                     "window.WebRTCPlayer = WebRTCPlayer;\n")
    target = out / "eyevinn.js"
    subprocess.run([str(esbuild), str(entry), "--bundle", "--format=iife",
                    "--log-level=warning", f"--outfile={target}"],
                   check=True, cwd=PLAYERS, timeout=60,
                   env={"NODE_PATH": str(MODULES), "PATH": "/usr/bin:/bin"})
    return target


@pytest.fixture
async def page_server(tmp_path: Path) -> AsyncIterator[str]:
    """A tiny static server for the page and the players' files (its own origin)."""
    bundle = bundle_eyevinn(tmp_path)
    whep_js = MODULES / "whip-whep" / "whep.js"
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    def script(path: Path) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=path.read_bytes(), content_type="text/javascript")

        return handler

    app.router.add_get("/", page)
    app.router.add_get("/whep.js", script(whep_js))
    app.router.add_get("/eyevinn.js", script(bundle))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_playing(page: Any, pc_expression: str, timeout: float) -> tuple[int, float]:
    """Until the page decodes frames and its video element's clock moves; (frames, time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    frames, start_time = 0, None
    while asyncio.get_running_loop().time() < deadline:
        frames = await page.evaluate(f"window.framesDecoded({pc_expression})")
        current = await page.evaluate("document.getElementById('video').currentTime")
        if frames >= 10:
            if start_time is None:
                start_time = current
            elif current > start_time:
                return frames, current
        await asyncio.sleep(0.2)
    raise AssertionError(f"no playback: {frames} frames decoded")


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    await page.goto(url)
    await page.wait_for_function("window.ready === true")
    return page, console


async def test_whip_whep_client_plays_and_trickles(browser: Any, stack: Stack,
                                                   page_server: str, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path,
                               cors_origins=(page_server,)) as gw:
        page, console = await open_page(browser, page_server)
        try:
            resource = await page.evaluate("([u, t]) => window.playWhipWhep(u, t)",
                                           [gw.endpoint(), TOKEN])
            assert resource.startswith(f"{gw.url}/front/whep/")
            frames, _ = await wait_playing(page, "window.whep.pc", scaled(20))
            assert frames >= 10
            session = next(iter(agent.sessions.values()))
            assert session.trickled >= 1, "whip-whep's PATCHed candidates never reached the camera"
            await page.evaluate("window.stopWhipWhep()")  # DELETE
            async with asyncio.timeout(scaled(10)):
                while gw.gateway.sessions.live():
                    await asyncio.sleep(0.05)
            statuses = gw.gateway.requests
            assert statuses.get("201") == 1 and statuses.get("204", 0) >= 1, statuses
            assert statuses.get("200") == 1, statuses
        except BaseException:
            print("\n".join(console))
            raise
        finally:
            await page.close()


async def test_eyevinn_webrtc_player_plays(browser: Any, stack: Stack, page_server: str,
                                           tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path,
                               cors_origins=(page_server,)) as gw:
        page, console = await open_page(browser, page_server)
        try:
            await page.evaluate("([u, t]) => window.playEyevinn(u, t)", [gw.endpoint(), TOKEN])
            frames, _ = await wait_playing(page, "window.eyevinn.peer", scaled(20))
            assert frames >= 10
            assert gw.gateway.started == 1
            await page.evaluate("window.stopEyevinn()")  # DELETE with its bearer token
            async with asyncio.timeout(scaled(10)):
                while gw.gateway.sessions.live():
                    await asyncio.sleep(0.05)
            assert gw.gateway.requests.get("200") == 1, gw.gateway.requests
        except BaseException:
            print("\n".join(console))
            raise
        finally:
            await page.close()
