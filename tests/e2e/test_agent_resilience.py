"""Nothing from outside stops the camera: the real agent, a real rendezvous, hostile input.

Hostile values reach the agent two ways: from a compromised rendezvous (the real
server with a hook that sends the camera whatever the test wants), and from a
viewer through the real rendezvous' routing. After any of it, the camera is
still registered and a paired viewer gets video. A link that dies from inside is
brought back by the supervisor; one that cannot come back stops the watchdog.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camera.agent import CameraAgent
from camera.client.viewer import view
from camera.health import LinkLadder
from camera.sdnotify import Notifier
from camera.webrtc import restrict_host_addresses
from services.rendezvous import start_rendezvous
from tests.conftest import Stack, scaled
from tests.e2e.test_hostile_rendezvous import HostileRendezvous

SESSION = "h" * 20
TYPES = ["offer", "candidate", "pair", "bye", "error", "hello", "registered", "answer",
         "paired", "prepared", "nonsense"]
FIELDS = ["session_id", "sdp", "viewer_key", "timestamp", "signature", "ice_servers", "seq",
          "candidate", "sdp_mid", "sdp_mline_index", "name", "proof", "code", "message",
          "reason", "device_id"]
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "x" * 65_536, SESSION, "v=0\r\n\ud800"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def _pair_base(name: Any) -> dict[str, Any]:
    # Well-formed but unsigned: only the values the strategies put in change.
    return {"type": "pair", "session_id": SESSION, "viewer_key": "A" * 122, "name": name,
            "timestamp": 1_700_000_000_000, "signature": "A" * 86, "proof": "A" * 43}


@st.composite
def hostile_text_frames(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(["[" * 60_000 + "]" * 60_000, "{", "null", "\"\\ud800\""]))
    message = _pair_base(draw(json_values))
    message["type"] = draw(st.sampled_from(TYPES))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        message[name] = draw(json_values)
    # A JSON encoder that escapes (\ud800) and one that does not (raw surrogates
    # cannot go out as UTF-8: the escaped form is what a hostile peer can send).
    return json.dumps(message)


class Background:
    """One event loop in a thread for a whole hypothesis run: the rendezvous, the camera."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(scaled(timeout))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live(tmp_path: Path, viewer_dir: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Background, Stack, Any, CameraAgent]]:
    import services.rendezvous as module

    monkeypatch.setattr(module, "Rendezvous", HostileRendezvous)
    bg = Background()

    async def up() -> tuple[Stack, Any, Any, CameraAgent]:
        restrict_host_addresses(["127.0.0.1"])
        server, runner, port = await start_rendezvous("127.0.0.1", 0)
        server.sent_to_camera = []
        stack = Stack(server, f"ws://127.0.0.1:{port}", tmp_path)
        return stack, server, runner, await stack.camera()

    stack, server, runner, camera = bg.run(up())
    try:
        yield bg, stack, server, camera
    finally:
        async def down() -> None:
            for agent in stack.agents:
                await agent.close()
            await runner.cleanup()

        bg.run(down())
        bg.stop()


async def _probe(server: HostileRendezvous, camera: CameraAgent) -> None:
    """The camera still handles messages: an unsigned pairing request gets its bye."""
    byes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    original = server.router.received
    probe = "p" * 20

    def spy(peer: Any, data: str | bytes, now: float) -> list[Any]:
        if json.loads(data).get("session_id") == probe:
            byes.put_nowait(json.loads(data))
        return original(peer, data, now)

    server.router.received = spy  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(scaled(30)):  # generous: a loaded machine is slow
            await camera.registered.wait()
            await server._send(server.camera_peer(camera.device_id),
                               json.dumps({**_pair_base("probe"), "session_id": probe}))
            assert (await byes.get())["type"] == "bye"
    finally:
        server.router.received = original  # type: ignore[method-assign]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frames=st.lists(hostile_text_frames(), min_size=1, max_size=5))
def test_hostile_frames_from_the_server_never_take_the_camera_offline(
    live: tuple[Background, Stack, HostileRendezvous, CameraAgent], frames: list[str]
) -> None:
    bg, _stack, server, camera = live

    async def attack() -> None:
        peer = server.camera_peer(camera.device_id)
        for frame in frames:
            await super(HostileRendezvous, server)._send(peer, frame)
        await _probe(server, camera)
        assert camera.link.facts().running

    bg.run(attack())


def test_after_the_hostile_run_a_paired_viewer_still_gets_video(
    live: tuple[Background, Stack, HostileRendezvous, CameraAgent],
) -> None:
    bg, stack, server, camera = live

    async def attack_then_watch() -> int:
        peer = server.camera_peer(camera.device_id)
        for name in ("\ud800", "\x00", "x" * 60):
            await super(HostileRendezvous, server)._send(peer, json.dumps(_pair_base(name)))
        await super(HostileRendezvous, server)._send(peer, "[" * 60_000 + "]" * 60_000)
        stats = await view(stack.link(camera), seconds=1.5)
        return stats.frames

    assert bg.run(attack_then_watch()) > 10
    assert camera.registered.is_set() and camera.link.reconnects == 0


