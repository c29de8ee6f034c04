"""The web viewer as a phone app, in real headless Chromium with a phone viewport.

One rendezvous and one test-pattern camera serve the whole module (module
scope: starting them is most of a browser test's time); each test opens its
own browser context, so each is a fresh phone that pairs from a link.

Screenshots of each screen are taken as the tests go. With
PEERCAM_SCREENSHOTS=docs/screens they are also copied there (what the README
shows); otherwise they stay in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
import pytest_asyncio
from PIL import Image, ImageStat

from camera.agent import CameraAgent
from camera.webrtc import restrict_host_addresses
from services.rendezvous import RendezvousConfig, start_rendezvous
from services.signaling import device_id_from_digest
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import Stack, scaled

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}
LANDSCAPE = {**PHONE, "viewport": {"width": 844, "height": 390}}
VIEWER_NAME = "Test phone — Chrome"
ANDROID_UA = ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Mobile Safari/537.36")


@dataclass
class Rig:
    stack: Stack
    camera: CameraAgent
    browser: Any
    shots: Path

    @property
    def base(self) -> str:
        return self.stack.url.replace("ws://", "http://") + "/"

    def pairing_link(self) -> str:
        secret = self.camera.open_pairing(reusable=True)
        return f"{self.stack.link(self.camera)}&pair={secret}"

    async def shot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path))
        assert Image.open(path).size[0] >= 390
        target = os.environ.get("PEERCAM_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(target) / path.name)
        return path


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    """The module's rig keeps 127.0.0.1 for all its tests (see ``rig``)."""
    yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    from playwright.async_api import async_playwright

    tmp = tmp_path_factory.mktemp("pwa")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEERCAM_VIEWER_DIR", str(tmp / "viewer"))
        mp.setenv("PEERCAM_RUNTIME_DIR", str(tmp / "run"))
        restrict_host_addresses(["127.0.0.1"])
        server, runner, port = await start_rendezvous(
            "127.0.0.1", 0, RendezvousConfig(heartbeat=2.0))
        stack = Stack(server, f"ws://127.0.0.1:{port}", tmp)
        try:
            camera = await stack.camera()
            async with async_playwright() as pw:
                # A fake camera for getUserMedia (the QR scanner), granted without a prompt.
                args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream",
                        "--use-fake-ui-for-media-stream"]
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
                try:
                    shots = tmp / "screens"
                    shots.mkdir()
                    yield Rig(stack, camera, browser, shots)
                finally:
                    await browser.close()
        finally:
            for agent in stack.agents:
                await agent.close()
            await runner.cleanup()
            restrict_host_addresses(None)


