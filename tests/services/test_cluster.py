"""Rendezvous nodes on a real Redis (started here, on a free port, in a temp dir).

The helpers (``RedisServer``, ``Node``, ``raw_camera``, ``raw_viewer``) are shared
with tests/e2e/test_cluster.py. Leases are short (2 s) so expiry is quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from camera.gatekeeper import server_name
from camera.identity import DeviceIdentity
from services.cluster import Claim, ClusterRouter, ClusterSettings, Evict, encode_node
from services.rendezvous import Rendezvous, RendezvousConfig, start_rendezvous
from services.routing import Router
from services.signatures import encode_public_key, register_statement, sign
from tests.conftest import scaled

PASSWORD = "s3cret-for-tests"
LEASE = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server with AUTH, no persistence: a restart starts empty."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> aioredis.Redis:
        return aioredis.from_url(self.url, decode_responses=True, socket_timeout=2)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    assert shutil.which("redis-server"), "scripts/setup --test installs redis-server"
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Node:
    server: Rendezvous
    runner: Any
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def router(self) -> ClusterRouter:
        assert isinstance(self.server.router, ClusterRouter)
        return self.server.router


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Node] = field(default_factory=list)

    async def healthz(self, node: Node) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{node.port}/healthz") as reply:
            assert reply.status == 200
            body: dict[str, Any] = await reply.json()
            return body


async def start_nodes(redis: RedisServer, count: int, **config: Any) -> list[Node]:
    """``count`` in-process nodes on free ports, each knowing every node's name."""
    ports = [free_port() for _ in range(count)]
    names = tuple(f"127.0.0.1:{port}" for port in ports)
    nodes = []
    for index, port in enumerate(ports):
        settings = ClusterSettings(redis.url, node_id=f"node{index}", lease=LEASE)
        server, runner, bound = await start_rendezvous("127.0.0.1", port, RendezvousConfig(
            server_names=names, cluster=settings, **config))
        nodes.append(Node(server, runner, bound))
    for node in nodes:
        await wait_for(lambda node=node: not node.server.cluster.degraded)  # type: ignore
    return nodes


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    made = Cluster(redis_server, await start_nodes(redis_server, 2))
    try:
        yield made
    finally:
        for node in made.nodes:
            await node.runner.cleanup()


