"""``peercam view --record``: received H.264 into one MP4, across sessions, no transcoding.

Each access unit is muxed as it arrived (Annex-B in, PyAV's mp4 muxer makes
the samples; the first IDR's SPS/PPS become the file's ``avcC``). A healed run
goes on in the same file: the new session's frames are taken from its first
IDR (which carries SPS/PPS in-band), and its RTP timestamps (a new random
origin) are rebased so that the file's clock runs on by the wall-clock time
that passed: the outage is a gap in the file, not a jump or an overlap.

The one exception: a new session whose SPS differs from the file's (the
camera came back with another resolution or profile) cannot go on in a file
whose ``avcC`` describes the old stream, so it starts a numbered segment next
to it (``clip.mp4``, then ``clip.2.mp4``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from camera.client.errors import RecordingFailed
from camera.h264 import find_sps, is_idr

logger = logging.getLogger(__name__)

CLOCK = 90_000
"""RTP's video clock (RFC 3551): the file's time base too."""
MIN_STEP = CLOCK // 60
"""The least a rebased session's first frame follows the last one by (one frame at 60 fps)."""


class Mp4Recorder:
    """Writes received H.264 access units into an MP4 without transcoding.

    The first write that fails stops the recording: ``error`` says why and
    ``on_error`` (if given) is called once, so the viewing can end with it.
    """

    def __init__(
        self,
        path: Path,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.paths: list[Path] = []
        """Every file written, in order (one unless the stream's SPS changed)."""
        self.error: str | None = None
        self._on_error = on_error
        self._clock = clock
        self._container: Any = None
        self._stream: Any = None
        self._sps: bytes | None = None
        self._session: int | None = None
        self._origin = 0
        """RTP timestamp of the current session's first recorded frame."""
        self._offset = 0
        """File time of that frame (90 kHz)."""
        self._last_pts: int | None = None
        self._last_wall = 0.0
        self.frames = 0
        self.sessions = 0
        """Sessions that contributed frames."""

    @staticmethod
    def check(path: Path) -> None:
        """Refuse a path that cannot be written before anything connects."""
        parent = path.parent
        if path.is_dir():
            raise RecordingFailed(f"cannot record to {path}: it is a directory")
        if not parent.is_dir():
            raise RecordingFailed(f"cannot record to {path}: no directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)
        ):
            raise RecordingFailed(f"cannot record to {path}: permission denied")

    def write(self, data: bytes, timestamp: int, session: int = 0) -> None:
        """One access unit (Annex-B) of ``session`` with its 90 kHz RTP timestamp.

        A session starts being recorded at its first IDR; frames before it are skipped.
        """
        if self.error is not None:
            return
        try:
            self._write(data, timestamp, session)
        except Exception as exc:  # any failure ends the recording, once
            self.error = f"recording to {self.path} failed: {exc}"
            logger.error("%s", self.error)
            with contextlib.suppress(Exception):
                self.close()
            if self._on_error is not None:
                self._on_error(self.error)

    def _write(self, data: bytes, timestamp: int, session: int) -> None:
        now = self._clock()
        if session != self._session:
            if not is_idr(data):
                return
            self._begin_session(data, timestamp, session, now)
        pts = self._offset + (timestamp - self._origin) % (1 << 32)
        if self._last_pts is not None and pts <= self._last_pts:
            return  # a reordered or repeated frame: the muxer needs rising timestamps
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, CLOCK)
        packet.stream = self._stream
        packet.is_keyframe = is_idr(data)
        self._container.mux(packet)
        self._last_pts, self._last_wall = pts, now
        self.frames += 1

    def _begin_session(self, idr: bytes, timestamp: int, session: int, now: float) -> None:
        sps = find_sps(idr)
        if self._container is not None and sps is not None and sps != self._sps:
            logger.info("the stream's parameters changed: recording goes on in a new file")
            self.close()
        if self._container is None:
            self._open(len(self.paths) + 1)
            self._sps = sps
            self._offset, self._last_pts = 0, None
        elif self._last_pts is not None:
            # The file's clock runs on by the time that passed: the outage shows as a gap.
            gap = round((now - self._last_wall) * CLOCK)
            self._offset = self._last_pts + max(MIN_STEP, gap)
        self._session, self._origin = session, timestamp
        self.sessions += 1

    def _open(self, number: int) -> None:
        path = self.path if number == 1 else self.path.with_suffix(f".{number}{self.path.suffix}")
        self._container = av.open(str(path), mode="w", format="mp4")
        self._stream = self._container.add_stream("h264", rate=30)
        self._stream.time_base = Fraction(1, CLOCK)
        self.paths.append(path)

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()
