"""Is the camera healthy? The watchdog decision and the recovery ladder, sans I/O.

The agent calls :meth:`HealthMonitor.tick` a few times a second with the time,
when the last frame arrived and whether the rendezvous registration is up; it
gets back what to do:

- ``READY`` once, the first time frames flow *and* the camera is registered
  (systemd's ``READY=1``: the service is doing its job).
- ``WATCHDOG`` on every tick while frames arrive. A tick runs on the event
  loop, so a blocked loop sends nothing either: ``WATCHDOG=1`` means "the loop
  is responsive AND frames are arriving", never one without the other.
- ``RESTART_SOURCE`` when no frame came for ``frame_stall`` seconds (counted
  from start, from the last frame or from the last restart, whichever is
  latest), at most ``max_restarts`` times in a row.
- ``GIVE_UP`` when the source is still stuck after that: the agent exits with
  :data:`EXIT_STUCK` and systemd's ``Restart=on-failure`` starts a fresh
  process; ``StartLimitBurst``/``StartLimitIntervalSec`` decide when to stop
  trying. The restart count goes back to zero after ``healthy_reset`` seconds
  of frames, so a camera that hiccups once a day never exhausts its ladder.

Registration is not part of health: a camera without network still streams to
viewers already connected and must not be restarted for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

EXIT_STUCK = 75
"""Exit status when the source stays stuck (EX_TEMPFAIL: try again later)."""


class Action(enum.Enum):
    READY = "ready"
    WATCHDOG = "watchdog"
    RESTART_SOURCE = "restart_source"
    GIVE_UP = "give_up"


@dataclass
class HealthMonitor:
    """The decision; the caller does the I/O (notify, restart, exit)."""

    started_at: float
    frame_stall: float = 5.0
    max_restarts: int = 2
    healthy_reset: float = 60.0
    ready: bool = False
    restarts: int = 0
    """Source restarts since frames last flowed for ``healthy_reset`` seconds."""
    total_restarts: int = 0
    gave_up: bool = False
    _last_restart: float | None = field(default=None, repr=False)
    _healthy_since: float | None = field(default=None, repr=False)

    def frames_flowing(self, now: float, last_frame: float | None) -> bool:
        return last_frame is not None and now - last_frame <= self.frame_stall

    def stalled(self, now: float, last_frame: float | None) -> bool:
        """No frame for ``frame_stall`` seconds (the LED shows a camera fault)."""
        return now - self._reference(last_frame) > self.frame_stall

    def faulty(self, now: float, last_frame: float | None) -> bool:
        """Stalled, or restarted and not delivering yet (the LED's camera fault)."""
        if self.frames_flowing(now, last_frame):
            return False
        return self.stalled(now, last_frame) or self._last_restart is not None

    def _reference(self, last_frame: float | None) -> float:
        """The moment the stall clock starts: start, last frame or last restart."""
        marks = [self.started_at, last_frame, self._last_restart]
        return max(m for m in marks if m is not None)

    def tick(self, now: float, last_frame: float | None, registered: bool) -> list[Action]:
        if self.gave_up:
            return []
        if self.frames_flowing(now, last_frame):
            actions = [Action.WATCHDOG]
            if self._healthy_since is None:
                self._healthy_since = now
            if self.restarts and now - self._healthy_since >= self.healthy_reset:
                self.restarts = 0
            if registered and not self.ready:
                self.ready = True
                actions.insert(0, Action.READY)
            return actions
        self._healthy_since = None
        if not self.stalled(now, last_frame):
            return []  # starting, or just restarted: give the source its time
        if self.restarts < self.max_restarts:
            self.restarts += 1
            self.total_restarts += 1
            self._last_restart = now
            return [Action.RESTART_SOURCE]
        self.gave_up = True
        return [Action.GIVE_UP]


class LinkAction(enum.Enum):
    RECONNECT = "reconnect"
    REBUILD = "rebuild"
    STOP_WATCHDOG = "stop_watchdog"


class LinkFault(enum.Enum):
    ENDED = "the link task ended"
    HUNG = "the link shows no sign of life"
    FAILING = "the link keeps failing inside the camera"


@dataclass
class LinkLadder:
    """The rendezvous link's recovery ladder, sans I/O.

    Only faults a restart can cure count: the link task ended, an unregistered
    link that shows no sign of life for ``hang`` seconds (an await that never
    returns), or ``failures`` attempts in a row that ended in an unexpected error
    of the camera's own. A server that refuses or is down, and a network that
    is down, are not faults of the camera: the link keeps retrying with backoff,
    live sessions go on, and nothing is restarted for them.

    On a fault: reconnect (a fresh link task, backoff reset); if the fault is
    still there ``settle`` seconds later, rebuild (fresh protocol state and
    link); if still, stop the watchdog pings so systemd restarts the unit. A
    registration puts the ladder back at the bottom.
    """

    hang: float = 90.0
    failures: int = 3
    settle: float = 10.0
    step: int = 0
    """0: healthy; 1: reconnected; 2: rebuilt; 3: gave up."""
    recoveries: int = 0
    """Actions taken since start (shown by ``peercam status``)."""
    fault: LinkFault | None = None
    _acted_at: float | None = field(default=None, repr=False)

    @property
    def gave_up(self) -> bool:
        return self.step >= 3

    def diagnose(self, now: float, running: bool, registered: bool,
                 internal_failures: int, last_activity: float) -> LinkFault | None:
        if not running:
            return LinkFault.ENDED
        if registered:
            return None
        if internal_failures >= self.failures:
            return LinkFault.FAILING
        if now - last_activity > self.hang:
            return LinkFault.HUNG
        return None

    def tick(self, now: float, running: bool, registered: bool, internal_failures: int,
             last_activity: float) -> list[LinkAction]:
        if self.gave_up:
            return []
        if registered and running:
            self.step, self.fault, self._acted_at = 0, None, None
            return []
        self.fault = self.diagnose(now, running, registered, internal_failures, last_activity)
        if self.fault is None:
            if self._acted_at is not None and now - self._acted_at > 6 * self.settle:
                self.step, self._acted_at = 0, None  # that fault is long cured
            return []
        if self._acted_at is not None and now - self._acted_at < self.settle:
            return []  # give the last action its time
        self._acted_at = now
        self.step += 1
        self.recoveries += 1
        return [(LinkAction.RECONNECT, LinkAction.REBUILD, LinkAction.STOP_WATCHDOG)[
            self.step - 1]]