# Every page here runs under the viewer's real Content-Security-Policy and
# records what it refused: a refusal is a broken feature (or an attack).
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.effectiveDirective + " " + e.blockedURI));
"""


async def new_page(rig: Rig, options: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    context = await rig.browser.new_context(**options)
    await context.add_init_script(RECORD_VIOLATIONS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


async def wait(page: Any, expression: str, seconds: float = 20) -> None:
    """Until the expression holds in the page.

    Polled from here, not with ``wait_for_function``: Playwright evaluates that
    predicate with the page's own ``eval``, which the viewer's policy forbids
    (script-src without 'unsafe-eval'); ``evaluate`` runs over the debugging
    protocol, outside the policy, so these tests run under the real one.
    """
    from playwright.async_api import Error as PlaywrightError

    deadline = asyncio.get_running_loop().time() + scaled(seconds)
    while True:
        try:
            if await page.evaluate(f"!!({expression})"):
                return
        except PlaywrightError as exc:  # a navigation under way: ask the next page
            if "context was destroyed" not in str(exc):
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {expression}")
        await asyncio.sleep(0.05)


async def watch_from_list(rig: Rig, page: Any, camera_name: str) -> None:
    """What a person does: open the app, add the camera from its link, watch."""
    await page.goto(rig.base)
    await page.locator("#add-open").click()
    await page.locator("#add-link").fill(rig.pairing_link())
    await page.locator("#add-name").fill(camera_name)
    await page.locator("#add-viewer-name").fill(VIEWER_NAME)
    await page.locator("#add-submit").click()
    await wait(page, "window.peercam.framesDecoded > 0 && window.peercam.state === 'connected'")


async def test_installable_with_a_shell_only_service_worker(rig: Rig, tmp_path: Path) -> None:
    # Chromium never offers to install from an incognito profile (its error
    # "in-incognito"), and Playwright's contexts are incognito: this test has a
    # profile on disk, as a phone's browser does.
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, **PHONE)
        page = context.pages[0] if context.pages else await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await installable(rig, context, page, errors)
        finally:
            await context.close()


async def installable(rig: Rig, context: Any, page: Any, errors: list[str]) -> None:
    if True:
        await page.goto(rig.base)
        await wait(page, "window.peercam.serviceWorker === true")
        await page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        cdp = await context.new_cdp_session(page)
        manifest = await cdp.send("Page.getAppManifest")
        assert manifest["errors"] == [], manifest["errors"]
        assert manifest["url"].endswith("/manifest.webmanifest")
        # Chromium's own verdict, as for its install prompt: no installability errors.
        verdict = await cdp.send("Page.getInstallabilityErrors")
        assert verdict["installabilityErrors"] == [], verdict
        # The served types are what browsers insist on.
        types = await page.evaluate("""async () => Object.fromEntries(await Promise.all(
            ['manifest.webmanifest', 'sw.js', 'codec.mjs', 'icon-512.png'].map(async (p) =>
              [p, (await fetch(p)).headers.get('content-type')])))""")
        assert types["manifest.webmanifest"].startswith("application/manifest+json")
        assert types["sw.js"].startswith("text/javascript")
        assert types["codec.mjs"].startswith("text/javascript")
        assert types["icon-512.png"] == "image/png"
        # The cache holds the app shell and nothing else (no video, keys, signaling).
        cached = await page.evaluate("""async () => {
            const out = [];
            for (const name of await caches.keys()) {
              for (const req of await (await caches.open(name)).keys()) out.push(req.url);
            }
            return out; }""")
        paths = sorted(url.removeprefix(rig.base) for url in cached)
        assert "" in paths and "viewer.js" in paths and "icon-192.png" in paths, paths
        assert not [p for p in paths if p.startswith(("ws", "healthz", "metrics"))], paths
        assert len(paths) == 13, paths
        # Offline, the installed app still opens on its camera list.
        await context.set_offline(True)
        await page.reload()
        await wait(page, "!document.getElementById('home').hidden")
        await context.set_offline(False)
        assert errors == []


async def test_camera_list_add_rename_remove(rig: Rig) -> None:
    context, page, errors = await new_page(rig, PHONE)
    try:
        await page.goto(rig.base)
        assert await page.locator("#list-empty").is_visible()
        # Before anyone picks one, this phone's name comes from the browser.
        assert await page.locator("#viewer-name").text_content() == "Chrome on Linux"
        await page.locator("#add-open").click()
        assert await page.locator("#add-viewer-name").input_value() == "Chrome on Linux"
        await page.locator("#add-cancel").click()
        await watch_from_list(rig, page, "Front door")
        # The viewer name chosen at pairing is what the camera's owner sees.
        names = [v.name for v in rig.camera.acl.viewers()]
        assert VIEWER_NAME in names, names

        await page.locator("#btn-back").click()
        row = page.locator(f'#camera-list li[data-id="{rig.camera.device_id}"]')
        await wait(page, f"""document.querySelector('#camera-list li[data-id="{
            rig.camera.device_id}"]')?.dataset.online === 'true'""")
        assert await row.locator(".cam-name").text_content() == "Front door"
        assert "online · seen just now" == await row.locator(".cam-state").text_content()

        # A second camera from its bare ID: not online (no such camera), so offline.
        offline = "0000-0000-0000-0000-0000-0000-000"
        await page.locator("#add-open").click()
        await page.locator("#add-link").fill(offline)
        await page.locator("#add-submit").click()
        await wait(page, "window.peercam.cameras.length === 2")
        await wait(page, "document.querySelectorAll('#camera-list li[data-online=\"false\"]')"
                         ".length === 1")
        await rig.shot(page, "list")

        # Rename in place.
        await row.locator(".cam-rename").click()
        await row.locator(".cam-rename-input").fill("Porch")
        await row.locator(".cam-rename-input").press("Enter")
        assert await row.locator(".cam-name").text_content() == "Porch"
        stored = await page.evaluate("JSON.parse(localStorage.getItem('peercam.cameras'))")
        assert [c["name"] for c in stored] == ["Porch", "Camera 0000"]
        # A bad link is refused with a reason, nothing added.
        await page.locator("#add-open").click()
        await page.locator("#add-link").fill("https://elsewhere.example/#device=" + offline)
        await page.locator("#add-submit").click()
        assert "elsewhere.example" in (await page.locator("#add-error").text_content() or "")
        await rig.shot(page, "add")
        await page.locator("#add-cancel").click()
        # This device's name alone can change too (used by the next pairing).
        await page.locator("#viewer-name-edit").click()
        await page.locator("#add-viewer-name").fill("Kitchen tablet")
        await page.locator("#add-submit").click()
        assert await page.locator("#viewer-name").text_content() == "Kitchen tablet"
        assert await page.locator("#add-sheet").is_hidden()

        # Remove: a first tap asks, the second removes.
        gone = page.locator(f'#camera-list li[data-id="{offline}"]')
        await gone.locator(".cam-remove").click()
        assert await gone.count() == 1
        await gone.locator(".cam-remove").click()
        assert await gone.count() == 0
        stored = await page.evaluate("JSON.parse(localStorage.getItem('peercam.cameras'))")
        assert [c["id"] for c in stored] == [rig.camera.device_id]
        # Every control on the list is a proper touch target.
        for selector in ("#add-open", ".cam-open", ".cam-rename", ".cam-remove",
                         "#viewer-name-edit"):
            box = await page.locator(selector).first.bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44, (selector, box)
        assert errors == []
    finally:
        await context.close()


