"""Run inside a lab namespace: headless Chromium pairs from LINK, watches for SECONDS,
then prints its frame log as one JSON line (what ``peercam view --json`` prints):

    python -m tests.lab.browser_watch LINK SECONDS

``frames`` counts pictures handed to the compositor on the page's visible video
(``requestVideoFrameCallback``), ``gaps`` are the pauses between them over 0.25 s as
[start, end] on the machine's monotonic clock (the clock the fault injection
uses), ``sessions``/``reconnects``/``lastCause`` are the page's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

GAP_S = 0.25

# Every frame the page shows on its on-screen video (id "video": the one a heal
# promotes), in epoch milliseconds.
FRAME_LOG = """(() => {
  window.__shown = [];
  const hooked = new WeakSet();
  setInterval(() => {
    for (const v of document.querySelectorAll("video")) {
      if (hooked.has(v) || typeof v.requestVideoFrameCallback !== "function") continue;
      hooked.add(v);
      const on = () => {
        if (v.id === "video") window.__shown.push(performance.timeOrigin + performance.now());
        v.requestVideoFrameCallback(on);
      };
      v.requestVideoFrameCallback(on);
    }
  }, 20);
})();"""


@contextlib.asynccontextmanager
async def lab_page(link: str, init_script: str | None = None) -> AsyncIterator[Any]:
    """A fresh headless Chromium page at ``link`` (the lab's plain-http viewer)."""
    from playwright.async_api import async_playwright

    origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(link))
    # The lab serves plain http on a "public" address: let the page have WebCrypto.
    args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            context = await browser.new_context(bypass_csp=True)  # wait_for_function: eval
            if init_script:
                await context.add_init_script(init_script)
            page = await context.new_page()
            await page.goto(link)
            yield page
        finally:
            await browser.close()


async def main(link: str, seconds: float) -> dict[str, Any]:
    async with lab_page(link, FRAME_LOG) as page:
        console: list[str] = []
        page.on("console", lambda m: console.append(
            f"{time.monotonic():.3f} {m.type}: {m.text}"[:300]))
        try:
            await page.wait_for_function(
                "window.peercam && window.peercam.framesDecoded > 0", timeout=30_000)
        except Exception as exc:  # report what the page knew, not a traceback
            state = await page.evaluate("({...window.peercam})")
            return {"error": str(exc).splitlines()[0], "frames": 0, **state,
                    "console": console[-40:]}
        print("PLAYING", flush=True)
        await page.wait_for_timeout(seconds * 1000)
        shown: list[float] = await page.evaluate("window.__shown")
        state = await page.evaluate("({...window.peercam})")
    offset = time.monotonic() - time.time()
    times = [t / 1000 + offset for t in shown]
    gaps = [[a, b] for a, b in zip(times, times[1:], strict=False) if b - a > GAP_S]
    return {"frames": len(times), "gaps": gaps,
            "first_frame_clock": times[0] if times else None,
            "sessions": state.get("sessions"), "reconnects": state.get("reconnects"),
            "lastCause": state.get("lastCause"), "lastError": state.get("lastError"),
            "state": state.get("state"), "signaling": state.get("signaling"),
            "console": console[-40:]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2])))), flush=True)
