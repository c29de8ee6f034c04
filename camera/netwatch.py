"""Notice the network: the kernel says when links, addresses and routes change.

A camera that lost its Wi-Fi, got a new DHCP lease, or moved from Wi-Fi to
Ethernet must reconnect at once, not when its backoff timer runs out. This
watches rtnetlink (pyroute2), with no polling: the process sleeps until the
kernel sends an event. Events come in bursts (a link going up brings its
addresses and routes), so they are coalesced for ``settle`` seconds, then the
view that matters is compared with the last one:

- the default routes (family, gateway, outgoing interface), and
- the global addresses on the interfaces those routes leave through.

Only a change of that view is reported (a container bridge or a VPN address on
another interface is not). The comparison is a pure function
(:func:`what_changed`), tested without netlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SETTLE = 0.3
"""Seconds of quiet after an event before the network is looked at again."""

_EVENTS = {"RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWROUTE",
           "RTM_DELROUTE"}


@dataclass(frozen=True, slots=True)
class NetworkView:
    """What decides how this device reaches the internet."""

    routes: frozenset[tuple[int, str | None, int | None]]
    """Default routes: (address family, gateway, outgoing interface index)."""
    addresses: frozenset[str]
    """Global addresses on the interfaces the default routes use."""

    @property
    def online(self) -> bool:
        return bool(self.routes) and bool(self.addresses)


def what_changed(old: NetworkView | None, new: NetworkView) -> str | None:
    """A one-line reason if ``new`` differs from ``old`` in a way that matters; else None."""
    if old is None or old == new:
        return None
    if old.online and not new.online:
        return "network lost (no default route or address)"
    if new.online and not old.online:
        return "network back"
    if old.routes != new.routes:
        return "default route changed"
    gone, added = old.addresses - new.addresses, new.addresses - old.addresses
    if gone and added:
        return f"address changed ({', '.join(sorted(gone))} -> {', '.join(sorted(added))})"
    if gone:
        return f"address removed ({', '.join(sorted(gone))})"
    return f"address added ({', '.join(sorted(added))})"


class NetworkWatcher:
    """Calls ``on_change(reason, old, new)`` when the network view changes; :meth:`close`
    stops."""

    def __init__(
        self,
        on_change: Callable[[str, NetworkView, NetworkView], None],
        *,
        settle: float = SETTLE,
    ) -> None:
        self._on_change = on_change
        self._settle = settle
        self.view: NetworkView | None = None
        self.changes = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Start watching; False (logged) where netlink is not available (not Linux)."""
        try:
            from pyroute2 import AsyncIPRoute  # noqa: F401  (lazy: Linux only)
        except ImportError as exc:
            logger.warning("network changes go unnoticed (no netlink: %s)", exc)
            return False
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="netwatch")
        return await ready

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, ready: asyncio.Future[bool]) -> None:
        from pyroute2 import AsyncIPRoute

        try:
            # One socket hears the kernel's broadcasts, the other asks (dumps): on one
            # socket the replies to a dump and the events would interleave.
            async with AsyncIPRoute() as events, AsyncIPRoute() as ipr:
                await events.bind()
                self.view = await _read_view(ipr)
                ready.set_result(True)
                dirty = asyncio.Event()
                reader = asyncio.create_task(self._read(events, dirty), name="netwatch-read")
                try:
                    while True:
                        await dirty.wait()
                        await asyncio.sleep(self._settle)  # coalesce the burst
                        dirty.clear()
                        self._compare(await _read_view(ipr))
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("network watch stopped: %s: %s", type(exc).__name__, exc)
            if not ready.done():
                ready.set_result(False)

    async def _read(self, ipr: Any, dirty: asyncio.Event) -> None:
        while True:  # each get() yields what one read brought, then ends
            seen = 0
            async for message in ipr.get():
                seen += 1
                if message.get("event") in _EVENTS:
                    dirty.set()
            if not seen:
                await asyncio.sleep(0.1)  # never a busy loop, whatever the library does

    def _compare(self, view: NetworkView) -> None:
        old, self.view = self.view, view
        reason = what_changed(old, view)
        if reason is None or old is None:
            return
        self.changes += 1
        logger.info("network: %s", reason)
        try:
            self._on_change(reason, old, view)
        except Exception:
            logger.exception("network change handler failed")


async def _read_view(ipr: Any) -> NetworkView:
    routes: set[tuple[int, str | None, int | None]] = set()
    for family in (2, 10):  # AF_INET, AF_INET6
        async for route in await ipr.get_default_routes(family=family):
            routes.add((family, route.get("RTA_GATEWAY"), route.get("RTA_OIF")))
    interfaces = {oif for _, _, oif in routes}
    addresses: set[str] = set()
    async for addr in await ipr.get_addr():
        if addr.get("index") in interfaces and addr.get("scope") == 0:  # RT_SCOPE_UNIVERSE
            address = addr.get("IFA_ADDRESS")
            if address:
                addresses.add(address)
    return NetworkView(frozenset(routes), frozenset(addresses))