# Chromium has BarcodeDetector only where the platform decodes QR codes
# (Android, macOS, ChromeOS), not on Linux: this stands in for that decoder,
# the layer below the page, and "sees" the code once the camera is playing.
FAKE_QR_DECODER = """
window.BarcodeDetector = class {
  static async getSupportedFormats() { return ["qr_code", "ean_13"]; }
  constructor(options) { this.formats = options.formats; }
  async detect(source) {
    if (!(source instanceof HTMLVideoElement) || !source.videoWidth) return [];
    return [{ format: "qr_code", rawValue: window.__qr }];
  }
};
"""


async def test_add_by_scanning_a_qr_code(rig: Rig) -> None:
    context, page, errors = await new_page(rig, {**PHONE, "permissions": ["camera"]})
    try:
        await context.add_init_script(FAKE_QR_DECODER)
        # A Pixel 7's Chrome: its user agent hides the model, its client hints tell it.
        cdp = await context.new_cdp_session(page)
        await cdp.send("Emulation.setUserAgentOverride", {
            "userAgent": ANDROID_UA,
            "userAgentMetadata": {
                "brands": [{"brand": "Chromium", "version": "131"}], "platform": "Android",
                "platformVersion": "14", "architecture": "", "model": "Pixel 7",
                "mobile": True,
            },
        })
        await page.goto(rig.base)
        link = rig.pairing_link()
        await page.evaluate("(link) => { window.__qr = link; }", link)
        await page.locator("#add-open").click()
        await page.locator("#add-scan").click()
        await wait(page, "document.getElementById('add-link').value !== ''", 10)
        assert await page.locator("#add-link").input_value() == link
        # Found: the phone's camera is let go at once.
        assert await page.locator("#scan-box video").count() == 0
        assert await page.locator("#scan-box").is_hidden()
        # Its name by default, so `peercam viewers list` tells it from other phones.
        assert await page.locator("#add-viewer-name").input_value() == "Pixel 7 — Chrome"
        await page.locator("#add-submit").click()
        await wait(page, "window.peercam.framesDecoded > 0")
        assert "Pixel 7 — Chrome" in [v.name for v in rig.camera.acl.viewers()]
        assert errors == []
    finally:
        await context.close()


async def pinch(cdp: Any, x: float, y: float, start: float, end: float) -> None:
    """Two fingers apart from `start` to `end` px around (x, y), through DevTools."""
    steps = 6
    for i in range(steps + 1):
        half = (start + (end - start) * i / steps) / 2
        points = [{"x": x - half, "y": y, "id": 0}, {"x": x + half, "y": y, "id": 1}]
        kind = "touchStart" if i == 0 else "touchMove"
        await cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


