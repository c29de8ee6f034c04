"""The camera comes back: a restarted rendezvous sees it again within seconds.

A rendezvous that restarts refuses connections for a moment (its host is up,
its process is not): the camera's backoff keeps to a short, jittered cap for
refusals early in an outage, so it is registered again within about a second
of the server listening, instead of whenever a 30 s backoff allows.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from camera.client.viewer import view
from camera.link import REFUSED_CAP
from services.rendezvous import start_rendezvous
from tests.conftest import Stack, scaled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_restarted_rendezvous_has_the_camera_back_within_seconds(
    tmp_path: Path, viewer_dir: Path
) -> None:
    port = free_port()
    server, runner, _ = await start_rendezvous("127.0.0.1", port)
    stack = Stack(server, f"ws://127.0.0.1:{port}", tmp_path)
    # The camera's normal backoff cap (30 s) is the production default here.
    camera = await stack.camera(backoff_base=0.5, backoff_cap=30.0)
    try:
        await runner.cleanup()  # the server goes away; its port refuses
        await asyncio.sleep(8)  # several refused attempts: the backoff would be at 8-16 s
        assert not camera.registered.is_set() and camera.reconnects >= 4
        server, runner, _ = await start_rendezvous("127.0.0.1", port)
        stack.rendezvous = server
        loop = asyncio.get_running_loop()
        listening = loop.time()
        await asyncio.wait_for(camera.registered.wait(), scaled(10))
        took = loop.time() - listening
        assert took <= REFUSED_CAP + scaled(0.5), f"back after {took:.2f} s"
        assert (await view(stack.link(camera), seconds=1)).frames > 10
    finally:
        await camera.close()
        await runner.cleanup()
