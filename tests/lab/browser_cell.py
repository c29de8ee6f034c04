"""Run inside a lab namespace: open a viewer link in headless Chromium, print its stats.

    python -m tests.lab.browser_cell LINK [SECONDS]

Prints one JSON line: window.peercam after video played (or an error).
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.lab.browser_watch import lab_page


async def main(link: str, seconds: float) -> dict[str, object]:
    async with lab_page(link) as page:
        try:
            await page.wait_for_function(
                "window.peercam && window.peercam.framesDecoded > 0", timeout=30_000)
        except Exception as exc:  # report what the page knew, not a traceback
            state = await page.evaluate("({...window.peercam})")
            return {"error": str(exc).splitlines()[0], **state}
        await page.wait_for_timeout(seconds * 1000)
        stats: dict[str, object] = await page.evaluate("({...window.peercam})")
        return stats


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 2.0))
    print(json.dumps(result), flush=True)
