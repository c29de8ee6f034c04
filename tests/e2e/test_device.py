"""The device around the agent: systemd notifications, the recovery ladder, the LED.

Real rendezvous, real agent, real aiortc viewers, a real AF_UNIX datagram
socket standing in for systemd's notify socket. The source is the test pattern
behind a gate (the layer below): closing the gate is a camera that stops
delivering frames.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from camera.agent import CameraAgent
from camera.client.viewer import SessionEnded, view
from camera.config import CameraConfig
from camera.frames import EncodedFrame, Layer
from camera.health import EXIT_STUCK
from camera.identity import DeviceIdentity
from camera.sdnotify import Notifier
from camera.sources.base import FrameSink, Source
from camera.sources.testpattern import TestPatternSource
from hardware.led import PATTERNS, LedState, StatusLed
from services.rendezvous import start_rendezvous
from tests.conftest import SMALL_VIDEO, Stack, scaled
from tests.hardware.test_led import assert_matches, segments


class GatedSource(Source):
    """The test pattern, passed on only while ``gate`` is set (a camera that can hang)."""

    name = "gated"

    def __init__(self, gate: threading.Event) -> None:
        self.inner = TestPatternSource(SMALL_VIDEO)
        self.gate = gate
        self.started = 0

    async def start(self, sink: FrameSink) -> None:
        self.started += 1

        def gated(frame: EncodedFrame) -> None:
            if self.gate.is_set():
                sink(frame)

        await self.inner.start(gated)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.inner.layers

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        self.inner.request_keyframe(layer)

    async def close(self) -> None:
        await self.inner.close()


def flowing() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


class NotifyListener:
    """systemd's side of the notify protocol: records (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, key: str) -> list[float]:
        return [t for t, m in self.messages if key in m.split("\n")]

    async def wait_for(self, key: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            found = self.times(key)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {key} in {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_ready_waits_for_frames_and_registration_watchdog_only_for_frames(
    stack: Stack, systemd: NotifyListener
) -> None:
    port = free_port()  # the rendezvous is not up yet
    gate = flowing()
    config = CameraConfig(
        rendezvous=f"ws://127.0.0.1:{port}", state_dir=stack.tmp / "cam", video=SMALL_VIDEO,
        backoff_base=0.1, backoff_cap=0.5, frame_stall=1.0, source_restarts=0,
    )
    agent = CameraAgent(config, GatedSource(gate), DeviceIdentity.load_or_create(config.state_dir),
                        notifier=Notifier(systemd.path), watchdog_interval=0.25)
    stack.agents.append(agent)
    await agent.start()
    first_watchdog = await systemd.wait_for("WATCHDOG=1")
    await asyncio.sleep(scaled(1.0))
    assert systemd.times("READY=1") == []  # frames, but no registration: not ready
    assert len(systemd.times("WATCHDOG=1")) >= 2  # yet healthy: frames flow, loop turns
    _server, runner, _port = await start_rendezvous("127.0.0.1", port)
    try:
        ready = await systemd.wait_for("READY=1")
        assert ready > first_watchdog and agent.registered.is_set()
        # Frames stop: the watchdog pings stop with them (and the LED-less agent says why).
        gate.clear()
        stopped_at = time.monotonic()
        await asyncio.sleep(scaled(2.0))
        late = [t for t in systemd.times("WATCHDOG=1") if t > stopped_at + 1.0]
        assert late == [], "WATCHDOG=1 went on after frames stopped"
        assert agent.failed.is_set() and agent.exit_code == EXIT_STUCK  # no restarts set
        await agent.close()
        # The listener thread records what the agent sent a moment later: wait for it.
        await systemd.wait_for("STOPPING=1")
    finally:
        await agent.close()
        await runner.cleanup()


async def test_watchdog_pauses_while_the_event_loop_is_blocked(
    stack: Stack, systemd: NotifyListener
) -> None:
    await stack.camera(
        agent_options={"notifier": Notifier(systemd.path), "watchdog_interval": 0.25}
    )
    await systemd.wait_for("READY=1")
    await asyncio.sleep(scaled(0.6))
    blocked_from = time.monotonic()
    time.sleep(1.5)  # a blocking call on the loop: nothing may claim the camera is fine
    blocked_until = time.monotonic()
    await asyncio.sleep(scaled(1.0))
    pings = systemd.times("WATCHDOG=1")
    # The listener thread kept receiving during the block: any ping then would be a lie.
    during = [t for t in pings if blocked_from + 0.05 < t < blocked_until - 0.05]
    assert during == [], pings
    assert any(t < blocked_from for t in pings) and any(t > blocked_until for t in pings)


async def test_stuck_source_is_restarted_then_the_agent_exits_for_systemd(
    stack: Stack, systemd: NotifyListener
) -> None:
    made: list[GatedSource] = []

    def stuck_again() -> Source:
        made.append(GatedSource(threading.Event()))  # a camera that never delivers
        return made[-1]

    gate = flowing()
    led = StatusLed.mock(pwm=True)
    agent = await stack.camera(
        source=GatedSource(gate),
        frame_stall=0.6,
        source_restarts=2,
        agent_options={"notifier": Notifier(systemd.path), "watchdog_interval": 0.25,
                       "source_factory": stuck_again, "led": led},
    )
    try:
        await systemd.wait_for("READY=1")
        gate.clear()
        await asyncio.wait_for(agent.failed.wait(), scaled(10))
        assert agent.exit_code == EXIT_STUCK
        assert len(made) == 2 and all(s.started == 1 for s in made)  # two restarts, then out
        assert agent.source is made[-1]
        assert led.state is LedState.FATAL
        statuses = [m for _t, m in systemd.messages if "restarting the source" in m]
        assert len(statuses) == 2, systemd.messages
    finally:
        await agent.close()
        led.close()


async def test_a_restart_that_works_brings_frames_and_the_watchdog_back(
    stack: Stack, systemd: NotifyListener
) -> None:
    gate = flowing()
    agent = await stack.camera(
        source=GatedSource(gate),
        frame_stall=0.6,
        source_restarts=2,
        agent_options={"notifier": Notifier(systemd.path), "watchdog_interval": 0.25,
                       "source_factory": lambda: GatedSource(flowing())},
    )
    await systemd.wait_for("READY=1")
    gate.clear()
    for _ in range(int(scaled(100))):
        if agent.source_restarts:
            break
        await asyncio.sleep(0.1)
    restarted = time.monotonic()
    assert agent.source_restarts == 1
    await asyncio.sleep(scaled(1.5))
    assert [t for t in systemd.times("WATCHDOG=1") if t > restarted]
    assert not agent.failed.is_set() and agent.status().source.fps > 10
    # A viewer joining after the restart gets the new source's picture.
    stats = await view(stack.link(agent), seconds=1.5)
    assert stats.frames > 10


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def pattern_seen(led: StatusLed, state: LedState, seconds: float) -> None:
    """The pin history over ``seconds`` matches ``state``'s pattern."""
    pin = led.device.pin
    pin.clear_states()
    await asyncio.sleep(seconds)
    history = list(pin.states)
    pattern = PATTERNS[state]
    if pattern.solid:
        assert float(history[-1].state) == pytest.approx(pattern.brightness), history
        return
    measured = segments(history)[:-1] if len(history) > 2 else []
    assert len(measured) >= 2, history
    assert_matches(measured, pattern)


async def test_led_follows_the_agent_through_its_states(stack: Stack) -> None:
    led = StatusLed.mock(pwm=True)
    shown: list[LedState] = []
    real_set = led.set

    def record(state: LedState) -> None:
        if not shown or shown[-1] is not state:
            shown.append(state)
        real_set(state)

    led.set = record  # type: ignore[method-assign]
    gate = flowing()
    agent = await stack.camera(
        source=GatedSource(gate), frame_stall=0.8, source_restarts=1, wait_registered=False,
        agent_options={"led": led, "source_factory": lambda: GatedSource(threading.Event())},
    )
    try:
        await until(lambda: led.state is LedState.IDLE)
        assert shown[0] is LedState.BOOTING and LedState.IDLE in shown
        await pattern_seen(led, LedState.IDLE, 0.3)

        watching = asyncio.ensure_future(view(stack.link(agent), seconds=6))
        await until(lambda: led.state is LedState.STREAMING_DIRECT)
        await pattern_seen(led, LedState.STREAMING_DIRECT, 0.3)

        link, _ttl = agent.open_pairing_link(60)
        assert agent.device_id in link
        await until(lambda: led.state is LedState.PAIRING)
        await pattern_seen(led, LedState.PAIRING, 1.0)
        agent.pairing.close_all()

        agent.button_armed()
        assert led.state is LedState.RESET
        await pattern_seen(led, LedState.RESET, 0.5)
        agent.button_cancel()
        await until(lambda: led.state is LedState.STREAMING_DIRECT)
        assert (await watching).frames > 30
        await until(lambda: led.state is LedState.IDLE)

        gate.clear()  # the camera stops delivering
        await until(lambda: led.state is LedState.CAMERA_FAULT)  # while it is restarted
        await pattern_seen(led, LedState.CAMERA_FAULT, 0.7)
        await until(lambda: led.state is LedState.FATAL)  # the restart did not help
        await pattern_seen(led, LedState.FATAL, 1.2)
        order = [LedState.BOOTING, LedState.IDLE, LedState.STREAMING_DIRECT, LedState.PAIRING,
                 LedState.RESET, LedState.STREAMING_DIRECT, LedState.IDLE,
                 LedState.CAMERA_FAULT, LedState.FATAL]
        it = iter(shown)
        assert all(state in it for state in order), shown  # in this order (others between)
    finally:
        await agent.close()
        led.close()


async def test_long_press_forgets_every_viewer_and_ends_their_sessions(stack: Stack) -> None:
    agent = await stack.camera()
    watching = asyncio.ensure_future(view(stack.link(agent), seconds=20))
    await until(lambda: any(s.connected.is_set() for s in agent.sessions.values()))
    await asyncio.sleep(scaled(1.0))  # watching, not only connected
    agent.button_armed()
    agent.button_long()
    assert agent.acl.viewers() == [] and not agent.reset_armed
    with pytest.raises(SessionEnded) as ended:  # the camera ended it: not a clean finish
        await asyncio.wait_for(watching, scaled(10))
    assert ended.value.stats is not None and ended.value.stats.frames > 0
    await until(lambda: not agent.sessions)


async def test_registering_while_the_rendezvous_refuses(tmp_path: Path) -> None:
    """Network up, rendezvous down: "registering" (slow blink), not "no network"."""
    led = StatusLed.mock(pwm=True)
    config = CameraConfig(rendezvous=f"ws://127.0.0.1:{free_port()}", state_dir=tmp_path / "c",
                          video=SMALL_VIDEO, backoff_base=0.1, backoff_cap=0.3)
    agent = CameraAgent(config, GatedSource(flowing()),
                        DeviceIdentity.load_or_create(config.state_dir), led=led)
    await agent.start()
    try:
        await until(lambda: agent.reconnects >= 2 and led.state is LedState.REGISTERING)
        assert not agent.network_down
        await pattern_seen(led, LedState.REGISTERING, 2.2)
    finally:
        await agent.close()
        led.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the camera in a network "
                    "namespace with no network")
async def test_no_network_in_a_namespace_with_only_loopback(tmp_path: Path) -> None:
    """A camera process in a namespace without routes: status (and LED) say no network."""
    ns = f"pcnonet{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sock = Path(f"/tmp/pc-nonet-{os.getpid()}.sock")
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "camera.cli", "camera",
             "--rendezvous", "ws://203.0.113.1:8080", "--state-dir", str(tmp_path / "c"),
             "--width", "320", "--height", "240"],
            env={**os.environ, "PEERCAM_CONTROL_SOCKET": str(sock),
                 "PEERCAM_LOG_LEVEL": "WARNING"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        from camera.control import ControlError, request

        status: dict[str, object] = {}
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:
            try:
                status = (await request(sock, "status"))["status"]
            except ControlError:
                status = {}
            if status.get("state") == "no_network":
                break
            await asyncio.sleep(0.2)
        assert status.get("state") == "no_network", status
        link = status["rendezvous"]
        assert isinstance(link, dict) and link["last_error"]
        assert link == {"url": "ws://203.0.113.1:8080", "state": "no-network",
                        "connected": False, "reconnects": link["reconnects"],
                        "network_down": True, "last_error": link["last_error"],
                        "recoveries": 0}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the camera in a network "
                    "namespace whose link the test takes down")
