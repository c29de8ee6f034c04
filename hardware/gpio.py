"""Choose the gpiozero pin factory: the real one on a Pi, mock pins elsewhere.

``pin_factory(mock)`` is called once, in ``main()``, and its result is
passed to every GPIO device (:class:`hardware.led.StatusLed`,
:class:`hardware.button.PairingButton`):

* ``mock=False`` on a Pi: ``None``, meaning gpiozero's default factory (lgpio
  on current Raspberry Pi OS), which this call has already created so that a
  missing driver shows up here and not at the first device.
* ``mock=True``, or no usable factory (a laptop, CI, a container without
  ``/dev/gpiochip*``): a ``MockFactory`` whose pins also do PWM, so a PWM status
  LED and the button both work on it; a warning is logged once per process.

gpiozero is imported here lazily (its pin backends are absent off the Pi), on the first call.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

logger = logging.getLogger(__name__)

_warned_lock = threading.Lock()
_warned = False


def pin_factory(mock: bool) -> Any:
    """gpiozero's default factory (``None``) or a fresh PWM-capable ``MockFactory``."""
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory, NativePinFactoryFallback, PinFactoryFallback

    if mock:
        return mock_factory()
    with warnings.catch_warnings(record=True) as fallbacks:
        # gpiozero warns once per driver it could not load; summarised below.
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            Device.ensure_pin_factory()
        except BadPinFactory as exc:
            reasons = "; ".join(str(w.message) for w in fallbacks) or str(exc)
            _warn_once("no GPIO pin factory (%s): using mock pins, nothing is wired", reasons)
            return mock_factory()
    for w in fallbacks:
        # Falling back to the pure-Python "native" driver is worth a warning.
        level = (
            logging.WARNING if issubclass(w.category, NativePinFactoryFallback) else logging.DEBUG
        )
        logger.log(level, "gpiozero: %s", w.message)
    return None


def mock_factory() -> Any:
    """A ``MockFactory`` with PWM-capable pins (``MockPWMPin`` is also a plain input)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def _warn_once(message: str, *args: object) -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    logger.warning(message, *args)
