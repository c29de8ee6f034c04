"""pin_factory(): gpiozero's default on a Pi, mock pins elsewhere; the hardware error root.

This machine has no GPIO, so "a Pi" is gpiozero's ``Device.pin_factory`` already
set (what ``ensure_pin_factory`` leaves behind on a Pi), and "no GPIO" is either
the real failure here or a patched ``_default_pin_factory`` raising BadPinFactory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.exc import BadPinFactory
from gpiozero.pins.mock import MockFactory, MockPWMPin

import hardware.gpio
from hardware.button import PairingButton
from hardware.errors import HardwareError
from hardware.gpio import pin_factory
from hardware.led import LedState, StatusLed
from hardware.pelco_d import MalformedFrame, PelcoDError, PortClosed
from hardware.press import BadTiming


@pytest.fixture(autouse=True)
def fresh_gpiozero(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No default factory chosen yet and no warning logged yet, undone afterwards."""
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setattr(hardware.gpio, "_warned", False)
    yield


def no_gpio() -> None:
    raise BadPinFactory("Unable to load any default pin factory!")


def test_mock_requested_gives_a_pwm_capable_mock_factory() -> None:
    factory = pin_factory(mock=True)
    assert isinstance(factory, MockFactory)
    assert factory.pin_class is MockPWMPin
    assert Device.pin_factory is None  # gpiozero's default was not even tried


def test_on_a_pi_the_default_factory_is_used(caplog: pytest.LogCaptureFixture) -> None:
    default = MockFactory()  # stands in for the LGPIOFactory gpiozero made
    Device.pin_factory = default
    with caplog.at_level(logging.WARNING, logger="hardware.gpio"):
        assert pin_factory(mock=False) is None
    assert Device.pin_factory is default
    assert caplog.records == []


def test_without_gpio_falls_back_to_mock_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Device, "_default_pin_factory", staticmethod(no_gpio))
    with caplog.at_level(logging.WARNING, logger="hardware.gpio"):
        first = pin_factory(mock=False)
        second = pin_factory(mock=False)
    assert isinstance(first, MockFactory) and isinstance(second, MockFactory)
    assert first.pin_class is MockPWMPin
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "using mock pins" in warnings[0].getMessage()


def test_this_machine_really_has_no_gpio(caplog: pytest.LogCaptureFixture) -> None:
    # gpiozero's own search (lgpio, RPi.GPIO, pigpio, native) fails here; its
    # per-driver fallback warnings are folded into our one log line.
    with caplog.at_level(logging.WARNING, logger="hardware.gpio"):
        factory = pin_factory(mock=False)
    if Device.pin_factory is not None:
        pytest.skip(f"this machine has GPIO ({Device.pin_factory!r})")
    assert isinstance(factory, MockFactory)
    assert "Falling back from" in caplog.text


async def test_led_and_button_share_the_mock_factory() -> None:
    factory = pin_factory(mock=True)
    presses: list[str] = []
    led = StatusLed(17, pin_factory=factory)  # PWM: needs MockPWMPin
    button = PairingButton(
        27,
        loop=asyncio.get_running_loop(),
        on_short=lambda: presses.append("short"),
        on_long_armed=lambda: led.set(LedState.RESET),
        on_long=lambda: presses.append("long"),
        on_cancel=lambda: presses.append("cancel"),
        bounce=0.01,
        short_max=0.05,
        long_press=0.1,
        pin_factory=factory,
    )
    try:
        led.set(LedState.IDLE)
        assert led.device.pin.state == pytest.approx(0.2)
        pin = factory.pin(27)
        await asyncio.to_thread(pin.drive_low)
        async with asyncio.timeout(2.0):
            while led.state is not LedState.RESET:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(pin.drive_high)
        async with asyncio.timeout(2.0):
            while not presses:
                await asyncio.sleep(0.01)
        assert presses == ["long"]
    finally:
        button.close()
        led.close()


@pytest.mark.parametrize(
    ("error", "builtin"),
    [(BadTiming, ValueError), (MalformedFrame, ValueError), (PortClosed, RuntimeError)],
)
def test_hardware_errors_share_one_root(error: type[Exception], builtin: type) -> None:
    assert issubclass(error, HardwareError) and issubclass(error, builtin)
    assert issubclass(PelcoDError, HardwareError)
