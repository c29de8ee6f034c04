"""PairingButton on gpiozero's mock pins, driven from another thread.

The layer below is gpiozero's ``MockFactory``: a "finger" thread drives the mock
pin (``drive_low()`` presses a pull-up button), and gpiozero calls back on that
thread, as its own callback thread does on a Pi. The callbacks must arrive on
the loop thread. Timings are parameters, so long presses here last 0.5 s (the
10 s default is covered with synthetic time in test_press.py). Waits are
timeouts on events, scaled by PEERCAM_TEST_TIMEOUT_FACTOR; the fixed sleeps
only give a wrong extra event the time to show up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPin

from hardware.button import PairingButton
from hardware.press import BadTiming

FACTOR = float(os.environ.get("PEERCAM_TEST_TIMEOUT_FACTOR", "1"))
PIN = 27
QUIET = 0.2  # long enough for a stray event (bounce is 0.05 s) to arrive


class Recorder:
    """The four callbacks: which fired, in order, and on which thread."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.threads: set[threading.Thread] = set()
        self.loop_thread = threading.current_thread()
        self._changed = asyncio.Event()
        self.fail_on: str | None = None

    def callbacks(self) -> dict[str, Callable[[], None]]:
        names = ("short", "long_armed", "long", "cancel")
        return {f"on_{name}": self._record(name) for name in names}

    def _record(self, name: str) -> Callable[[], None]:
        def record() -> None:
            self.events.append(name)
            self.threads.add(threading.current_thread())
            self._changed.set()
            if name == self.fail_on:
                raise RuntimeError(f"{name} callback broke")

        return record

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout * FACTOR):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

    async def settled(self) -> list[str]:
        """The events once nothing more has arrived for QUIET seconds."""
        await asyncio.sleep(QUIET * FACTOR)
        return self.events

    def on_loop_thread(self) -> bool:
        return self.threads == {self.loop_thread}


class Finger:
    """Presses a mock pin from a thread of its own (``pull_up``: pressed is low)."""

    def __init__(self, pin: Any, pull_up: bool = True) -> None:
        self.pin = pin
        self.pull_up = pull_up
        self.threads: set[threading.Thread] = set()

    def _set(self, pressed: bool) -> None:
        self.threads.add(threading.current_thread())
        if pressed != self.pull_up:
            self.pin.drive_high()
        else:
            self.pin.drive_low()

    def _bounce(self, pressed: bool, toggles: int) -> None:
        # Contact bounce: the new level, then back and forth ~1 ms apart, ending at it.
        for i in range(2 * toggles + 1):
            self._set(pressed if i % 2 == 0 else not pressed)
            time.sleep(0.001)

    async def press(self, bounce: int = 0) -> None:
        await asyncio.to_thread(self._bounce, True, bounce)

    async def release(self, bounce: int = 0) -> None:
        await asyncio.to_thread(self._bounce, False, bounce)

    async def glitch(self) -> None:
        """Pressed and released again at once, in one thread call (microseconds)."""
        await asyncio.to_thread(lambda: (self._set(True), self._set(False)))

    async def tap(self, hold: float, bounce: int = 0) -> None:
        await self.press(bounce)
        await asyncio.sleep(hold)
        await self.release(bounce)


class HeldAtStartup(MockPin):
    """A pull-up button already held: the pull resistor cannot raise the pin.

    (A plain MockPin drives itself to its pull when the pull is set.)
    """

    def _set_pull(self, value: str) -> None:
        self._pull = value


Make = Callable[..., tuple[PairingButton, Recorder]]


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
async def make(factory: MockFactory) -> AsyncIterator[Make]:
    buttons: list[PairingButton] = []

    def make(**kwargs: Any) -> tuple[PairingButton, Recorder]:
        recorder = Recorder()
        button = PairingButton(
            PIN,
            loop=asyncio.get_running_loop(),
            pin_factory=factory,
            **recorder.callbacks(),
            **kwargs,
        )
        buttons.append(button)
        return button, recorder

    yield make
    for button in buttons:
        button.close()


async def test_short_press_calls_on_short_once_on_the_loop_thread(
    make: Make, factory: MockFactory
) -> None:
    button, recorder = make()
    finger = Finger(factory.pin(PIN))
    await finger.tap(0.15)
    await recorder.wait_for(1)
    assert await recorder.settled() == ["short"]
    assert recorder.on_loop_thread()
    # The edges really came from another thread: the hand-off did the crossing.
    assert recorder.loop_thread not in finger.threads
    assert not button.pressed
    # Debounced here, not by gpiozero (whose mock pins ignore bounce_time).
    assert button.device.pin.bounce is None


async def test_bounce_on_press_and_release_is_one_short_press(
    make: Make, factory: MockFactory
) -> None:
    button, recorder = make(bounce=0.05 * FACTOR)
    pin = factory.pin(PIN)
    await Finger(pin).tap(0.3, bounce=4)
    await recorder.wait_for(1)
    assert await recorder.settled() == ["short"]
    # 9 edges at the press and 9 at the release reached the pin (and gpiozero).
    assert len(pin.states) >= 1 + 18
    assert recorder.on_loop_thread()


