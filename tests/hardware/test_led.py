"""StatusLed on gpiozero's mock pins: the recorded pin history is the pattern.

MockPin.states[i].timestamp is how long states[i - 1] lasted, so a history is a
list of (level, duration) segments. Blinking states all run at once (one
module-scoped recording of ~4.6 s) to keep the suite fast; tolerances are wide
because the blink thread shares a noisy machine, and scale with
PEERCAM_TEST_TIMEOUT_FACTOR.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, PinState

from hardware.led import (
    PATTERNS,
    PLAIN_PATTERNS,
    LedClosed,
    LedState,
    Pattern,
    StatusLed,
)

FACTOR = float(os.environ.get("PEERCAM_TEST_TIMEOUT_FACTOR", "1"))
RECORD_SECONDS = 4.6 * FACTOR  # > one SOS cycle (4.08 s), the longest pattern


def tolerance(expected: float) -> float:
    return (0.08 + 0.25 * expected) * FACTOR


def segments(states: list[PinState], active_high: bool = True) -> list[tuple[float, float]]:
    """(LED level, seconds) from the pattern's first lit write; the open last one dropped."""
    levels = [float(s.state) if active_high else 1.0 - float(s.state) for s in states]
    segs = [(levels[i - 1], states[i].timestamp) for i in range(1, len(states))]
    first_lit = next(i for i, (level, _) in enumerate(segs) if level > 0)
    return segs[first_lit:]


def expected_segments(pattern: Pattern, count: int) -> list[tuple[float, float]]:
    cycle: list[tuple[float, float]] = []
    for on_time, off_time in pattern.steps:
        cycle += [(pattern.brightness, on_time), (0.0, off_time)]
    return [cycle[i % len(cycle)] for i in range(count)]