async def wait_for(condition: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


async def until_exists(client: aioredis.Redis, key: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not await client.exists(key):
        assert time.monotonic() < deadline, f"{key} never appeared"
        await asyncio.sleep(0.02)


class RawCamera:
    """A camera speaking the protocol itself (real key, real signatures)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, identity: DeviceIdentity) -> None:
        self.ws, self.identity = ws, identity

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=scaled(timeout))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out: dict[str, Any] = json.loads(msg.data)
        return out


async def raw_camera(http: aiohttp.ClientSession, url: str,
                     identity: DeviceIdentity) -> RawCamera:
    ws = await http.ws_connect(f"{url}/ws/camera")
    hello = json.loads((await ws.receive(timeout=scaled(5))).data)
    statement = register_statement(server_name(url), hello["nonce"], identity.device_id)
    await ws.send_json({"type": "register", "device_id": identity.device_id,
                        "device_key": encode_public_key(identity.private_key.public_key()),
                        "signature": sign(identity.private_key, statement)})
    camera = RawCamera(ws, identity)
    reply = await camera.next()
    assert reply["type"] == "registered", reply
    return camera


async def raw_viewer(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url}/ws/viewer")
    hello = json.loads((await ws.receive(timeout=scaled(5))).data)
    assert hello["type"] == "hello"
    return ws


def pair_request(device_id: str, session_id: str) -> dict[str, Any]:
    """A pair request: routed to the camera as is (the camera checks its proof)."""
    identity = DeviceIdentity.generate()
    return {"type": "pair", "device_id": device_id, "session_id": session_id,
            "viewer_key": encode_public_key(identity.private_key.public_key()),
            "name": "test viewer", "timestamp": int(time.time() * 1000), "proof": "P" * 43,
            "signature": "S" * 86}


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0
                       ) -> dict[str, Any]:
    msg = await ws.receive(timeout=scaled(timeout))
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    out: dict[str, Any] = json.loads(msg.data)
    return out


# -- the tests -----------------------------------------------------------------------


async def test_a_viewer_reaches_a_camera_on_another_node_and_back(cluster: Cluster) -> None:
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    async with aiohttp.ClientSession() as http:
        camera = await raw_camera(http, b.url, identity)
        viewer = await raw_viewer(http, a.url)
        await viewer.send_json(pair_request(identity.device_id, "x" * 22))
        routed = await camera.next()
        assert routed["type"] == "pair" and routed["session_id"] == "x" * 22
        assert routed["viewer_key"]  # the signed fields arrive untouched
        await camera.ws.send_json({"type": "bye", "session_id": "x" * 22,
                                   "reason": "not pairing now"})
        reply = await receive_json(viewer)
        assert reply == {"type": "bye", "session_id": "x" * 22, "reason": "not pairing now"}
        # An unknown camera: the ordinary answer, from either node.
        await viewer.send_json(pair_request(DeviceIdentity.generate().device_id, "y" * 22))
        assert (await receive_json(viewer))["code"] == "unavailable"
        # A viewer leaving ends its session on the camera's node too.
        await viewer.send_json(pair_request(identity.device_id, "z" * 22))
        assert (await camera.next())["session_id"] == "z" * 22
        await wait_for(lambda: len(b.router.sessions) == 1)
        await viewer.close()
        await wait_for(lambda: not b.router.sessions and not b.router.proxies,
                       what="the session on the camera's node ended")
        assert (await camera.next()) == {"type": "bye", "session_id": "z" * 22,
                                         "reason": "viewer left"}
    health = await cluster.healthz(a)
    assert health["status"] == "ok" and health["cluster"]["redis_ok"] is True
    assert PASSWORD not in json.dumps(health)


async def test_duplicate_registration_on_two_nodes_newer_wins(cluster: Cluster) -> None:
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    key = f"peercam:camera:{identity.device_id}"
    async with aiohttp.ClientSession() as http:
        older = await raw_camera(http, a.url, identity)
        client = cluster.redis.client()
        await until_exists(client, key)  # claimed just after "registered" went out
        assert (await client.get(key)).startswith("node0/")
        newer = await raw_camera(http, b.url, identity)
        replaced = await older.next()
        assert replaced["type"] == "error" and replaced["code"] == "replaced"
        closed = await older.ws.receive(timeout=scaled(5))
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await wait_for(lambda: identity.device_id not in a.router.cameras)
        assert (await client.get(key)).startswith("node1/")
        assert a.router.counters.replaced == 1
        # The newer one is reachable from the older's node.
        viewer = await raw_viewer(http, a.url)
        await viewer.send_json(pair_request(identity.device_id, "p" * 22))
        assert (await newer.next())["type"] == "pair"
        # Its lease is renewed: still there after more than one lease.
        await asyncio.sleep(LEASE * 1.5)
        assert (await client.get(key)).startswith("node1/")
        await client.aclose()


async def test_a_registration_captured_on_one_node_is_refused_on_another(
        cluster: Cluster) -> None:
    # Every node answers to every node's name (as behind one balancer), so only the
    # per-connection nonce stops a register message recorded on node a from
    # registering the camera, or replacing it, on node b.
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    key = f"peercam:camera:{identity.device_id}"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{a.url}/ws/camera")
        nonce = (await receive_json(ws))["nonce"]
        captured = {"type": "register", "device_id": identity.device_id,
                    "device_key": encode_public_key(identity.private_key.public_key()),
                    "signature": sign(identity.private_key, register_statement(
                        server_name(a.url), nonce, identity.device_id))}
        await ws.send_json(captured)
        assert (await receive_json(ws))["type"] == "registered"
        client = cluster.redis.client()
        await until_exists(client, key)
        for node in (b, a):  # another node, and the same node on a new connection
            thief = await http.ws_connect(f"{node.url}/ws/camera")
            assert (await receive_json(thief))["nonce"] != nonce
            await thief.send_json(captured)
            reply = await receive_json(thief)
            assert reply["type"] == "error" and reply["code"] == "bad-signature", reply
            closed = await thief.receive(timeout=scaled(5))
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert identity.device_id not in b.router.cameras
        assert (await client.get(key)).startswith("node0/")
        assert identity.device_id in a.router.cameras and a.router.counters.replaced == 0
        # The genuine camera is still the one a viewer on node b reaches.
        viewer = await raw_viewer(http, b.url)
        await viewer.send_json(pair_request(identity.device_id, "r" * 22))
        routed = await receive_json(ws)
        assert routed["type"] == "pair" and routed["session_id"] == "r" * 22
        await client.aclose()


async def test_a_dead_nodes_presence_expires_within_its_lease(cluster: Cluster) -> None:
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    async with aiohttp.ClientSession() as http:
        camera = await raw_camera(http, a.url, identity)
        client = cluster.redis.client()
        key = f"peercam:camera:{identity.device_id}"
        await until_exists(client, key)  # claimed just after "registered" went out
        assert 0 < await client.pttl(key) <= LEASE * 1000
        # The node's Redis link dies as a killed process's would: no goodbye.
        assert a.server.cluster is not None
        for task in a.server.cluster._tasks:
            task.cancel()
        died = time.monotonic()
        while await client.exists(key):
            assert time.monotonic() - died < LEASE + 1.0, "presence outlived its lease"
            await asyncio.sleep(0.1)
        assert not await client.exists("peercam:node:node0")
        viewer = await raw_viewer(http, b.url)
        await viewer.send_json(pair_request(identity.device_id, "q" * 22))
        assert (await receive_json(viewer))["code"] == "unavailable"
        assert not camera.ws.closed  # its own node still serves it
        await client.aclose()


async def test_redis_down_serves_locally_and_resynchronises(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "services.cluster_redis")
    a, b = cluster.nodes
    here, there = DeviceIdentity.generate(), DeviceIdentity.generate()
    async with aiohttp.ClientSession() as http:
        local = await raw_camera(http, a.url, here)
        remote = await raw_camera(http, b.url, there)
        viewer = await raw_viewer(http, a.url)
        cluster.redis.stop()
        await wait_for(lambda: a.server.cluster.degraded, what="degraded")  # type: ignore
        health = await cluster.healthz(a)
        assert health["status"] == "degraded" and health["cluster"]["redis_ok"] is False
        assert any("redis unreachable" in r.getMessage() for r in caplog.records)
        # Local traffic goes on; cross-node requests get the ordinary reply.
        for round_ in range(3):
            await viewer.send_json(pair_request(here.device_id, f"l{round_}" + "l" * 21))
            assert (await local.next())["type"] == "pair"
            await viewer.send_json(pair_request(there.device_id, f"r{round_}" + "r" * 21))
            assert (await receive_json(viewer))["code"] == "unavailable"
        # A camera registering during the outage is served locally, and claimed later.
        late = DeviceIdentity.generate()
        late_camera = await raw_camera(http, a.url, late)
        cluster.redis.start()  # empty: no presence, no node keys
        await wait_for(lambda: not a.server.cluster.degraded  # type: ignore
                       and not b.server.cluster.degraded,  # type: ignore
                       timeout=LEASE * 2, what="resynchronised")
        client = cluster.redis.client()
        for identity, node in ((here, "node0"), (there, "node1"), (late, "node0")):
            value = await client.get(f"peercam:camera:{identity.device_id}")
            assert value is not None and value.startswith(node + "/"), (identity, value)
        await client.aclose()
        await viewer.send_json(pair_request(there.device_id, "b" * 22))
        assert (await remote.next())["session_id"] == "b" * 22
        assert (await cluster.healthz(a))["status"] == "ok"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert all(PASSWORD not in r.getMessage() for r in caplog.records)
        assert not late_camera.ws.closed


async def test_hostile_node_messages_are_refused_and_logged(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "services.cluster")
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    async with aiohttp.ClientSession() as http:
        camera = await raw_camera(http, a.url, identity)
        holder = a.router.holder(a.router.cameras[identity.device_id])
        stranger = DeviceIdentity.generate()
        key = encode_public_key(identity.private_key.public_key())
        forged = Evict("node9", identity.device_id, holder, key, "n" * 24, "S" * 86)
        foreign = Evict("node9", stranger.device_id, "node0/1",
                        encode_public_key(stranger.private_key.public_key()), "n" * 24,
                        sign(stranger.private_key,
                             register_statement(f"127.0.0.1:{a.port}", "n" * 24,
                                                stranger.device_id)))
        hostile: list[str | bytes] = [
            b"\xff\xfe not json", "[]", '{"v": 2}', '{"v":1,"kind":"viewer"}',
            json.dumps({"v": 1, "kind": "viewer", "sender": "node9", "ref": -1, "data": ""}),
            json.dumps({"v": 1, "kind": "evict", "sender": "node9", "device_id": "nope",
                        "holder": holder, "device_key": key, "nonce": "n", "signature": "s"}),
            "x" * 300_000,
            encode_node(forged),  # right camera, no valid registration behind it
            encode_node(foreign),  # a camera that is not here
            json.dumps({"v": 1, "kind": "to-viewer", "sender": "node9", "ref": 1,
                        "data": '{"type":"bye","session_id":"' + "s" * 22 + '"}'}),
            json.dumps({"v": 1, "kind": "viewer", "sender": "node9", "ref": 5,
                        "data": "not a signaling message"}),
        ]
        client = cluster.redis.client()
        for raw in hostile:
            await client.publish("peercam:to:node0", raw)
        await wait_for(lambda: sum(a.router.node_refused.values()) >= 10,
                       what="the refusals")
        assert a.router.node_refused["malformed"] == 7
        assert a.router.node_refused["bad-signature"] == 1
        assert a.router.node_refused["foreign-camera"] == 1
        assert a.router.node_refused["foreign-viewer"] == 1
        assert any("refused a node message" in r.getMessage() for r in caplog.records)
        async with http.get(f"http://127.0.0.1:{a.port}/metrics") as reply:
            scraped = await reply.text()
        assert ('peercam_rendezvous_cluster_node_messages_refused_total{reason="malformed"} 7.0'
                in scraped)
        assert "peercam_rendezvous_cluster_redis_up 1.0" in scraped
        # The camera is still registered and reachable from the other node.
        assert identity.device_id in a.router.cameras
        viewer = await raw_viewer(http, b.url)
        await viewer.send_json(pair_request(identity.device_id, "h" * 22))
        assert (await camera.next())["session_id"] == "h" * 22
        await client.aclose()


async def test_without_a_redis_url_the_server_is_one_process(tmp_path: Path) -> None:
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig())
    try:
        assert type(server.router) is Router and server.cluster is None
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/healthz") as reply:
            body = await reply.json()
        assert body["status"] == "ok" and "cluster" not in body
    finally:
        await runner.cleanup()


# -- the sans-I/O router alone: two nodes wired by hand (the bus is the test) --------


def test_two_cluster_routers_route_a_session_and_refuse_foreign_replies() -> None:
    from services.cluster import Locate, Publish, RemoteViewer, ToViewer
    from services.routing import Peer, Send
    from services.signaling import Role, encode

    name = "rdv.test:443"
    a, b = (ClusterRouter(node, server_names=[name]) for node in ("a", "b"))
    identity = DeviceIdentity.generate()
    camera = Peer(Role.CAMERA, host=name)
    b.connected(camera)
    statement = register_statement(name, camera.nonce, identity.device_id)
    b.received(camera, encode(Role.CAMERA, "register", device_id=identity.device_id,
                              device_key=encode_public_key(identity.private_key.public_key()),
                              signature=sign(identity.private_key, statement)), 0.0)
    assert b.presence() == {identity.device_id: b.presence_value(camera)}
    viewer = Peer(Role.VIEWER)
    a.connected(viewer)
    request = json.dumps(pair_request(identity.device_id, "s" * 22))
    [locate] = a.received(viewer, request, 1.0)
    assert isinstance(locate, Locate) and locate.device_id == identity.device_id
    [publish] = a.located(viewer, locate.data, "b", 1.0)
    assert isinstance(publish, Publish) and publish.node == "b"
    [to_camera] = b.from_node(encode_node(publish.message), 1.0)
    assert isinstance(to_camera, Send) and to_camera.peer is camera
    assert json.loads(to_camera.text)["type"] == "pair"
    [proxy] = b.proxies.values()
    assert isinstance(proxy, RemoteViewer) and proxy.node == "a" and proxy.ref == viewer.id
    [reply] = b.received(camera, encode(Role.CAMERA, "bye", session_id="s" * 22,
                                        reason="no"), 2.0)
    assert isinstance(reply, Publish) and isinstance(reply.message, ToViewer)
    # The same reply from the wrong node, or for another session, goes nowhere.
    wrong = ToViewer("c", viewer.id, reply.message.data)
    assert a.from_node(encode_node(wrong), 2.0) == []
    assert a.node_refused["foreign-viewer"] == 1
    [delivered] = a.from_node(encode_node(reply.message), 2.0)
    assert isinstance(delivered, Send) and delivered.peer is viewer
    assert json.loads(delivered.text) == {"type": "bye", "session_id": "s" * 22, "reason": "no"}
    assert not a.remote.get(viewer)  # the bye ended it on the viewer's node too
    # A session whose camera's node dies ends with a bye to the viewer.
    [locate] = a.received(viewer, json.dumps(pair_request(identity.device_id, "t" * 22)), 3.0)
    a.located(viewer, locate.data, "b", 3.0)
    assert a.nodes_in_use() == {"b"}
    [bye] = a.nodes_gone({"b"})
    assert isinstance(bye, Send) and json.loads(bye.text)["type"] == "bye"
    # Redis could not say where the camera is: the ordinary reply.
    [locate] = a.received(viewer, json.dumps(pair_request(identity.device_id, "u" * 22)), 4.0)
    [unavailable] = a.located(viewer, locate.data, None, 4.0)
    assert isinstance(unavailable, Send) and json.loads(unavailable.text)["code"] == "unavailable"


async def test_a_camera_whose_claim_did_not_go_through_is_not_closed_by_its_renewal(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera re-homed from a node that died: the key still names the dead node's
    connection, and this node's claim failed (Redis refused it under load). The
    next renewal must claim the key for the newer registration, not take the old
    value for a newer one elsewhere and close the camera."""
    _a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    key = f"peercam:camera:{identity.device_id}"
    client = cluster.redis.client()
    await client.set(key, dead_nodes_value(), px=int(LEASE * 1000))
    cluster_b = b.server.cluster
    assert cluster_b is not None
    real_evalsha = cluster_b.client.evalsha
    refused: list[str] = []

    async def refuse_claims(sha: str, numkeys: int, *args: Any) -> Any:
        if args[0] == key:
            refused.append(key)
            raise RedisError("max number of clients reached")  # what a busy pool said
        return await real_evalsha(sha, numkeys, *args)

    monkeypatch.setattr(cluster_b.client, "evalsha", refuse_claims)
    async with aiohttp.ClientSession() as http:
        camera = await raw_camera(http, b.url, identity)
        await wait_for(lambda: refused, what="the claim")
        monkeypatch.setattr(cluster_b.client, "evalsha", real_evalsha)
        await asyncio.sleep(LEASE)  # renewals run every third of a lease
        assert identity.device_id in b.router.cameras
        assert (await client.get(key)).startswith("node1/")
        assert b.router.counters.replaced == 0
        assert not camera.ws.closed
    await client.aclose()


# -- which registration is the newer: the registrations' order, not the writes' ------


def dead_nodes_value() -> str:
    """The presence value a node that died left: a registration 5 s old."""
    return f"node9/7@{time.time_ns() // 1000 - 5_000_000}"


@dataclass
class HeldClaims:
    go: asyncio.Event = field(default_factory=asyncio.Event)
    done: list[Claim] = field(default_factory=list)


def hold_claims(monkeypatch: pytest.MonkeyPatch, node: Node) -> HeldClaims:
    """Hold ``node``'s presence claims until ``go`` is set (a claim that waits for a
    Redis connection while everything else goes on); ``done``: the claims run."""
    cluster = node.server.cluster
    assert cluster is not None
    real = cluster.perform
    held = HeldClaims()

    async def perform(action: Any) -> None:
        if isinstance(action, Claim):
            await asyncio.wait_for(held.go.wait(), scaled(10))
        await real(action)
        if isinstance(action, Claim):
            held.done.append(action)

    monkeypatch.setattr(cluster, "perform", perform)
    return held


async def test_a_renewal_before_the_claim_takes_the_key_from_a_dead_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera re-homed from a node that died: its new node's renewal runs between
    the registration and its claim, and finds the key still naming the dead node's
    connection. That is an older registration: the renewal takes the key, and the
    camera is not closed as ``replaced``."""
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    key = f"peercam:camera:{identity.device_id}"
    client = cluster.redis.client()
    await client.set(key, dead_nodes_value(), px=int(LEASE * 1000))
    held = hold_claims(monkeypatch, b)
    cluster_b = b.server.cluster
    assert cluster_b is not None
    async with aiohttp.ClientSession() as http:
        camera = await raw_camera(http, b.url, identity)
        await cluster_b._renew_once()  # the renewal that ran first
        assert b.router.counters.replaced == 0 and not camera.ws.closed
        held.go.set()
        await wait_for(lambda: held.done, what="the claim")  # it must change nothing
        assert b.router.counters.replaced == 0 and not camera.ws.closed
        assert identity.device_id in b.router.cameras
        assert (await client.get(key)).startswith("node1/")
        viewer = await raw_viewer(http, a.url)
        await viewer.send_json(pair_request(identity.device_id, "d" * 22))
        assert (await camera.next())["session_id"] == "d" * 22
    await client.aclose()


async def test_an_older_registrations_late_claim_does_not_evict_the_newer(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The camera registers on node a, whose claim waits; then again on node b, whose
    claim goes through. When a's claim reaches Redis at last, the registration on b
    is still the newer: the key stays b's, and a closes its own older connection."""
    a, b = cluster.nodes
    identity = DeviceIdentity.generate()
    key = f"peercam:camera:{identity.device_id}"
    client = cluster.redis.client()
    held = hold_claims(monkeypatch, a)
    async with aiohttp.ClientSession() as http:
        older = await raw_camera(http, a.url, identity)
        newer = await raw_camera(http, b.url, identity)
        await until_exists(client, key)
        assert (await client.get(key)).startswith("node1/")
        held.go.set()  # the older registration's claim arrives last
        replaced = await older.next()
        assert replaced["type"] == "error" and replaced["code"] == "replaced"
        await wait_for(lambda: identity.device_id not in a.router.cameras)
        assert (await client.get(key)).startswith("node1/")
        assert a.router.counters.replaced == 1 and b.router.counters.replaced == 0
        assert not newer.ws.closed
        viewer = await raw_viewer(http, a.url)
        await viewer.send_json(pair_request(identity.device_id, "n" * 22))
        assert (await newer.next())["session_id"] == "n" * 22
    await client.aclose()


def test_generations_increase_on_one_node_whatever_the_clock_does() -> None:
    from services.routing import Peer
    from services.signaling import Role, encode

    name = "rdv.test:443"
    clock = iter([1_000, 900, 900, 5_000])
    router = ClusterRouter("a", generation_clock=lambda: next(clock), server_names=[name])
    seen = []
    for _ in range(4):
        identity = DeviceIdentity.generate()
        camera = Peer(Role.CAMERA, host=name)
        router.connected(camera)
        statement = register_statement(name, camera.nonce, identity.device_id)
        actions = router.received(camera, encode(
            Role.CAMERA, "register", device_id=identity.device_id,
            device_key=encode_public_key(identity.private_key.public_key()),
            signature=sign(identity.private_key, statement)), 0.0)
        [claim] = [x for x in actions if isinstance(x, Claim)]
        seen.append(claim.value)
        assert router.presence()[identity.device_id] == claim.value
    assert [v.rpartition("@")[2] for v in seen] == ["1000", "1001", "1002", "5000"]
