"""A registration counts only for the server it was signed for, whatever Host says.

The real camera agent dials a real relaying proxy (a hostile server on
loopback) that forwards its WebSocket to the real rendezvous with the Host
header of its choosing: refused. The same camera dialling the rendezvous itself
registers and a paired viewer gets video.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from camera.cli import build_parser, main
from camera.client.viewer import view
from services.rendezvous import (
    RendezvousConfig,
    server_names_from_env,
    start_rendezvous,
)
from services.routing import BadServerName
from tests.conftest import Stack, scaled


class Relay:
    """A hostile server: accepts a camera's WebSocket and relays it, frame by frame,
    to ``upstream`` with the Host header set to ``host``; records what comes back."""

    def __init__(self, upstream: str, host: str) -> None:
        self.upstream, self.host = upstream, host
        self.from_server: list[dict[str, Any]] = []
        self.got_error = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/ws/camera", self._relay)

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async with aiohttp.ClientSession() as http, http.ws_connect(
            self.upstream + request.path, headers={"Host": self.host}
        ) as upstream:

            async def downstream() -> None:
                async for msg in upstream:
                    if msg.type is not WSMsgType.TEXT:
                        break
                    message = json.loads(msg.data)
                    self.from_server.append(message)
                    if message["type"] == "error":
                        self.got_error.set()
                    await ws.send_str(msg.data)
                await ws.close()

            task = asyncio.create_task(downstream())
            try:
                async for msg in ws:
                    if msg.type is not WSMsgType.TEXT:
                        break
                    await upstream.send_str(msg.data)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return ws


async def start_relay(relay: Relay) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(relay.app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    return runner, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("host_header", ["relay", "rendezvous"])
async def test_a_registration_relayed_through_another_server_is_refused(
    tmp_path: Path, viewer_dir: Path, host_header: str
) -> None:
    server, runner, port = await start_rendezvous("127.0.0.1", 0)
    relay_runner = None
    stacks: list[Stack] = []
    try:
        assert server.router.server_names == {f"127.0.0.1:{port}"}  # from the listen address
        relay = Relay(f"ws://127.0.0.1:{port}", host="")
        relay_runner, relay_port = await start_relay(relay)
        # "relay": Host is the name the camera signed (the relay's own), which a check
        # against Host would accept; "rendezvous": Host is the rendezvous' own name.
        relay.host = f"127.0.0.1:{relay_port if host_header == 'relay' else port}"
        relayed = Stack(server, f"ws://127.0.0.1:{relay_port}", tmp_path / "relayed")
        stacks.append(relayed)
        camera = await relayed.camera(wait_registered=False)
        async with asyncio.timeout(scaled(10)):
            await relay.got_error.wait()
        refusal = next(m for m in relay.from_server if m["type"] == "error")
        assert refusal["code"] == "bad-signature"
        assert "name" in refusal["message"]
        assert [m["type"] for m in relay.from_server][0] == "hello"
        assert not camera.registered.is_set()
        assert server.router.cameras == {}

        # The same kind of camera dialling the rendezvous itself registers and streams.
        direct = Stack(server, f"ws://127.0.0.1:{port}", tmp_path / "direct")
        stacks.append(direct)
        agent = await direct.camera()
        assert list(server.router.cameras) == [agent.device_id]
        stats = await view(direct.link(agent), seconds=1)
        assert stats.frames > 10
        assert camera.device_id not in server.router.cameras
    finally:
        for stack in stacks:
            for agent in stack.agents:
                await agent.close()
        if relay_runner is not None:
            await relay_runner.cleanup()
        await runner.cleanup()


async def test_the_configured_name_not_the_address_dialled_decides(
    tmp_path: Path, viewer_dir: Path
) -> None:
    """Named ``localhost:PORT``: a camera dialling ws://localhost:PORT registers; one
    dialling the same socket as ws://127.0.0.1:PORT does not."""
    server, runner, port = await start_rendezvous(
        "127.0.0.1", 0, names_for_port=lambda bound: [f"LOCALHOST:{bound}"])
    stacks: list[Stack] = []
    try:
        assert server.router.server_names == {f"localhost:{port}"}
        by_name = Stack(server, f"ws://localhost:{port}", tmp_path / "name")
        by_address = Stack(server, f"ws://127.0.0.1:{port}", tmp_path / "address")
        stacks += [by_name, by_address]
        named = await by_name.camera()
        addressed = await by_address.camera(wait_registered=False)
        await asyncio.sleep(scaled(1.0))  # several attempts (backoff 0.1-1 s)
        assert not addressed.registered.is_set()
        assert list(server.router.cameras) == [named.device_id]
    finally:
        for stack in stacks:
            for agent in stack.agents:
                await agent.close()
        await runner.cleanup()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
async def test_listening_on_all_addresses_needs_a_name(host: str) -> None:
    with pytest.raises(BadServerName, match="--server-name"):
        await start_rendezvous(host, 0)
    server, runner, _port = await start_rendezvous(
        host or "0.0.0.0", 0, RendezvousConfig(server_names=("cam.example.net",)))
    try:
        assert server.router.server_names == {"cam.example.net"}
    finally:
        await runner.cleanup()


async def test_a_bad_name_fails_before_binding() -> None:
    with pytest.raises(BadServerName, match="'cam example'"):
        await start_rendezvous("127.0.0.1", 0, RendezvousConfig(server_names=("cam example",)))


def test_names_from_the_environment() -> None:
    assert server_names_from_env({}) == ()
    assert server_names_from_env({"PEERCAM_SERVER_NAME": " a.test, b.test:8443 ,,"}) == (
        "a.test", "b.test:8443")


def test_the_cli_refuses_to_serve_all_addresses_without_a_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build_parser().parse_args(["rendezvous", "--server-name", "a.test",
                                      "--server-name", "b.test:8443"])
    assert args.server_name == ["a.test", "b.test:8443"]
    monkeypatch.delenv("PEERCAM_SERVER_NAME", raising=False)
    assert main(["rendezvous", "--listen", "0.0.0.0:0"]) == 2
    assert "--server-name" in capsys.readouterr().err
    monkeypatch.setenv("PEERCAM_SERVER_NAME", "bad name")
    assert main(["rendezvous", "--listen", "127.0.0.1:0"]) == 2
    assert "'bad name'" in capsys.readouterr().err
