"""How a long-running command waits: until SIGINT/SIGTERM, with systemd told."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from camera.sdnotify import Notifier


async def serve_until_signalled(
    status: str, cleanup: Callable[[], Coroutine[Any, Any, Any]]
) -> None:
    """A server's life under systemd: READY=1, serve until signalled, STOPPING=1, clean up."""
    notifier = Notifier.from_env()
    notifier.ready(status)
    try:
        await until_signalled()
    finally:
        notifier.stopping()
        await cleanup()


async def until_signalled(failed: asyncio.Event | None = None) -> None:
    """Until SIGINT/SIGTERM, or until ``failed`` is set."""
    stop = failed or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
