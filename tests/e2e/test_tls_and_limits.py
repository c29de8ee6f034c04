"""TLS: the camera refuses a server certificate it cannot verify, trusts one it is told
to, and the rendezvous limits new connections per IP address."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from camera.agent import CameraAgent
from camera.client.viewer import ViewError, view
from camera.config import CameraConfig, make_configured_source
from camera.identity import DeviceIdentity
from services.rendezvous import RendezvousConfig, start_rendezvous
from services.tls import self_signed, server_context
from tests.conftest import SMALL_VIDEO, Stack, scaled


async def test_camera_over_tls_verifies_the_server(
    tmp_path: Path, viewer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = self_signed(tmp_path / "tls", ["127.0.0.1", "localhost"])
    server, runner, port = await start_rendezvous("127.0.0.1", 0, None,
                                                  server_context(cert, key))
    url = f"wss://127.0.0.1:{port}"
    agents: list[CameraAgent] = []

    async def camera(name: str, **tls: object) -> CameraAgent:
        cfg = CameraConfig(rendezvous=url, state_dir=tmp_path / name, video=SMALL_VIDEO,
                           backoff_base=0.1, backoff_cap=0.5, **tls)  # type: ignore[arg-type]
        agent = CameraAgent(cfg, make_configured_source(cfg),
                            DeviceIdentity.load_or_create(cfg.state_dir))
        agents.append(agent)
        await agent.start()
        return agent

    try:
        # A self-signed certificate the system does not trust: refused, never registered.
        untrusting = await camera("untrusting")
        await asyncio.sleep(1.0)
        assert not untrusting.registered.is_set()
        assert server.router.stats()["cameras"] == 0
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate" in caplog.text

        # Told to trust exactly this certificate: registers and serves over wss.
        trusting = await camera("trusting", tls_ca=str(cert))
        async with asyncio.timeout(scaled(10)):
            await trusting.registered.wait()
        assert trusting.link.tls_resumed == 0
        # Connecting again, the camera resumes its TLS session from the server's ticket.
        await trusting.link.restart()
        async with asyncio.timeout(scaled(10)):
            while not (trusting.registered.is_set() and trusting.link.tls_resumed):
                await asyncio.sleep(0.05)
        assert trusting.link.tls_resumed == 1
        stack = Stack(server, url, tmp_path)
        trusting.acl.add(stack.viewer.key, stack.viewer.name)
        link = f"https://127.0.0.1:{port}/#device={trusting.device_id}"
        with pytest.raises(ViewError, match="certificate verify failed"):
            await view(link, seconds=1)
        stats = await view(link, seconds=1, tls_ca=str(cert))
        assert stats.frames > 10
    finally:
        for agent in agents:
            await agent.close()
        await runner.cleanup()
    key_mode = (tmp_path / "tls" / "tls-key.pem").stat().st_mode & 0o777
    assert key_mode == 0o600


async def test_connections_per_ip_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server, runner, port = await start_rendezvous(
        "127.0.0.1", 0, RendezvousConfig(connection_rate=1.0, connection_burst=3.0))
    statuses = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                try:
                    async with http.ws_connect(f"ws://127.0.0.1:{port}/ws/viewer") as ws:
                        await ws.receive_json()
                        statuses.append(101)
                except aiohttp.WSServerHandshakeError as exc:
                    statuses.append(exc.status)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200  # the server itself keeps serving
    finally:
        await runner.cleanup()
    assert statuses[:3] == [101, 101, 101]
    assert 429 in statuses[3:]
    assert "too many" in caplog.text


async def test_message_flood_is_rate_limited_and_the_connection_survives() -> None:
    server, runner, port = await start_rendezvous(
        "127.0.0.1", 0, RendezvousConfig(message_rate=5.0, message_burst=10.0))
    try:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"ws://127.0.0.1:{port}/ws/viewer") as ws:
            await ws.receive_json()  # hello
            for _ in range(50):
                await ws.send_str("{}")
            codes = []
            while True:
                try:
                    async with asyncio.timeout(0.5):
                        codes.append((await ws.receive_json())["code"])
                except TimeoutError:
                    break
            assert codes.count("bad-message") == 10  # the burst was answered
            assert codes.count("rate-limited") == 1  # then one warning, the rest dropped
            await asyncio.sleep(0.5)  # tokens come back: the connection still works
            await ws.send_str("{}")
            assert (await ws.receive_json())["code"] == "bad-message"
    finally:
        await runner.cleanup()
