"""The camera's status LED: one blink pattern per agent state.

A pattern is data: a tuple of ``(on_time, off_time)`` steps (seconds) that
repeats forever, lit at ``brightness`` (honoured only on a PWM LED). A pattern
whose every ``off_time`` is 0 is solid and needs no thread.

==================  =====================================  ============================
State               Pattern                                Steps (on, off) in seconds
==================  =====================================  ============================
booting             fast blink, 5 Hz                       (0.1, 0.1)
no network          double blink every 2 s                 (0.15, 0.15) (0.15, 1.55)
registering         slow blink, 1 Hz                       (0.5, 0.5)
idle                solid, dim (20 %); plain LED: a        (1, 0) at 0.2
                    0.1 s heartbeat every 3 s              plain: (0.1, 2.9)
streaming direct    solid, full brightness                 (1, 0)
streaming relayed   on, with a short off-blip every 1 s    (0.9, 0.1)
pairing             fast alternating, 2.5 Hz               (0.2, 0.2)
reset armed         very fast flicker, 10 Hz               (0.05, 0.05)
camera fault        triple blink every 2 s                 (0.15, 0.15) x2 (0.15, 1.25)
fatal               SOS in Morse (dot 0.12 s), ~4.1 s      see ``_SOS``
==================  =====================================  ============================

Why a thread of our own rather than gpiozero's ``blink()``: ``blink()`` knows a
single ``(on, off)`` pair, and double/triple blinks and SOS need a sequence. The
thread only writes the device; ``set()`` stops and joins the old one before
starting the next, so at most one writer exists (one thread crossing, one owner per task).

No GPIO (tests, a laptop): pass ``pin_factory=gpiozero.pins.mock.MockFactory()``
(with ``pin_class=MockPWMPin`` when ``pwm=True``), or use :meth:`StatusLed.mock`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hardware.errors import HardwareError

logger = logging.getLogger(__name__)

Step = tuple[float, float]


class LedClosed(HardwareError, RuntimeError):
    """``set()`` was called on a :class:`StatusLed` that was already closed."""


class LedState(StrEnum):
    BOOTING = "booting"
    NO_NETWORK = "no_network"
    REGISTERING = "registering"
    IDLE = "idle"
    """Registered with the rendezvous, no viewers."""
    STREAMING_DIRECT = "streaming_direct"
    STREAMING_RELAYED = "streaming_relayed"
    PAIRING = "pairing"
    RESET = "reset"
    """A long press of the pairing button is armed: releasing it clears the viewers."""
    CAMERA_FAULT = "camera_fault"
    FATAL = "fatal"


@dataclass(frozen=True)
class Pattern:
    steps: tuple[Step, ...]
    """``(on_time, off_time)`` pairs in seconds, repeated forever in order."""
    brightness: float = 1.0
    """Duty cycle while lit, 0 < brightness <= 1; a plain (non-PWM) LED lights fully."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a pattern needs at least one (on_time, off_time) step")
        for on_time, off_time in self.steps:
            if on_time <= 0 or off_time < 0:
                raise ValueError(
                    f"bad step ({on_time!r}, {off_time!r}): on_time must be > 0, off_time >= 0"
                )
        if not 0 < self.brightness <= 1:
            raise ValueError(f"brightness {self.brightness!r} is not in (0, 1]")

    @property
    def solid(self) -> bool:
        """Never switches off: set once, no thread needed."""
        return all(off_time == 0 for _, off_time in self.steps)

    @property
    def period(self) -> float:
        return sum(on_time + off_time for on_time, off_time in self.steps)


_DOT, _DASH = 0.12, 0.36
# Morse timing: 1 unit between elements, 3 between letters, 7 between words.
_SOS: tuple[Step, ...] = (
    (_DOT, _DOT), (_DOT, _DOT), (_DOT, _DASH),
    (_DASH, _DOT), (_DASH, _DOT), (_DASH, _DASH),
    (_DOT, _DOT), (_DOT, _DOT), (_DOT, 7 * _DOT),
)  # fmt: skip

SOLID: tuple[Step, ...] = ((1.0, 0.0),)