async def test_a_network_that_comes_back_is_used_at_once_not_after_the_backoff(
    tmp_path: Path,
) -> None:
    """The camera's link is down long enough for its backoff to reach many seconds;
    when the link returns, the kernel's notice (netlink) makes it reconnect at once."""
    from camera.control import ControlError, request

    ns, host_if, cam_if = f"pcflap{os.getpid()}", f"pfh{os.getpid() % 10000}", "eth0"
    sock = Path(f"/tmp/pc-flap-{os.getpid()}.sock")
    run = lambda *cmd: subprocess.run(list(cmd), check=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    proc = None
    runner = None
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", cam_if, "netns", ns)
        run("ip", "addr", "add", "10.77.0.1/24", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", "10.77.0.2/24", "dev", cam_if)
        run("ip", "-n", ns, "link", "set", cam_if, "up")
        run("ip", "-n", ns, "route", "add", "default", "via", "10.77.0.1")
        _server, runner, port = await start_rendezvous("10.77.0.1", 0)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "camera.cli", "camera",
             "--rendezvous", f"ws://10.77.0.1:{port}", "--state-dir", str(tmp_path / "c"),
             "--width", "320", "--height", "240"],
            env={**os.environ, "PEERCAM_CONTROL_SOCKET": str(sock),
                 "PEERCAM_LOG_LEVEL": "INFO"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        async def link() -> dict[str, Any]:
            try:
                reply = await request(sock, "status")
            except ControlError:
                return {}
            return dict(reply["status"]["rendezvous"])

        async def wait_for(check: Callable[[dict[str, Any]], bool], seconds: float) -> float:
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < scaled(seconds):
                if check(await link()):
                    return loop.time() - start
                await asyncio.sleep(0.05)
            raise AssertionError(f"not within {seconds} s: {await link()}")

        await wait_for(lambda s: s.get("connected") is True, 20)
        run("ip", "-n", ns, "link", "set", cam_if, "down")  # the camera's uplink drops
        await wait_for(lambda s: s.get("network_down") is True, 3)
        await asyncio.sleep(12)  # long enough for the backoff to reach 8-16 s
        before = (await link())["reconnects"]
        run("ip", "-n", ns, "link", "set", cam_if, "up")
        run("ip", "-n", ns, "route", "add", "default", "via", "10.77.0.1")
        took = await wait_for(lambda s: s.get("connected") is True, 10)
        assert took < scaled(2.0), f"registered {took:.1f} s after the link came back"
        assert before >= 4  # it really was deep in its backoff
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        if runner is not None:
            await runner.cleanup()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", host_if], check=False)
