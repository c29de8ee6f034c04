"""The pairing button: one push button on a GPIO pin, classified into presses.

Press semantics (decided by :class:`hardware.press.PressClassifier`):

* **Short press** (released before ``short_max``, default 2 s): ``on_short()``;
  the agent opens a pairing window for ``pairing_ttl``.
* **Long press** (held ``long_press``, default 10 s): at the mark, still held,
  ``on_long_armed()``; the agent shows :attr:`hardware.led.LedState.RESET` so
  the user sees the confirmation before letting go. The release then commits:
  ``on_long()``, and the agent clears the viewer ACL. Held forever (or a stuck
  button), nothing is ever erased, and ``close()`` while held commits nothing.
* **In between** (released after ``short_max``, before ``long_press``):
  ``on_cancel()``; nothing happens (the agent restores the LED).
* **Bounce**: a level counts once stable for ``bounce`` seconds (default 50 ms),
  so a bouncing contact is one press and a pulse shorter than ``bounce`` is
  ignored. A press already held when the button is created is not classified.

Why raw edges rather than gpiozero's ``bounce_time``/``hold_time``: what
``bounce_time`` does depends on the pin driver (lgpio filters glitches, RPi.GPIO
drops every edge for ``bounce_time`` after one, which can lose a release), and
``MockPin`` ignores it altogether, so neither tests nor a laptop would exercise
it. The device is a ``DigitalInputDevice`` with ``bounce_time=None``; every edge
is classified here, the same on every driver and under ``MockFactory``.

Threads: gpiozero calls ``when_activated``/``when_deactivated`` on its
own thread. That thread only stamps the edge with ``clock()`` and hands it to the
loop with ``loop.call_soon_threadsafe``; the classifier, its one timer
(``loop.call_later``, owned, cancelled on ``close()``) and all four callbacks run
on the loop thread. A callback that raises is logged and does not stop the others.

No GPIO: pass ``pin_factory=hardware.gpio.pin_factory(mock=True)`` (or any
gpiozero ``MockFactory``) and drive ``factory.pin(n)`` with ``drive_low()``/
``drive_high()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from hardware.press import PressClassifier, PressEvent, PressKind

__all__ = ["PairingButton"]

logger = logging.getLogger(__name__)

Callback = Callable[[], object]


class PairingButton:
    """A push button on BCM GPIO ``pin`` calling back short/long/cancel presses on ``loop``.

    ``pull_up=True`` (the usual wiring): the button shorts the pin to ground and
    the internal pull-up holds it high, so pressed is low. ``pull_up=False``: the
    button connects the pin to 3.3 V, with the internal pull-down; pressed is high.

    Create it and call :meth:`close` on the loop thread.
    """

    def __init__(
        self,
        pin: int,
        *,
        loop: asyncio.AbstractEventLoop,
        on_short: Callback,
        on_long_armed: Callback,
        on_long: Callback,
        on_cancel: Callback,
        pull_up: bool = True,
        bounce: float = 0.05,
        long_press: float = 10.0,
        short_max: float = 2.0,
        pin_factory: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Lazy: importing hardware.button must not need gpiozero's backends.
        from gpiozero import DigitalInputDevice

        self._loop = loop
        self._clock = clock
        self._callbacks: dict[PressKind, Callback] = {
            PressKind.SHORT: on_short,
            PressKind.LONG_ARMED: on_long_armed,
            PressKind.LONG: on_long,
            PressKind.CANCEL: on_cancel,
        }
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Validate the timings before claiming the pin.
        PressClassifier(bounce=bounce, short_max=short_max, long_press=long_press)
        self._device: Any = DigitalInputDevice(
            pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory
        )
        try:
            self._classifier = PressClassifier(
                bounce=bounce,
                short_max=short_max,
                long_press=long_press,
                start_pressed=bool(self._device.is_active),
            )
            self._device.when_activated = self._pressed_edge
            self._device.when_deactivated = self._released_edge
        except BaseException:
            self._device.close()
            raise

    @property
    def device(self) -> Any:
        """The gpiozero ``DigitalInputDevice`` (its ``.pin`` is a ``MockPin`` under mock)."""
        return self._device

    @property
    def pressed(self) -> bool:
        """The debounced level, as of the last edge or timer handled on the loop."""
        return self._classifier.pressed

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancel the timer, stop listening and release the pin. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        try:
            self._device.when_activated = None
            self._device.when_deactivated = None
        finally:
            self._device.close()

    # --- gpiozero's thread: stamp and hand off, nothing else ------------------------

    def _pressed_edge(self) -> None:
        self._hand_off(True)

    def _released_edge(self) -> None:
        self._hand_off(False)

    def _hand_off(self, pressed: bool) -> None:
        at = self._clock()
        try:
            self._loop.call_soon_threadsafe(self._on_edge, at, pressed)
        except RuntimeError:
            # The loop is closed (shutdown raced an edge): nobody is listening.
            logger.debug("pairing button: edge after the loop closed, dropped")

    # --- the loop thread -------------------------------------------------------------

    def _on_edge(self, at: float, pressed: bool) -> None:
        if self._closed:
            return
        self._dispatch(self._classifier.edge(at, pressed))
        self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._dispatch(self._classifier.tick(self._clock()))
        self._reschedule()

    def _reschedule(self) -> None:
        self._cancel_timer()
        deadline = self._classifier.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dispatch(self, events: list[PressEvent]) -> None:
        for event in events:
            logger.info("pairing button: %s (held %.2f s)", event.kind.value, event.held)
            try:
                self._callbacks[event.kind]()
            except Exception:
                logger.exception("pairing button: the %s callback failed", event.kind.value)
