"""Run inside a lab namespace: open a viewer link in headless Chromium, print its stats.

    python -m tests.lab.browser_cell LINK [SECONDS [SETTLE]]

Prints one JSON line: window.peercam after video played (or an error). With SETTLE,
a page still on a relay after SECONDS is watched up to SETTLE seconds more for its
path to turn direct (Chromium nominates the first pair that works, often the relay,
and moves to a better one as it answers), and "settledMs" says how long that took.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.lab.browser_watch import lab_page

RELAYED = ("window.peercam.localCandidateType === 'relay'"
           " || window.peercam.remoteCandidateType === 'relay'")


async def main(link: str, seconds: float, settle: float = 0.0) -> dict[str, object]:
    async with lab_page(link) as page:
        try:
            await page.wait_for_function(
                "window.peercam && window.peercam.framesDecoded > 0", timeout=30_000)
        except Exception as exc:  # report what the page knew, not a traceback
            state = await page.evaluate("({...window.peercam})")
            return {"error": str(exc).splitlines()[0], **state}
        await page.wait_for_timeout(seconds * 1000)
        settled = None
        if settle > 0 and await page.evaluate(RELAYED):
            start = asyncio.get_running_loop().time()
            try:
                await page.wait_for_function(f"!({RELAYED})", timeout=settle * 1000,
                                             polling=100)
                settled = round(1000 * (asyncio.get_running_loop().time() - start))
            except Exception:  # still relayed: reported as such
                pass
        stats: dict[str, object] = await page.evaluate("({...window.peercam})")
        return {**stats, "settledMs": settled}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 2.0,
                              float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
    print(json.dumps(result), flush=True)