async def test_player_fullscreen_zoom_snapshot_clip(rig: Rig, tmp_path: Path) -> None:
    context, page, errors = await new_page(rig, PHONE)
    try:
        await watch_from_list(rig, page, "Garden")
        await wait(page, "window.peercam.path === 'direct' && window.peercam.latencyMs !== null")
        badge = await page.locator("#badge").text_content() or ""
        assert "LIVE" in badge and "direct" in badge and "ms" in badge, badge
        for selector in ("#btn-back", "#btn-snapshot", "#btn-clip", "#btn-fullscreen"):
            box = await page.locator(selector).bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44, (selector, box)
            # One-handed: the player's controls sit in the bottom third.
            assert box["y"] > 844 * 2 / 3, (selector, box)
        await rig.shot(page, "player-portrait")
        await page.keyboard.press("i")
        await page.locator("#overlay").wait_for(state="visible")
        await rig.shot(page, "overlay")
        await page.keyboard.press("i")

        # Pinch: the picture grows about the fingers.
        cdp = await context.new_cdp_session(page)
        await pinch(cdp, 195, 400, 60, 180)
        zoom = await page.evaluate("window.peercam.zoom")
        assert zoom["scale"] > 1.5, zoom
        transform = await page.evaluate(
            "getComputedStyle(document.getElementById('zoom')).transform")
        assert transform.startswith("matrix(") and transform != "matrix(1, 0, 0, 1, 0, 0)"
        # A one-finger drag pans the zoomed picture.
        before = zoom["x"]
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchStart",
                       "touchPoints": [{"x": 150, "y": 400, "id": 0}]})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                       "touchPoints": [{"x": 230, "y": 400, "id": 0}]})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert (await page.evaluate("window.peercam.zoom"))["x"] > before

        # Fullscreen from its button, and back; double-tap goes fullscreen too.
        await page.locator("#btn-fullscreen").click()
        await wait(page, "document.fullscreenElement !== null && window.peercam.fullscreen")
        await page.locator("#btn-fullscreen").click()
        await wait(page, "document.fullscreenElement === null && !window.peercam.fullscreen")
        assert (await page.evaluate("window.peercam.zoom"))["scale"] == 1  # reset on leaving
        await page.touchscreen.tap(195, 400)
        await page.touchscreen.tap(195, 400)
        await wait(page, "document.fullscreenElement !== null")
        # In fullscreen a double tap zooms in on the point, and a second one back out.
        await page.touchscreen.tap(100, 300)
        await page.touchscreen.tap(100, 300)
        await wait(page, "window.peercam.zoom.scale === 2.5")
        await page.touchscreen.tap(100, 300)
        await page.touchscreen.tap(100, 300)
        await wait(page, "window.peercam.zoom.scale === 1")
        await page.evaluate("document.exitFullscreen()")

        # Snapshot: a JPEG download of the camera's full frame.
        async with page.expect_download() as info:
            await page.locator("#btn-snapshot").click()
        download = await info.value
        assert download.suggested_filename.startswith("peercam-Garden-")
        assert download.suggested_filename.endswith(".jpg")
        shot = tmp_path / "shot.jpg"
        await download.save_as(shot)
        image = Image.open(io.BytesIO(shot.read_bytes()))
        assert image.format == "JPEG" and image.size == (320, 240)
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 10  # a picture, not a blank

        # Clip: a couple of seconds recorded, saved, playable.
        await page.locator("#btn-clip").click()
        await wait(page, "window.peercam.recording === true")
        await page.wait_for_timeout(2500)
        async with page.expect_download() as info:
            await page.locator("#btn-clip").click()
        download = await info.value
        name = download.suggested_filename
        assert name.startswith("peercam-Garden-") and name.endswith((".webm", ".mp4")), name
        clip = tmp_path / name
        await download.save_as(clip)
        with av.open(str(clip)) as container:
            frames = [f for _, f in zip(range(10), container.decode(video=0), strict=False)]
        assert frames and frames[0].width == 320 and frames[0].height == 240
        assert errors == []
        # Playing, zooming, snapshot and clip all within the page's policy.
        assert await page.evaluate("window.__csp") == []
    finally:
        await context.close()


