"""Pan/tilt control on the camera: viewers' ``ptz`` data channels to one Pelco-D head.

The wire format is :mod:`camera.ptz_protocol` (sans-I/O); this module is the
asyncio adapter around it. It owns:

* the head (:class:`hardware.pelco_d.PelcoD`, opened from ``[hardware] ptz_*``);
* one writer task: frames go out in order, one at a time, through
  ``asyncio.to_thread`` (a frame is ~30 ms on the wire at 2400 baud, and a wedged
  USB adapter must not stall the event loop that carries the video);
* the deadman timer: the viewer repeats ``move`` while a button is held, and a
  move that is not repeated within ``move_timeout`` is stopped here, so a viewer
  that vanishes mid-move (tab closed, network gone) does not leave the head
  turning against its end stops.

Every message re-checks the ACL (a viewer revoked mid-session is ignored at once,
before the agent's sweep ends its session) and takes a token from that session's
bucket. A serial failure is logged and answered; video is never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc.exceptions import InvalidStateError

from camera.config import HardwareConfig
from camera.ptz_protocol import (
    LABEL,
    BadControlMessage,
    Command,
    Move,
    Preset,
    Stop,
    ack,
    availability,
    error,
    frame_for,
    parse_command,
)
from hardware.pelco_d import PelcoD, PelcoDError
from services.ratelimit import TokenBucket

__all__ = ["LABEL", "PtzControl", "open_head"]

logger = logging.getLogger(__name__)

NOT_AUTHORIZED = "not authorized: this viewer is not paired with the camera"
NO_HEAD = "unavailable: this camera has no pan/tilt head"


def open_head(config: HardwareConfig) -> PelcoD | None:
    """The configured head, or None (none configured, or it cannot be opened).

    A missing or broken adapter is logged and the camera streams without pan/tilt:
    video matters more than the head.
    """
    if not config.ptz_port:
        return None
    try:
        return PelcoD.open(config.ptz_port, config.ptz_address, config.ptz_baudrate)
    except (OSError, ValueError, PelcoDError) as exc:  # serial.SerialException is an OSError
        logger.error("pan/tilt head on %s: cannot open it (%s); running without pan/tilt",
                     config.ptz_port, exc)
        return None


@dataclass
class _Viewer:
    """One session's control channel."""

    channel: Any
    """The aiortc RTCDataChannel labelled ``ptz``."""
    viewer_key: str | None
    bucket: TokenBucket
    warned: bool = False
    """Logged once already that this session is refused or flooding."""


@dataclass(frozen=True)
class _Write:
    frame: bytes
    op: str
    session_id: str | None
    """Who gets the ack or the error; None for the camera's own stops."""