async def test_hostile_values_from_a_viewer_through_the_real_rendezvous(stack: Stack) -> None:
    camera = await stack.camera()
    frames = [
        # A lone surrogate in the pairing name: one message once ended the camera's link.
        json.dumps({**_pair_base("\ud800"), "device_id": camera.device_id}),
        json.dumps({**_pair_base("a\x00b"), "device_id": camera.device_id}),
        json.dumps({**_pair_base("n" * 64), "device_id": camera.device_id,
                    "session_id": "q" * 20}),
        "[" * 60_000 + "]" * 60_000,
        json.dumps({"type": "offer", "device_id": camera.device_id, "session_id": "r" * 20,
                    "sdp": "v=0\r\n\ud800", "viewer_key": "A" * 122, "timestamp": 1,
                    "signature": "A" * 86}),
    ]
    async with aiohttp.ClientSession() as http, http.ws_connect(
        stack.url + "/ws/viewer"
    ) as ws:
        await ws.receive()  # hello
        for frame in frames:
            await ws.send_str(frame)
        await asyncio.sleep(0.5)
    stats = await view(stack.link(camera), seconds=1.5)
    assert stats.frames > 10
    assert camera.registered.is_set() and camera.link.reconnects == 0


async def test_a_link_killed_from_inside_is_registered_again_within_5_s(stack: Stack) -> None:
    camera = await stack.camera()
    original = camera.core.received
    calls = 0

    def explode_once(data: str | bytes, now: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected into the link")
        return original(data, now)

    camera.core.received = explode_once  # type: ignore[method-assign]
    await server_nudge(stack, camera)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(scaled(5)):
        while not camera.registered.is_set() or calls < 1:
            await asyncio.sleep(0.02)
    assert loop.time() - started < 5.0
    assert camera.link.internal_failures == 0 and camera.reconnects >= 1
    # And the task itself cancelled from inside: the supervisor starts a new one.
    task = camera.link._task
    assert task is not None
    task.cancel()
    started = loop.time()
    async with asyncio.timeout(scaled(5)):
        while not (camera.link_ladder.recoveries and camera.link.facts().running
                   and camera.registered.is_set()):
            await asyncio.sleep(0.02)
    assert camera.link_ladder.recoveries == 1 and task.cancelled()
    assert (await view(stack.link(camera), seconds=1)).frames > 10


async def server_nudge(stack: Stack, camera: CameraAgent) -> None:
    """Make the rendezvous send the camera one frame (a viewer's bye for no session)."""
    peer = stack.rendezvous.router.cameras[camera.device_id]
    await stack.rendezvous._send(peer, json.dumps({"type": "bye", "session_id": "z" * 20}))


class NotifyListener:
    """The systemd notify socket: an AF_UNIX datagram socket the agent writes to."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.messages: list[tuple[float, str]] = []

    def drain(self, now: float) -> None:
        while True:
            try:
                self.messages.append((now, self.sock.recv(4096).decode()))
            except BlockingIOError:
                return


async def test_a_link_that_cannot_come_back_stops_the_watchdog(
    stack: Stack, tmp_path: Path
) -> None:
    listener = NotifyListener(tmp_path / "notify")
    ladder = LinkLadder(failures=2, settle=1.0)
    camera = await stack.camera(agent_options={
        "notifier": Notifier(str(listener.path)), "watchdog_interval": 0.2,
        "link_ladder": ladder})
    loop = asyncio.get_running_loop()
    # From now on every registration fails inside the camera's own code.
    def broken(url: str, nonce: str) -> dict[str, str]:
        raise KeyError("injected: the registration code is broken")

    camera.gatekeeper.registration = broken  # type: ignore[method-assign]
    await camera.link.restart()
    async with asyncio.timeout(scaled(30)):
        while not ladder.gave_up:
            listener.drain(loop.time())
            await asyncio.sleep(0.1)
    listener.drain(loop.time())
    pings_before = sum("WATCHDOG=1" in m for _, m in listener.messages)
    await asyncio.sleep(1.0)  # five watchdog intervals
    listener.drain(loop.time())
    pings_after = sum("WATCHDOG=1" in m for _, m in listener.messages)
    assert pings_before > 0 and pings_after == pings_before  # no ping once it gave up
    assert any("cannot recover" in m for _, m in listener.messages)
    assert camera.rebuilds == 1 and ladder.recoveries == 3
    assert camera.status().rendezvous.state == "fault"
    assert not camera.failed.is_set()  # under a watchdog: systemd does the restart


async def test_without_a_watchdog_a_link_that_cannot_come_back_exits(stack: Stack) -> None:
    ladder = LinkLadder(failures=2, settle=0.5)
    camera = await stack.camera(agent_options={"link_ladder": ladder})

    def broken(url: str, nonce: str) -> dict[str, str]:
        raise KeyError("injected")

    camera.gatekeeper.registration = broken  # type: ignore[method-assign]
    await camera.link.restart()
    async with asyncio.timeout(scaled(30)):
        await camera.failed.wait()
    assert camera.exit_code == 75


async def test_offers_go_on_at_the_first_stun_answer_not_after_the_whole_nat_check(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import camera.agent
    from services.stun.server import run_stun_server

    stun = await run_stun_server("127.0.0.1", None, 0, 0, tcp=False)
    checking, never = asyncio.Event(), asyncio.Event()

    async def slow_natcheck(server: Any, **_: Any) -> Any:  # a filtering NAT's dropped probes
        checking.set()
        await never.wait()

    monkeypatch.setattr(camera.agent, "natcheck", slow_natcheck)
    host, port = stun.addresses[(0, 0)]
    try:
        agent = await stack.camera(ice_servers=[{"urls": [f"stun:{host}:{port}"]}])
        agent.core.nat_wait = 600.0  # no waiting out the check: only the STUN answer counts
        await asyncio.wait_for(checking.wait(), scaled(5))
        stats = await asyncio.wait_for(view(stack.link(agent), seconds=0.5), scaled(20))
        assert stats.frames > 0 and agent.nat_report is None  # the check is still running
    finally:
        await stun.close()
