"""The whole device from its config: LED, button, pan/tilt head and serial console.

The layer below each part is faked (the hardware sits behind an injected seam): gpiozero's mock pins
(``gpio_mock = true``), pyserial's ``loop://`` for the head and a pty pair for
the console. The agent, the rendezvous and the viewer are real.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from camera.client.viewer import view
from camera.config import load_camera_config
from camera.device import Device
from hardware.led import LedState
from tests.conftest import Stack, scaled


@pytest.fixture
async def device(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[Device, int]]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    config_file = tmp_path / "camera.toml"
    config_file.write_text(f"""
[camera]
rendezvous = "{stack.url}"
state_dir = "{tmp_path / 'state'}"
control_socket = "/tmp/pc-hw-{os.getpid()}.sock"

[video]
width = 320
height = 240

[hardware]
gpio_mock = true
led_pin = 17
button_pin = 27
long_press = 1.0
ptz_port = "loop://"
console_port = "{os.ttyname(slave)}"
""")
    config = load_camera_config(config_file)
    dev = Device(config)
    agent = await dev.start()
    agent.acl.add(stack.viewer.key, stack.viewer.name)
    try:
        yield dev, master
    finally:
        await dev.close()
        os.close(master)
        os.close(slave)


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def console(master: int, line: str, expect: str, timeout: float = 5.0) -> str:
    os.write(master, line.encode() + b"\r")
    seen = b""
    deadline = time.monotonic() + scaled(timeout)
    while expect.encode() not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {expect!r} in {seen!r}")
        try:
            seen += os.read(master, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.05)
    return seen.decode(errors="replace")


async def test_button_led_console_and_head_from_the_config(
    device: tuple[Device, int], stack: Stack
) -> None:
    dev, master = device
    agent = dev.agent
    assert agent is not None and dev.led is not None and dev.button is not None
    assert dev.console is not None and agent.ptz.head is not None
    await until(lambda: dev.led.state is LedState.IDLE)

    # The console answers with the same state the LED shows.
    out = await console(master, "status", "viewers:")
    assert "state: idle" in out and agent.device_id in out

    # A short press opens a pairing window: the LED says so, the console too.
    pin = dev.button.device.pin
    pin.drive_low()
    await asyncio.sleep(0.15)
    pin.drive_high()
    await until(lambda: dev.led.state is LedState.PAIRING)
    assert agent.pairing.is_open(include_reusable=False)
    out = await console(master, "status", "viewers:")
    assert "state: pairing" in out
    agent.pairing.close_all()

    # A viewer watches and turns the head.
    watching = asyncio.ensure_future(view(stack.link(agent), seconds=3))
    await until(lambda: dev.led.state is LedState.STREAMING_DIRECT)
    assert (await watching).frames > 20

    # A long press: the LED flickers "release to erase", the release erases.
    await until(lambda: dev.led.state is LedState.IDLE)
    pin.drive_low()
    await until(lambda: dev.led.state is LedState.RESET, timeout=5)
    assert stack.viewer.key in agent.acl  # nothing erased while held
    pin.drive_high()
    await until(lambda: not agent.acl.viewers())
    await until(lambda: dev.led.state is LedState.IDLE)

    # The console's pairing link pairs a new viewer with this camera.
    out = await console(master, "pair", "pairing link:")
    link = out.split("pairing link:", 1)[1].split()[0]
    assert f"#device={agent.device_id}&pair=" in link


async def test_missing_hardware_is_logged_and_the_camera_streams(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_camera_config(None, None, {
        "rendezvous": stack.url, "state_dir": tmp_path / "s", "width": 320, "height": 240,
        "gpio_mock": True, "led_pin": 17, "ptz_port": "/dev/does-not-exist",
        "console_port": "/dev/does-not-exist-either",
        "control_socket": Path(f"/tmp/pc-hw2-{os.getpid()}.sock"),
    })
    dev = Device(config)
    try:
        agent = await dev.start()
        agent.acl.add(stack.viewer.key, stack.viewer.name)
        assert agent.ptz.head is None and dev.console is None
        assert "serial console on /dev/does-not-exist-either" in caplog.text
        stats = await view(stack.link(agent), seconds=1.5)
        assert stats.frames > 10
    finally:
        await dev.close()
