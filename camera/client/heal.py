"""When the CLI viewer replaces its session, and when it gives up: rules without I/O.

The media plane decides whether a session is alive, never the rendezvous:

- a session whose peer connection failed or closed (the camera's DTLS close,
  ICE consent lost: RFC 7675, aioice stops after about 30 s of failed checks)
  is replaced at once;
- a session that delivers no frame for ``stall`` seconds (longer at low frame
  rates) is replaced; after the camera's ``bye`` for it (relayed by the
  rendezvous, unsigned, so only advice) the threshold is ``stall_after_bye``;
- a replacement is *make-before-break*: the new session is opened while the
  old one stays open; whichever delivers frames first goes on, the other is
  closed (a new session wins with its first keyframe, an old one by resuming).

A run gives up only on a terminal refusal (not paired, revoked, a pairing
refused, an answer not signed by the camera), or on any failure before the
run's first frame once its ``wait`` is over (0 by default: a wrong device ID
must not hang). Other failures are retried with a short, capped, fully
jittered backoff; before the first frame, within ``wait``, with a slower one
(the rendezvous' ``online`` hint, :meth:`Healer.retry_now`, is the fast path).

The adapter (:func:`camera.client.viewer.view`) feeds events in with the loop's
clock and performs the actions that come back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

STALL = 1.5
"""Seconds without a frame after which a session is replaced (at 10 fps and more)."""
STALL_AFTER_BYE = 0.5
"""The same once the camera's bye for the session has arrived."""
STALL_FRAMES = 15
"""At low frame rates the threshold is at least this many frame intervals."""
RETRY_BASE = 0.25
RETRY_CAP = 2.0
"""Backoff between attempts while the camera is away: it re-registers within about
a second of its network returning, so the viewer must not sleep much longer."""
WAIT_RETRY_BASE = 1.0
WAIT_RETRY_CAP = 5.0
"""Backoff of a run still waiting for its first frame (the camera offline): the
rendezvous' ``online`` hint starts the next attempt at once; this is the fallback."""

_TERMINAL = ("not authorized", "pairing refused", "pairing failed", "stale")


def terminal_refusal(reason: str) -> bool:
    """A camera's refusal that retrying cannot change (``bye`` reasons of the camera core).

    "not authorized" (not paired, revoked, a bad signature), "pairing refused",
    "pairing failed", "stale" (the clocks disagree). Everything else is
    transient: the camera is offline, busy, restarting, did not answer in time.
    """
    text = reason.strip().lower()
    return text.startswith(_TERMINAL)


