"""Classify presses of the pairing button: debounced edges in, press events out.

Sans-I/O: no gpiozero, no asyncio, no clock of its own. The adapter
(:mod:`hardware.button`) feeds raw pin edges as ``edge(at, pressed)``, calls
``tick(now)`` when :meth:`PressClassifier.next_deadline` comes due, and acts on
the :class:`PressEvent` list each call returns. Times are seconds on any one
monotonic clock.

Debounce. A raw level counts only once it has been stable for ``bounce``
seconds: the burst of edges a contact makes when it closes or opens is one
press, and a pulse shorter than ``bounce`` is noise that never becomes a press
(nor, during a hold, a release). A press is timed from the raw edge that began
its stable run to the raw edge that began the stable release; the event is
decided ``bounce`` later, when that release is confirmed.

Events, by how long the button was held:

=================================  ========================================================
held                               events
=================================  ========================================================
< ``bounce``                       none (noise)
< ``short_max``                    ``SHORT`` on release
``short_max`` .. ``long_press``    ``CANCEL`` on release (nothing should happen)
>= ``long_press``                  ``LONG_ARMED`` at the ``long_press`` mark, still held;
                                   then ``LONG`` on release
=================================  ========================================================

Release is what commits a long press: ``LONG_ARMED`` only announces it (the LED
confirms before anything is erased), and a button held forever (or stuck)
never produces ``LONG``. Once armed, the release always commits. ``LONG`` is
always preceded by ``LONG_ARMED`` for the same press; if no tick came at the
mark, both are returned together on release.

A press already in progress when the classifier starts (``start_pressed``) is
not classified: its release produces nothing. Timestamps should not go
backwards; one older than the latest seen is taken as the latest (an edge
queued behind a timer tick).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hardware.errors import HardwareError

__all__ = ["BadTiming", "PressClassifier", "PressEvent", "PressKind"]


class BadTiming(HardwareError, ValueError):
    """The press timings cannot classify anything (we misbehaved)."""


class PressKind(StrEnum):
    SHORT = "short"
    """Pressed and released before ``short_max``."""
    LONG_ARMED = "long_armed"
    """Still held at the ``long_press`` mark: a release now commits ``LONG``."""
    LONG = "long"
    """Released after ``LONG_ARMED``."""
    CANCEL = "cancel"
    """Released between ``short_max`` and ``long_press``: nothing happens."""


@dataclass(frozen=True)
class PressEvent:
    kind: PressKind
    pressed_at: float
    """When the (debounced) press began; the same for every event of one press."""
    held: float
    """Seconds held: up to the release edge, or up to the tick that armed it."""


class PressClassifier:
    """Debounce one button's raw edges and classify each press (see module docstring)."""

    def __init__(
        self,
        *,
        bounce: float = 0.05,
        short_max: float = 2.0,
        long_press: float = 10.0,
        start_pressed: bool = False,
    ) -> None:
        if not 0 <= bounce < short_max <= long_press:
            raise BadTiming(
                f"need 0 <= bounce < short_max <= long_press, got bounce={bounce!r}, "
                f"short_max={short_max!r}, long_press={long_press!r}"
            )
        self.bounce = bounce
        self.short_max = short_max
        self.long_press = long_press
        self._raw = start_pressed
        self._raw_since: float | None = None
        self._stable = start_pressed
        self._press_start: float | None = None  # None while pressed: start unknown
        self._armed = False
        self._now = float("-inf")

    @property
    def pressed(self) -> bool:
        """The debounced level: True from a confirmed press to its confirmed release."""
        return self._stable

    @property
    def armed(self) -> bool:
        """``LONG_ARMED`` was returned for the press still held."""
        return self._armed

    def edge(self, at: float, pressed: bool) -> list[PressEvent]:
        """The raw pin went to ``pressed`` at ``at``; repeats of the raw level are ignored."""
        at = self._advance(at)
        # Whatever the old raw level settled into before this edge happens first.
        events = self._settle(at)
        if pressed != self._raw:
            self._raw = pressed
            self._raw_since = at
        return events

    def tick(self, now: float) -> list[PressEvent]:
        """Time passed with no edge; call at :meth:`next_deadline` (earlier is harmless)."""
        return self._settle(self._advance(now))

    def next_deadline(self) -> float | None:
        """When ``tick`` may next return something; None: not until the next edge."""
        if self._raw != self._stable:
            assert self._raw_since is not None
            return self._raw_since + self.bounce
        if self._stable and self._press_start is not None and not self._armed:
            return self._press_start + self.long_press
        return None

    def _advance(self, at: float) -> float:
        if at > self._now:
            self._now = at
        return self._now

    def _settle(self, now: float) -> list[PressEvent]:
        events: list[PressEvent] = []
        if (
            self._raw != self._stable
            and self._raw_since is not None
            and now >= self._raw_since + self.bounce  # the same sum as next_deadline()
        ):
            # The raw level held for `bounce`: it is the new level, as of its edge.
            self._stable = self._raw
            if self._stable:
                self._press_start = self._raw_since
                self._armed = False
            else:
                events += self._released(self._raw_since)
        if (
            self._stable
            and self._raw  # not while a release is pending confirmation
            and self._press_start is not None
            and not self._armed
            and now >= self._press_start + self.long_press
        ):
            self._armed = True
            events.append(
                PressEvent(PressKind.LONG_ARMED, self._press_start, now - self._press_start)
            )
        return events

    def _released(self, at: float) -> list[PressEvent]:
        start, armed = self._press_start, self._armed
        self._press_start, self._armed = None, False
        if start is None:
            return []  # held since before we started: not ours to classify
        held = at - start
        if armed or held >= self.long_press:
            events = [] if armed else [PressEvent(PressKind.LONG_ARMED, start, held)]
            return [*events, PressEvent(PressKind.LONG, start, held)]
        kind = PressKind.SHORT if held < self.short_max else PressKind.CANCEL
        return [PressEvent(kind, start, held)]
