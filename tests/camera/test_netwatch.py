"""Noticing the network: the pure comparison, and the watcher on real netlink (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camera.netwatch import NetworkView, what_changed

GW = (2, "192.0.2.1", 4)


def view(routes: set[tuple[int, str | None, int | None]], *addresses: str) -> NetworkView:
    return NetworkView(frozenset(routes), frozenset(addresses))


def test_only_a_change_of_route_or_address_counts() -> None:
    up = view({GW}, "192.0.2.2")
    assert what_changed(None, up) is None  # the first look is not a change
    assert what_changed(up, view({GW}, "192.0.2.2")) is None
    assert what_changed(up, view(set())) == "network lost (no default route or address)"
    assert what_changed(view(set()), up) == "network back"
    assert what_changed(up, view({(2, "192.0.2.9", 4)}, "192.0.2.2")) == "default route changed"
    assert what_changed(up, view({GW}, "192.0.2.3")) == (
        "address changed (192.0.2.2 -> 192.0.2.3)")
    assert what_changed(up, view({GW}, "192.0.2.2", "2001:db8::2")) == (
        "address added (2001:db8::2)")
    assert not view({GW}).online and up.online


WATCH = """
import asyncio, json, sys
from camera.netwatch import NetworkWatcher

async def main():
    def changed(reason, old, new):
        print(json.dumps({"reason": reason, "online": new.online}), flush=True)
    watcher = NetworkWatcher(changed, settle=0.1)
    print(json.dumps({"started": await watcher.start()}), flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    await watcher.close()

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")
def test_the_watcher_hears_the_kernel_and_ignores_what_does_not_matter(tmp_path: Path) -> None:
    ns = f"pcnw{os.getpid()}"
    run = lambda *cmd: subprocess.run(["ip", "-n", ns, *cmd], check=True)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run("link", "set", "lo", "up")
        run("link", "add", "wan0", "type", "veth", "peer", "name", "wan1")
        run("addr", "add", "192.0.2.2/24", "dev", "wan0")
        run("link", "set", "wan0", "up")
        run("link", "set", "wan1", "up")
        run("route", "add", "default", "via", "192.0.2.1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", WATCH, "6"],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"started": True}
        # Not a change that matters: another interface, no default route through it.
        run("link", "add", "br0", "type", "veth", "peer", "name", "br1")
        run("addr", "add", "10.9.9.1/24", "dev", "br0")
        run("link", "set", "br0", "up")
        time.sleep(0.5)
        run("link", "set", "wan0", "down")  # the Wi-Fi drops: its routes go with it
        time.sleep(0.5)
        run("link", "set", "wan0", "up")
        run("route", "add", "default", "via", "192.0.2.1")
        time.sleep(0.5)
        run("addr", "add", "192.0.2.7/24", "dev", "wan0")  # a second lease on the uplink
        out, _ = proc.communicate(timeout=20)
        events = [json.loads(line) for line in out.splitlines()]
        assert events == [
            {"reason": "network lost (no default route or address)", "online": False},
            {"reason": "network back", "online": True},
            {"reason": "address added (192.0.2.7)", "online": True},
        ]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
