"""Rendezvous nodes on a real Redis over TLS (``rediss://``), with AUTH.

redis-server listens on TLS only, with a certificate the system does not trust.
Nodes told to trust it (``ClusterSettings.tls_ca``, ``--redis-ca``) route a
viewer's message to a camera on the other node; a node that trusts only the
system's CAs refuses the server and says "degraded", serving its own clients.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from camera.identity import DeviceIdentity
from services.cluster import ClusterSettings
from services.rendezvous import RendezvousConfig, start_rendezvous
from services.tls import self_signed
from tests.conftest import scaled
from tests.services.test_cluster import (
    PASSWORD,
    free_port,
    pair_request,
    raw_camera,
    raw_viewer,
    receive_json,
    wait_for,
)


class TlsRedis:
    """redis-server on a TLS port only (no plain port), AUTH required."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed(directory / "tls", ["127.0.0.1"])
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port),
             "--bind", "127.0.0.1", "--tls-cert-file", str(self.cert),
             "--tls-key-file", str(key), "--tls-ca-cert-file", str(self.cert),
             "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        context = ssl.create_default_context(cafile=str(self.cert))
        deadline = time.monotonic() + scaled(10)
        while True:
            assert self.process.poll() is None, "redis-server refused its TLS settings"
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return
            assert time.monotonic() < deadline, "redis-server did not start on TLS"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    assert shutil.which("redis-server"), "scripts/setup --test installs redis-server"
    server = TlsRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


async def test_nodes_route_through_a_redis_they_reach_over_tls(tls_redis: TlsRedis) -> None:
    ports = [free_port(), free_port()]
    names = tuple(f"127.0.0.1:{port}" for port in ports)
    nodes = []
    try:
        for index, port in enumerate(ports):
            settings = ClusterSettings(tls_redis.url, node_id=f"tls{index}", lease=2.0,
                                       tls_ca=str(tls_redis.cert))
            nodes.append(await start_rendezvous("127.0.0.1", port, RendezvousConfig(
                server_names=names, cluster=settings)))
        for server, _runner, _port in nodes:
            await wait_for(lambda server=server: not server.cluster.degraded,  # type: ignore
                           what="the node reaching Redis over TLS")
        identity = DeviceIdentity.generate()
        async with aiohttp.ClientSession() as http:
            camera = await raw_camera(http, f"ws://127.0.0.1:{nodes[1][2]}", identity)
            viewer = await raw_viewer(http, f"ws://127.0.0.1:{nodes[0][2]}")
            await viewer.send_json(pair_request(identity.device_id, "t" * 22))
            routed = await camera.next()
            assert routed["type"] == "pair" and routed["session_id"] == "t" * 22
            await camera.ws.send_json({"type": "bye", "session_id": "t" * 22,
                                       "reason": "over tls"})
            assert (await receive_json(viewer))["reason"] == "over tls"
            await viewer.close()
            await camera.ws.close()
    finally:
        for _server, runner, _port in nodes:
            await runner.cleanup()


async def test_a_node_that_cannot_verify_the_redis_certificate_is_degraded(
        tls_redis: TlsRedis) -> None:
    port = free_port()
    settings = ClusterSettings(tls_redis.url, node_id="untrusting", lease=2.0)  # system CAs
    server, runner, bound = await start_rendezvous("127.0.0.1", port, RendezvousConfig(
        server_names=(f"127.0.0.1:{port}",), cluster=settings))
    try:
        await wait_for(lambda: server.cluster.degraded, what="degraded")  # type: ignore
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{bound}/healthz") as reply:
            health = await reply.json()
        assert health["status"] == "degraded", health
        assert PASSWORD not in json.dumps(health)
        # Its own cameras and viewers are still served.
        identity = DeviceIdentity.generate()
        async with aiohttp.ClientSession() as http:
            camera = await raw_camera(http, f"ws://127.0.0.1:{bound}", identity)
            viewer = await raw_viewer(http, f"ws://127.0.0.1:{bound}")
            await viewer.send_json(pair_request(identity.device_id, "u" * 22))
            assert (await camera.next())["session_id"] == "u" * 22
            await viewer.close()
            await camera.ws.close()
    finally:
        await runner.cleanup()