class PtzControl:
    """Turns viewers' control messages into Pelco-D frames on one head."""

    def __init__(
        self,
        head: PelcoD | None,
        *,
        rate: float,
        authorized: Callable[[str | None], bool],
        move_timeout: float = 1.0,
        burst: float | None = None,
        max_pending: int = 16,
        drain_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rate``: messages per second per session (bursts up to ``burst``, default
        one second's worth); ``authorized(viewer_key)`` is asked for every message;
        ``max_pending`` frames may wait for the line (a stop always gets in);
        ``close()`` waits up to ``drain_timeout`` for them."""
        self._head = head
        self._rate = rate
        self._burst = burst if burst is not None else max(1.0, rate)
        self._authorized = authorized
        self._move_timeout = move_timeout
        self._max_pending = max_pending
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._viewers: dict[str, _Viewer] = {}
        self._moving: str | None = None
        """The session whose move the head is doing (the deadman is armed for it)."""
        self._deadman: asyncio.TimerHandle | None = None
        self._pending: asyncio.Queue[_Write | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.frames_written = 0
        self.rate_limited = 0
        self.refused = 0
        """Messages ignored because the viewer is not (or no longer) in the ACL."""
        self.write_errors = 0
        self.deadman_stops = 0

    @property
    def head(self) -> PelcoD | None:
        return self._head

    @property
    def available(self) -> bool:
        return self._head is not None and not self._closed

    @property
    def moving(self) -> str | None:
        """The session whose move is running, if any."""
        return self._moving

    # -- channels ----------------------------------------------------------------

    def attach(self, channel: Any, session_id: str, viewer_key: str | None) -> None:
        """Serve ``channel`` (label ``ptz``) for this session; one per session."""
        if self._closed or session_id in self._viewers:
            logger.info("session %s: refusing a second (or late) ptz channel", session_id)
            channel.close()
            return
        self._viewers[session_id] = _Viewer(
            channel, viewer_key, TokenBucket(self._rate, self._burst)
        )

        def on_message(data: str | bytes) -> None:
            if self._is_current(session_id, channel):
                self._received(session_id, data)

        def on_close() -> None:
            if self._is_current(session_id, channel):
                self.session_closed(session_id)

        channel.on("message", on_message)
        channel.on("close", on_close)
        if channel.readyState == "open":
            self._say(channel, availability(self.available))
        else:
            channel.on("open", lambda: self._say(channel, availability(self.available)))

    def _is_current(self, session_id: str, channel: Any) -> bool:
        viewer = self._viewers.get(session_id)
        return viewer is not None and viewer.channel is channel

    def session_closed(self, session_id: str) -> None:
        """The session (or its channel) ended: forget it, and stop the head if it was
        this session's move. Safe to call more than once."""
        self._viewers.pop(session_id, None)
        if self._moving == session_id:
            logger.info("session %s closed while moving the head: stopping it", session_id)
            self._stop_motion()

    # -- messages ----------------------------------------------------------------

    def _received(self, session_id: str, data: str | bytes) -> None:
        viewer = self._viewers[session_id]
        if not self._authorized(viewer.viewer_key):
            self.refused += 1
            if not viewer.warned:
                viewer.warned = True
                logger.warning("session %s: control from a viewer not in the ACL: ignored",
                               session_id)
            if self._moving == session_id:
                self._stop_motion()  # revoked mid-move: do not leave it turning
            self._say(viewer.channel, error(NOT_AUTHORIZED))
            return
        if not viewer.bucket.allow(self._clock()):
            self.rate_limited += 1
            if not viewer.warned:
                viewer.warned = True
                logger.warning("session %s: control messages over %g/s: dropping the excess",
                               session_id, self._rate)
            self._say(viewer.channel, error(
                f"rate limited: at most {self._rate:g} control messages per second"))
            return
        try:
            command = parse_command(data)
        except BadControlMessage as exc:
            logger.debug("session %s: bad control message: %s", session_id, exc)
            self._say(viewer.channel, error(str(exc)))
            return
        if self._head is None:
            self._say(viewer.channel, error(NO_HEAD, command.op))
            return
        self._execute(session_id, command)

    def _execute(self, session_id: str, command: Command) -> None:
        assert self._head is not None
        frame = frame_for(command, self._head.address)
        stops = isinstance(command, Stop) or (isinstance(command, Move) and command.is_still)
        if not self._submit(_Write(frame, command.op, session_id), urgent=stops):
            return
        if isinstance(command, Move) and not command.is_still:
            self._moving = session_id
            self._arm_deadman()
        elif stops or (isinstance(command, Preset) and command.action == "goto"):
            # A goto drives the head by itself to the preset and stops there.
            self._moving = None
            self._disarm_deadman()

    # -- deadman -------------------------------------------------------------------

    def _arm_deadman(self) -> None:
        self._disarm_deadman()
        loop = asyncio.get_running_loop()
        self._deadman = loop.call_later(self._move_timeout, self._deadman_expired)

    def _disarm_deadman(self) -> None:
        if self._deadman is not None:
            self._deadman.cancel()
            self._deadman = None

    def _deadman_expired(self) -> None:
        self._deadman = None
        if self._moving is not None:
            logger.info("session %s: move not repeated within %.1f s: stopping the head",
                        self._moving, self._move_timeout)
            self.deadman_stops += 1
            self._stop_motion()

    def _stop_motion(self) -> None:
        """The camera's own stop (deadman, session gone, viewer revoked, shutdown)."""
        self._moving = None
        self._disarm_deadman()
        if self._head is not None:
            self._submit(_Write(frame_for(Stop(), self._head.address), "stop", None),
                         urgent=True)

    # -- the writer ------------------------------------------------------------------

    def _submit(self, write: _Write, *, urgent: bool) -> bool:
        """Queue a frame for the line; False (and an error reply) when it is backed up."""
        if self._closed or self._head is None:
            return False
        if self._pending is None:
            self._pending = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_frames(self._head, self._pending),
                                               name="ptz-writer")
        if self._pending.qsize() >= self._max_pending:
            if not urgent:
                self._reply(write.session_id, error("busy: the pan/tilt line is backed up",
                                                    write.op))
                return False
            # A stop overtakes the motion queued before it: what is waiting is stale.
            while not self._pending.empty():
                stale = self._pending.get_nowait()
                if stale is not None:
                    self._reply(stale.session_id, error("superseded by a stop", stale.op))
        self._pending.put_nowait(write)
        return True

    async def _write_frames(self, head: PelcoD, pending: asyncio.Queue[_Write | None]) -> None:
        while True:
            write = await pending.get()
            if write is None:
                return
            try:
                await asyncio.to_thread(head.send, write.frame)
            except (PelcoDError, OSError) as exc:  # serial.SerialException is an OSError
                self.write_errors += 1
                logger.error("pan/tilt head %d: cannot send %s: %s", head.address, write.op, exc)
                self._reply(write.session_id, error(f"pan/tilt head failed: {exc}", write.op))
                continue
            self.frames_written += 1
            self._reply(write.session_id, ack(write.op))

    def _reply(self, session_id: str | None, text: str) -> None:
        viewer = self._viewers.get(session_id) if session_id is not None else None
        if viewer is not None:
            self._say(viewer.channel, text)

    @staticmethod
    def _say(channel: Any, text: str) -> None:
        if channel.readyState != "open":
            return
        with contextlib.suppress(InvalidStateError, ConnectionError):
            channel.send(text)

    # -- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the head if it moves, let queued frames out (bounded), close the port.

        Safe twice; the writer task is joined before the port is closed.
        """
        if self._closed:
            return
        if self._moving is not None:
            self._stop_motion()
        self._disarm_deadman()
        self._closed = True
        self._viewers.clear()
        writer, pending = self._writer, self._pending
        if writer is not None and pending is not None:
            pending.put_nowait(None)
            done, _ = await asyncio.wait({writer}, timeout=self._drain_timeout)
            if not done:
                logger.warning("pan/tilt line still busy after %.1f s: giving up",
                               self._drain_timeout)
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._head is not None:
            self._head.close()
