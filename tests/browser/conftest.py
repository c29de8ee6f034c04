"""Headless Debian Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("PEERCAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    # Loopback tests: allow 127.0.0.1 candidates, don't hide them behind mDNS names.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield _PolicyBypass(browser)
        finally:
            await browser.close()


class _PolicyBypass:
    """The browser, its pages exempt from the viewer's Content-Security-Policy.

    These tests wait with ``wait_for_function``, whose predicate Playwright runs
    through the page's ``eval``: the viewer's policy forbids that. The policy
    itself is under test in test_pwa.py, which runs every screen under it.
    """

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)

    async def new_context(self, **options: Any) -> Any:
        return await self._browser.new_context(**{"bypass_csp": True, **options})

    async def new_page(self, **options: Any) -> Any:
        return await self._browser.new_page(**{"bypass_csp": True, **options})
