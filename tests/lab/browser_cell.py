"""Run inside a lab namespace: open a viewer link in headless Chromium, print its stats.

    python -m tests.lab.browser_cell LINK [SECONDS]

Prints one JSON line: window.peercam after video played (or an error).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS


async def main(link: str, seconds: float) -> dict[str, object]:
    from playwright.async_api import async_playwright

    origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(link))
    # The lab serves plain http on a "public" address: let the page have WebCrypto.
    args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page(bypass_csp=True)  # wait_for_function uses eval
            await page.goto(link)
            try:
                await page.wait_for_function(
                    "window.peercam && window.peercam.framesDecoded > 0", timeout=30_000)
            except Exception as exc:  # report what the page knew, not a traceback
                state = await page.evaluate("({...window.peercam})")
                return {"error": str(exc).splitlines()[0], **state}
            await page.wait_for_timeout(seconds * 1000)
            stats: dict[str, object] = await page.evaluate("({...window.peercam})")
            return stats
        finally:
            await browser.close()


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 2.0))
    print(json.dumps(result), flush=True)