def assert_matches(measured: list[tuple[float, float]], pattern: Pattern) -> None:
    expected = expected_segments(pattern, len(measured))
    late: list[str] = []
    for i, ((level, seconds), (want_level, want_seconds)) in enumerate(
        zip(measured, expected, strict=True)
    ):
        assert level == pytest.approx(want_level), f"segment {i}: {measured}"
        if abs(seconds - want_seconds) <= tolerance(want_seconds):
            continue
        # A blink thread woken late by a busy machine only ever lengthens a step;
        # a few such are the machine, a short step or many long ones the pattern.
        assert seconds > want_seconds, f"segment {i}: {seconds:.3f}s, want {want_seconds}s"
        late.append(f"segment {i}: {seconds:.3f}s, want {want_seconds}s")
    assert len(late) <= max(1, len(measured) // 10), (late, measured)


def blinks_per_cycle(measured: list[tuple[float, float]], long_gap: float = 0.6) -> int:
    count = 0
    for level, seconds in measured:
        if level > 0:
            count += 1
        elif seconds >= long_gap:
            return count
    raise AssertionError(f"no gap of {long_gap}s in {measured}")


def led_threads(baseline: set[threading.Thread]) -> set[threading.Thread]:
    """Blink threads started since ``baseline`` (the module recording may still run)."""
    return {t for t in threading.enumerate() if t.name.startswith("status-led")} - baseline


def running_led_threads() -> set[threading.Thread]:
    return led_threads(set())


@pytest.fixture(scope="module")
def recordings() -> Iterator[dict[str, list[PinState]]]:
    """Every state shown at once, each on its own mock pin, for RECORD_SECONDS."""
    leds: dict[str, StatusLed] = {}
    for state in LedState:
        leds[state.value] = StatusLed.mock()
    leds["plain_idle"] = StatusLed.mock(pwm=False)
    try:
        for key, led in leds.items():
            led.set(LedState.IDLE if key == "plain_idle" else LedState(key))
        time.sleep(RECORD_SECONDS)
        yield {key: list(led.device.pin.states) for key, led in leds.items()}
    finally:
        for led in leds.values():
            led.close()


def test_every_state_has_a_distinct_pattern() -> None:
    assert set(PATTERNS) == set(LedState) == set(PLAIN_PATTERNS)
    for table in (PATTERNS, PLAIN_PATTERNS):
        patterns = list(table.values())
        assert len(set(patterns)) == len(patterns)
    # Without PWM "dim" is invisible, so the plain idle must not be solid.
    assert not PLAIN_PATTERNS[LedState.IDLE].solid


BLINKING = [s for s in LedState if not PATTERNS[s].solid]


@pytest.mark.parametrize("state", BLINKING, ids=str)
def test_blinking_state_follows_its_pattern(
    recordings: dict[str, list[PinState]], state: LedState
) -> None:
    pattern = PATTERNS[state]
    measured = segments(recordings[state.value])
    # At least one whole cycle was observed, every step in order.
    assert len(measured) >= 2 * len(pattern.steps), measured
    assert_matches(measured, pattern)


@pytest.mark.parametrize(
    ("state", "blinks"),
    [(LedState.NO_NETWORK, 2), (LedState.CAMERA_FAULT, 3), (LedState.FATAL, 9)],
    ids=str,
)
def test_multi_blinks_are_countable(
    recordings: dict[str, list[PinState]], state: LedState, blinks: int
) -> None:
    assert blinks_per_cycle(segments(recordings[state.value])) == blinks


def test_sos_is_short_long_short(recordings: dict[str, list[PinState]]) -> None:
    on_times = [s for level, s in segments(recordings[LedState.FATAL.value]) if level > 0][:9]
    assert ["." if s < 0.24 else "-" for s in on_times] == list("...---...")


def test_reset_flickers_twice_as_fast_as_booting(recordings: dict[str, list[PinState]]) -> None:
    # The per-step tolerance above would also pass booting's 5 Hz for reset's
    # 10 Hz, so tell them apart by counting flashes over the same recording.
    reset = [s for level, s in segments(recordings[LedState.RESET.value]) if level > 0]
    booting = [s for level, s in segments(recordings[LedState.BOOTING.value]) if level > 0]
    assert len(reset) >= 1.5 * len(booting) >= 1.5 * 15, (len(reset), len(booting))
    assert sum(reset) / len(reset) < 0.05 + 0.03 * FACTOR, reset


@pytest.mark.parametrize(
    ("state", "level"), [(LedState.STREAMING_DIRECT, 1.0), (LedState.IDLE, 0.2)], ids=str
)
def test_solid_states_stay_on(
    recordings: dict[str, list[PinState]], state: LedState, level: float
) -> None:
    # Initial off, then one write, then nothing for the whole recording.
    assert [s.state for s in recordings[state.value]] == [0, pytest.approx(level)]


def test_plain_led_idle_is_a_heartbeat(recordings: dict[str, list[PinState]]) -> None:
    measured = segments(recordings["plain_idle"])
    assert len(measured) >= 2
    assert_matches(measured, PLAIN_PATTERNS[LedState.IDLE])


def test_switching_state_switches_pattern() -> None:
    baseline = running_led_threads()
    led = StatusLed.mock()
    try:
        led.set(LedState.BOOTING)
        time.sleep(0.55)
        led.set(LedState.REGISTERING)
        assert led.state is LedState.REGISTERING
        time.sleep(1.3)
        measured = segments(led.device.pin.states)
    finally:
        led.close()
    fast = [s for _, s in measured if s < 0.3]
    slow = [s for _, s in measured if s >= 0.3]
    assert len(fast) >= 3 and len(slow) >= 2, measured
    # Fast blinks come first, then only slow ones: the old thread is gone.
    assert measured.index(next(m for m in measured if m[1] >= 0.3)) >= len(fast) - 1
    assert_matches([m for m in measured if m[1] >= 0.3][:2], PATTERNS[LedState.REGISTERING])
    assert led_threads(baseline) == set()


def test_setting_the_same_state_does_not_restart_it() -> None:
    baseline = running_led_threads()
    led = StatusLed.mock()
    try:
        led.set(LedState.REGISTERING)
        time.sleep(0.25)
        led.set(LedState.REGISTERING)  # a restart would stretch this on-period to 0.75 s
        time.sleep(0.9)
        measured = segments(led.device.pin.states)
        assert len(led_threads(baseline)) == 1
    finally:
        led.close()
    assert_matches(measured, PATTERNS[LedState.REGISTERING])


def test_close_switches_off_and_releases_the_pin() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    led = StatusLed(17, pin_factory=factory)
    led.set(LedState.STREAMING_DIRECT)
    pin: Any = led.device.pin
    assert pin.state == 1.0
    led.close()
    led.close()  # twice is safe
    assert led.closed and led.state is None
    assert pin.state == 0.0
    assert pin.function == "input"
    with pytest.raises(LedClosed, match="streaming_direct"):
        led.set(LedState.STREAMING_DIRECT)
    # Released: the same pin can be claimed again (else GPIOPinInUse).
    again = StatusLed(17, pin_factory=factory)
    with pytest.raises(GPIOPinInUse):
        StatusLed(17, pin_factory=factory)
    again.close()


def test_close_stops_the_blink_thread() -> None:
    baseline = running_led_threads()
    led = StatusLed.mock()
    led.set(LedState.BOOTING)
    pin: Any = led.device.pin
    time.sleep(0.15)
    assert len(led_threads(baseline)) == 1
    led.close()
    assert led_threads(baseline) == set()
    history = list(pin.states)
    time.sleep(0.3)
    assert pin.states == history


@pytest.mark.parametrize("pwm", [True, False], ids=["pwm", "plain"])
def test_active_low_inverts_the_pin(pwm: bool) -> None:
    led = StatusLed.mock(active_high=False, pwm=pwm)
    pin: Any = led.device.pin
    try:
        assert float(pin.state) == 1.0  # constructed off: pin high
        led.set(LedState.STREAMING_DIRECT)
        assert float(pin.state) == 0.0  # lit: pin low
        led.set(LedState.BOOTING)
        time.sleep(0.65)
        states = list(pin.states)
    finally:
        led.close()
    assert_matches(segments(states, active_high=False), PATTERNS[LedState.BOOTING])
    # The same history read as active-high would be the inverse, not the pattern.
    raw = [level for level, _ in segments(states, active_high=True)]
    assert raw[:2] == [1.0, 0.0] and segments(states, active_high=True)[0][1] < 0.05


def test_mock_picks_pin_class_by_pwm() -> None:
    pwm_led, plain_led = StatusLed.mock(), StatusLed.mock(pwm=False)
    try:
        assert type(pwm_led.device).__name__ == "PWMLED"
        assert isinstance(pwm_led.device.pin, MockPWMPin)
        assert type(plain_led.device).__name__ == "LED"
        assert type(plain_led.device.pin) is MockPin
    finally:
        pwm_led.close()
        plain_led.close()


@pytest.mark.parametrize(
    ("steps", "brightness", "message"),
    [
        ((), 1.0, "at least one"),
        (((0.0, 0.1),), 1.0, r"bad step \(0.0, 0.1\)"),
        (((0.1, -1.0),), 1.0, r"bad step \(0.1, -1.0\)"),
        (((0.1, 0.1),), 0.0, "brightness 0.0"),
        (((0.1, 0.1),), 1.5, "brightness 1.5"),
    ],
)
def test_bad_patterns_are_refused(
    steps: tuple[tuple[float, float], ...], brightness: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Pattern(steps, brightness)
