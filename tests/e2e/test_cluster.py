"""Several rendezvous nodes on a real Redis, real camera agents and real viewers.

The HAProxy test runs the configuration printed in docs/operations.md (addresses
and certificate path replaced), in front of two ``peercam rendezvous`` processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camera.client.viewer import view
from camera.link import RendezvousUrls
from services.tls import self_signed
from tests.conftest import Stack, scaled
from tests.services.test_cluster import (
    RedisServer,
    free_port,
    start_nodes,
    until_exists,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_several_urls_are_tried_in_order_then_round_robin() -> None:
    urls = RendezvousUrls(("ws://a", "ws://b", "ws://c"))
    assert urls.current == "ws://a"
    assert urls.advance() and urls.current == "ws://b"  # first pass: no wait
    assert urls.advance() and urls.current == "ws://c"
    assert not urls.advance() and urls.current == "ws://a"  # then with the backoff
    assert not urls.advance() and urls.current == "ws://b"
    urls.registered()
    assert not urls.advance() and urls.current == "ws://c"
    single = RendezvousUrls(("ws://only",))
    assert not single.advance() and single.current == "ws://only"


async def test_viewer_on_one_node_watches_a_camera_on_another(
        redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = await start_nodes(redis_server, 2)
    # The camera lists a dead address first: it moves on to node b at once.
    stack = Stack(b.server, f"ws://127.0.0.1:{free_port()}, {b.url}", tmp_path)
    try:
        camera = await stack.camera()
        assert camera.device_id in b.router.cameras
        stats = await view(f"http://127.0.0.1:{a.port}/#device={camera.device_id}", seconds=3)
        summary = stats.as_dict()
        assert summary["frames"] >= 30, summary
        assert b.router.counters.sessions_answered["offer"] == 1
        assert a.router.node_received["to-viewer"] >= 1  # the answer came through Redis
        assert not a.router.sessions  # node a routed nothing itself
    finally:
        for agent in stack.agents:
            await agent.close()
        for node in (a, b):
            await node.runner.cleanup()


# -- HAProxy in front of two node processes ---------------------------------------------


def haproxy_config(port: int, pem: Path, nodes: list[int]) -> str:
    """The HAProxy configuration of docs/operations.md, for these ports."""
    text = DOCS.read_text()
    found = re.search(r"```haproxy\n(.*?)```", text, re.S)
    assert found, "docs/operations.md has no haproxy block"
    config = found.group(1)
    for old, new in (("maxconn 200000", "maxconn 5000"),  # a test's descriptor limit
                     ("bind :443 ssl crt /etc/haproxy/peercam.pem",
                      f"bind 127.0.0.1:{port} ssl crt {pem}"),
                     ("server node1 10.0.0.11:8080", f"server node1 127.0.0.1:{nodes[0]}"),
                     ("server node2 10.0.0.12:8080", f"server node2 127.0.0.1:{nodes[1]}")):
        assert old in config, old
        config = config.replace(old, new)
    return config


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_node_killed_behind_haproxy_cameras_rehome_and_viewers_watch(
        redis_server: RedisServer, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    assert shutil.which("haproxy"), "scripts/setup --test installs haproxy"
    front = free_port()
    cert, key = self_signed(tmp_path / "tls", ["127.0.0.1"])
    pem = tmp_path / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    ports = [free_port(), free_port()]
    env = {**os.environ, "PEERCAM_REDIS_URL": redis_server.url, "PEERCAM_LOG_LEVEL": "WARNING"}
    nodes = []
    for index, port in enumerate(ports):
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "camera.cli", "rendezvous", "--listen", f"127.0.0.1:{port}",
             "--server-name", f"127.0.0.1:{front}", "--node-id", f"node{index + 1}",
             "--presence-lease", "2"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        processes.append(nodes[-1])
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front, pem, ports))
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    for port in ports:
        wait_port(port)
    processes.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(front)
    url = f"wss://127.0.0.1:{front}"
    stack = Stack(None, url, tmp_path)  # type: ignore[arg-type]
    client = redis_server.client()
    try:
        cameras = [await stack.camera(tls_ca=str(cert)) for _ in range(2)]
        keys = [f"peercam:camera:{camera.device_id}" for camera in cameras]
        for key in keys:
            await until_exists(client, key)
        holders = [str(await client.get(key)).split("/")[0] for key in keys]
        victim = holders[0]
        nodes[int(victim[-1]) - 1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # Every camera of the dead node is registered on the survivor within 10 s.
        while True:
            now = [str(await client.get(key)).split("/")[0] for key in keys]
            if all(holder not in (victim, "None") for holder in now):
                break
            assert time.monotonic() - killed < 10, f"not re-homed: {now}"
            await asyncio.sleep(0.1)
        rehomed = time.monotonic() - killed
        print(f"re-homed {len(cameras)} cameras in {rehomed:.1f} s")
        for camera in cameras:
            assert camera.registered.is_set()
        # A viewer through the balancer reaches each camera, wherever it lands.
        for camera in cameras:
            stats = await view(f"https://127.0.0.1:{front}/#device={camera.device_id}",
                               seconds=2, tls_ca=str(cert))
            assert stats.as_dict()["frames"] >= 20, (stats.as_dict(), rehomed)
    finally:
        await client.aclose()
        for agent in stack.agents:
            await agent.close()