async def test_long_press_arms_while_held_then_commits_on_release(
    make: Make, factory: MockFactory
) -> None:
    button, recorder = make(short_max=0.2, long_press=0.5)
    finger = Finger(factory.pin(PIN))
    pressed_at = time.monotonic()
    await finger.press(bounce=3)
    await recorder.wait_for(1)
    armed_after = time.monotonic() - pressed_at
    assert recorder.events == ["long_armed"]
    assert armed_after >= 0.5
    assert button.pressed
    # Holding on commits nothing: release is what commits.
    assert await recorder.settled() == ["long_armed"]
    await finger.release(bounce=3)
    await recorder.wait_for(2)
    assert await recorder.settled() == ["long_armed", "long"]
    assert recorder.on_loop_thread()


async def test_release_between_short_and_long_cancels(make: Make, factory: MockFactory) -> None:
    button, recorder = make(short_max=0.15, long_press=2.0 * FACTOR)
    await Finger(factory.pin(PIN)).tap(0.4, bounce=2)
    await recorder.wait_for(1)
    assert await recorder.settled() == ["cancel"]
    assert recorder.on_loop_thread()


async def test_active_high_wiring(make: Make, factory: MockFactory) -> None:
    button, recorder = make(pull_up=False)
    pin = factory.pin(PIN)
    assert pin.pull == "down" and not pin.state  # released reads low
    finger = Finger(pin, pull_up=False)
    await finger.tap(0.15, bounce=2)
    await recorder.wait_for(1)
    assert await recorder.settled() == ["short"]
    # Pressed is high: holding it high arms a long press.
    button.close()
    button, recorder = make(pull_up=False, short_max=0.1, long_press=0.3)
    await finger.press()
    await recorder.wait_for(1)
    assert recorder.events == ["long_armed"] and button.pressed


async def test_a_press_shorter_than_bounce_is_ignored(make: Make, factory: MockFactory) -> None:
    button, recorder = make(bounce=0.1)
    finger = Finger(factory.pin(PIN))
    await finger.glitch()
    await asyncio.sleep(0.3 * FACTOR)
    assert recorder.events == [] and not button.pressed
    # The button still works afterwards (and the wait above was long enough to see it).
    await finger.tap(0.25)
    await recorder.wait_for(1)
    assert recorder.events == ["short"]


async def test_a_press_held_at_startup_is_not_classified(make: Make, factory: MockFactory) -> None:
    finger = Finger(factory.pin(PIN, pin_class=HeldAtStartup))
    button, recorder = make(short_max=0.4, long_press=0.5)
    assert button.pressed and button.device.pin.pull == "up"
    await asyncio.sleep(0.6)  # past long_press: still nothing armed
    await finger.release()
    assert await recorder.settled() == []
    await finger.tap(0.05)
    await recorder.wait_for(1)
    assert recorder.events == ["short"]


async def test_close_twice_is_safe_and_releases_the_pin(make: Make, factory: MockFactory) -> None:
    button, recorder = make()
    pin = factory.pin(PIN)
    with pytest.raises(GPIOPinInUse):
        make()
    button.close()
    button.close()
    assert button.closed
    assert pin.when_changed is None and pin.function == "input"
    await Finger(pin).tap(0.1)
    assert await recorder.settled() == []
    # Released: the pin can be claimed again.
    again, _ = make()
    again.close()


async def test_close_while_held_cancels_the_armed_timer(make: Make, factory: MockFactory) -> None:
    button, recorder = make(short_max=0.1, long_press=0.5)
    finger = Finger(factory.pin(PIN))
    await finger.press()
    await asyncio.sleep(0.1)
    assert button.pressed
    button.close()
    await asyncio.sleep(0.5)  # past long_press
    await finger.release()
    assert await recorder.settled() == []


async def test_a_failing_callback_is_logged_and_the_next_still_fires(
    make: Make, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    button, recorder = make(short_max=0.1, long_press=0.3)
    recorder.fail_on = "long_armed"
    finger = Finger(factory.pin(PIN))
    with caplog.at_level(logging.ERROR, logger="hardware.button"):
        await finger.press()
        await recorder.wait_for(1)
        await finger.release()
        await recorder.wait_for(2)
    assert recorder.events == ["long_armed", "long"]
    assert "long_armed callback failed" in caplog.text
    assert "long_armed callback broke" in caplog.text  # the traceback


async def test_bad_timings_are_refused_before_the_pin_is_claimed(
    make: Make, factory: MockFactory
) -> None:
    with pytest.raises(BadTiming, match="short_max=20"):
        make(short_max=20.0, long_press=10.0)
    button, _ = make()  # not GPIOPinInUse
    assert not button.closed