class Backoff:
    """Capped exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``."""

    def __init__(self, base: float, cap: float,
                 rng: Callable[[], float] = random.random) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff base {base} / cap {cap}: need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def next(self, cap: float | None = None) -> float:
        """The next delay (``cap`` lowers the ceiling for this one)."""
        ceiling = min(self.cap if cap is None else min(cap, self.cap),
                      self.base * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return float(self._rng() * ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class Open:
    """Open a new session with this number."""

    session: int
    cause: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close this session (peer connection, bye) and forget it."""

    session: int
    reason: str


@dataclass(frozen=True, slots=True)
class Promote:
    """This session's frames are the ones shown and recorded from now on."""

    session: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the run with this session's failure."""

    session: int
    cause: str


Action = Open | Close | Promote | GiveUp

CLOSED = "connection closed"
FAILED = "connection failed"
STALLED = "frame stall"
BYE_THEN_STALL = "camera's bye, then no frames"
WAITING = "waiting for the camera"


class Healer:
    """Which session plays, which one is being opened, and when to try again."""

    def __init__(
        self,
        *,
        stall: float = STALL,
        stall_after_bye: float = STALL_AFTER_BYE,
        retry: Backoff | None = None,
        wait: float = 0.0,
        wait_retry: Backoff | None = None,
    ) -> None:
        """``wait``: seconds from the start during which failures before the first
        frame (the camera offline, restarting) are retried instead of ending the run,
        ``wait_retry`` apart (default: WAIT_RETRY_BASE, doubling up to WAIT_RETRY_CAP)."""
        if stall <= 0 or stall_after_bye <= 0:
            raise ValueError(f"stall {stall} / after bye {stall_after_bye}: need > 0")
        if wait < 0:
            raise ValueError(f"wait {wait}: need 0 or more seconds")
        self.wait = wait
        self._wait_retry = wait_retry or Backoff(WAIT_RETRY_BASE, WAIT_RETRY_CAP)
        self._started_at = 0.0
        self.stall = stall
        self.stall_after_bye = stall_after_bye
        self.retry = retry or Backoff(RETRY_BASE, RETRY_CAP)
        self.current: int | None = None
        """The session whose frames are shown (None before the first frame, or when it ended)."""
        self.pending: int | None = None
        """The session being opened (at most one at a time)."""
        self.played = False
        """A frame has been shown in this run."""
        self.sessions_used = 0
        """Sessions that delivered video."""
        self.last_cause: str | None = None
        """Why the last replacement started."""
        self._next = 0
        self._last_frame = 0.0
        self._interval = 0.0
        self._bye = False
        self._retry_at: float | None = None
        """When the next attempt is due; None: no replacement is under way."""

    # -- events ------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The run begins: open the first session."""
        self._started_at = now
        return [self._open("start")]

    def frame(self, session: int, now: float, keyframe: bool) -> list[Action]:
        """An access unit arrived on ``session``."""
        if session == self.current:
            if self._last_frame:
                gap = now - self._last_frame
                self._interval = gap if not self._interval else 0.9 * self._interval + 0.1 * gap
            self._last_frame = now
            if self._retry_at is None:
                return []
            # It came back (a network that returned within ICE consent): it goes on.
            self._retry_at = None
            self.retry.reset()
            if self.pending is not None:
                loser, self.pending = self.pending, None
                return [Close(loser, "the old session came back first")]
            return []
        if session != self.pending or not keyframe:
            return []  # a closed session's late frame, or a new one before its keyframe
        actions: list[Action] = [Promote(session)]
        if self.current is not None:
            actions.append(Close(self.current, "replaced by a new session"))
        self.current, self.pending = session, None
        self.played = True
        self.sessions_used += 1
        self._last_frame, self._interval, self._bye = now, 0.0, False
        self._retry_at = None
        self.retry.reset()
        return actions

    def bye(self, session: int, now: float) -> list[Action]:
        """The camera's bye for a session that was answered: advice, never an order."""
        if session == self.current:
            self._bye = True
        return []

    def ended(self, session: int, cause: str, now: float) -> list[Action]:
        """The session's peer connection failed or closed."""
        if session == self.pending:
            return self.failed(session, cause, terminal=False, now=now)
        if session != self.current:
            return []
        self.current = None
        actions: list[Action] = [Close(session, cause)]
        if self._retry_at is None:
            self.last_cause = cause
            self._retry_at = now  # at once: the first retry is not delayed
        return actions + self.tick(now)

    def failed(self, session: int, cause: str, *, terminal: bool, now: float) -> list[Action]:
        """Opening ``session`` did not get video (refused, timed out, unreachable)."""
        if session != self.pending:
            return []
        self.pending = None
        if not terminal and not self.played and now - self._started_at < self.wait:
            self._retry_at = min(now + self._wait_retry.next(), self._started_at + self.wait)
            return []
        if terminal or not self.played:
            return [GiveUp(session, cause)]
        if self._retry_at is None:  # the old session came back meanwhile
            return []
        self._retry_at = now + self.retry.next()
        return []

    def retry_now(self, now: float) -> list[Action]:
        """A hint that the camera is back (it registered again): skip the wait."""
        if self._retry_at is not None and self.pending is None:
            self._retry_at = now
            self.retry.reset()
            return self.tick(now)
        return []

    def tick(self, now: float) -> list[Action]:
        """Call a few times a second: notices stalls and starts due attempts."""
        if self.pending is not None:
            return []
        if not self.played:  # waiting for the camera: only a due retry
            if self._retry_at is None or now < self._retry_at:
                return []
            self._retry_at = None
            return [self._open(WAITING)]
        if self._retry_at is None:
            if self.current is None or not self._stalled(now):
                return []
            self.last_cause = BYE_THEN_STALL if self._bye else STALLED
            self._retry_at = now
        if now < self._retry_at:
            return []
        return [self._open(self.last_cause or STALLED)]

    # -- helpers -----------------------------------------------------------------

    def stall_threshold(self) -> float:
        base = self.stall_after_bye if self._bye else self.stall
        frames = STALL_FRAMES // 3 if self._bye else STALL_FRAMES
        return max(base, frames * self._interval)

    def _stalled(self, now: float) -> bool:
        return now - self._last_frame > self.stall_threshold()

    def _open(self, cause: str) -> Open:
        session, self._next = self._next, self._next + 1
        self.pending = session
        return Open(session, cause)