async def test_landscape_fills_the_screen(rig: Rig) -> None:
    context, page, errors = await new_page(rig, LANDSCAPE)
    try:
        await watch_from_list(rig, page, "Garden")
        box = await page.locator("#video").bounding_box()
        assert box == {"x": 0, "y": 0, "width": 844, "height": 390}, box
        # The video's own aspect (4:3) letterboxes inside; the box is the screen.
        size = await page.evaluate("[video.videoWidth, video.videoHeight]")
        assert size == [320, 240]
        # The bar moves to the right edge, under the thumb.
        bar = await page.locator("#controls").bounding_box()
        assert bar["x"] + bar["width"] > 844 - 24 and bar["height"] > bar["width"], bar
        await rig.shot(page, "player-landscape")
        assert errors == []
    finally:
        await context.close()


HOSTILE = "<img src=x onerror=window.__xss=1>"


async def test_hostile_names_links_and_server_texts_stay_text(rig: Rig) -> None:
    # The list in storage was tampered with; a link holds two devices; the
    # rendezvous (untrusted) answers with markup and a prototype key as error
    # codes. Nothing runs, every string shows as the text it is.
    listed, target, added = (device_id_from_digest(bytes([n]) * 32) for n in (1, 2, 3))
    stored = json.dumps([{"id": listed, "name": HOSTILE}, {"id": {"toString": 1}}, "junk", 7,
                         None, {"id": rig.camera.device_id, "name": {"toString": 1}}])
    # The server's answers to the target's "prepare": the first at once, the
    # next ones held until the test has read what the first one showed.
    codes = [HOSTILE]
    held: list[tuple[Any, str]] = []

    def refuse(ws: Any, session_id: str, code: str) -> None:
        ws.send(json.dumps({"type": "error", "code": code, "message": HOSTILE,
                            "session_id": session_id}))

    def relay(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            msg = json.loads(message) if isinstance(message, str) else {}
            if msg.get("type") == "prepare" and msg.get("device_id") == target:
                if codes:
                    refuse(ws, msg["session_id"], codes.pop(0))
                else:
                    held.append((ws, msg["session_id"]))
            else:
                server.send(message)
        ws.on_message(from_page)

    context, page, errors = await new_page(rig, PHONE)
    try:
        seed = f"localStorage.setItem('peercam.cameras', {json.dumps(stored)});"
        await context.add_init_script(seed)
        await page.route_web_socket(re.compile(r"/ws/viewer$"), relay)
        await page.goto(rig.base)
        await wait(page, "document.querySelectorAll('#camera-list li').length === 2")
        names = await page.locator("#camera-list .cam-name").all_text_contents()
        assert names == [HOSTILE, "Camera " + rig.camera.device_id[:4]], names

        await page.locator("#add-open").click()
        await page.locator("#add-link").fill(f"{rig.base}#device={added}&device={listed}")
        await page.locator("#add-submit").click()
        assert "twice" in (await page.locator("#add-error").text_content() or "")
        await page.locator("#add-link").fill(added)
        await page.locator("#add-name").fill(HOSTILE.replace("1", "3"))
        await page.locator("#add-submit").click()
        await wait(page, "document.querySelectorAll('#camera-list li').length === 3")
        assert HOSTILE.replace("1", "3") in await page.locator(
            "#camera-list .cam-name").all_text_contents()

        await page.evaluate(f"location.hash = 'device={target}'")
        await wait(page, f"String(window.peercam.lastError).includes({json.dumps(HOSTILE)})")
        assert HOSTILE in (await page.locator("#notice").text_content() or "")
        for _ in range(int(scaled(10) / 0.05)):  # the retry's "prepare"
            if held:
                break
            await asyncio.sleep(0.05)
        refuse(*held[0], "constructor")
        await wait(page, "window.peercam.lastError === "
                         "'The server reported a problem (constructor).'")
        assert await page.evaluate("window.__xss") is None
        assert await page.evaluate("document.querySelectorAll('img').length") == 0
        assert await page.evaluate("window.__csp") == []
        assert errors == []
    finally:
        await context.close()