PATTERNS: dict[LedState, Pattern] = {
    LedState.BOOTING: Pattern(((0.1, 0.1),)),
    LedState.NO_NETWORK: Pattern(((0.15, 0.15), (0.15, 1.55))),
    LedState.REGISTERING: Pattern(((0.5, 0.5),)),
    LedState.IDLE: Pattern(SOLID, brightness=0.2),
    LedState.STREAMING_DIRECT: Pattern(SOLID),
    LedState.STREAMING_RELAYED: Pattern(((0.9, 0.1),)),
    LedState.PAIRING: Pattern(((0.2, 0.2),)),
    LedState.RESET: Pattern(((0.05, 0.05),)),
    LedState.CAMERA_FAULT: Pattern(((0.15, 0.15), (0.15, 0.15), (0.15, 1.25))),
    LedState.FATAL: Pattern(_SOS),
}

# A plain LED cannot show "dim", which would make IDLE look like STREAMING_DIRECT.
PLAIN_PATTERNS: dict[LedState, Pattern] = {
    **PATTERNS,
    LedState.IDLE: Pattern(((0.1, 2.9),)),
}


def pattern_for(state: LedState, *, pwm: bool) -> Pattern:
    """The pattern :class:`StatusLed` shows for ``state`` on a PWM or a plain LED."""
    return (PATTERNS if pwm else PLAIN_PATTERNS)[state]


class StatusLed:
    """One LED on a GPIO pin showing a :class:`LedState`.

    ``set()`` and ``close()`` may be called from any thread; the blink thread is
    owned here, stopped and joined on every switch and on ``close()``.
    """

    def __init__(
        self,
        pin: int = 17,
        active_high: bool = True,
        pin_factory: Any | None = None,
        pwm: bool = True,
    ) -> None:
        # Lazy: importing hardware.led must not need gpiozero's backends.
        from gpiozero import LED, PWMLED

        device_class: Any = PWMLED if pwm else LED
        self._device: Any = device_class(
            pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )
        self._pwm = pwm
        self._lock = threading.Lock()
        self._state: LedState | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False

    @classmethod
    def mock(cls, pin: int = 17, active_high: bool = True, pwm: bool = True) -> StatusLed:
        """A StatusLed on gpiozero's mock pins: ``led.device.pin.states`` is its history."""
        from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

        factory = MockFactory(pin_class=MockPWMPin if pwm else MockPin)
        return cls(pin, active_high=active_high, pin_factory=factory, pwm=pwm)

    @property
    def device(self) -> Any:
        """The gpiozero ``LED``/``PWMLED`` (its ``.pin`` is a ``MockPin`` under mock)."""
        return self._device

    @property
    def state(self) -> LedState | None:
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def set(self, state: LedState) -> None:
        """Show ``state``; setting the state already shown changes nothing."""
        state = LedState(state)
        with self._lock:
            if self._closed:
                raise LedClosed(f"cannot show {state.value!r}: the status LED is closed")
            if state is self._state:
                return
            self._stop_blinking()
            self._state = state
            pattern = pattern_for(state, pwm=self._pwm)
            logger.debug("status LED: %s", state.value)
            if pattern.solid:
                self._light(pattern.brightness)
                return
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._blink,
                args=(pattern, self._stopping),
                name=f"status-led-{state.value}",
                daemon=True,
            )
            self._thread.start()

    def close(self) -> None:
        """Stop blinking, switch the LED off and release the pin. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_blinking()
            self._state = None
            try:
                self._device.off()
            finally:
                self._device.close()

    def _stop_blinking(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None

    def _light(self, brightness: float) -> None:
        if self._pwm:
            self._device.value = brightness
        else:
            self._device.on()

    def _blink(self, pattern: Pattern, stopping: threading.Event) -> None:
        # Runs on the blink thread; touches only the device, never self._state.
        for on_time, off_time in itertools.cycle(pattern.steps):
            self._light(pattern.brightness)
            if stopping.wait(on_time):
                return
            self._device.off()
            if stopping.wait(off_time):
                return
