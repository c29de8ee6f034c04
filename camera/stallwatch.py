"""Where the event loop was when it stopped ticking.

Everything the camera does runs on one asyncio loop; a call that blocks it (a
disk write on a dying SD card, a slow DNS lookup, a CPU-bound step) freezes every
session at once. The supervisor sees such a stall only after it ends, by its
tick coming late. This thread looks while it lasts: when the loop has not beaten
for ``limit`` seconds it reads the loop thread's stack, so the journal can say
where the loop was, not only that it was stuck. A stack whose innermost frame is the
selector's wait means the loop was idle: the process did not get the CPU, or the
caller's own beat waited on something it awaited.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType

FRAMES_SHOWN = 4
"""Innermost frames of the loop thread's stack named in a stall's description."""


def describe(frame: FrameType, depth: int = FRAMES_SHOWN) -> str:
    """``file:line function`` for the innermost ``depth`` frames, innermost first."""
    summary = traceback.extract_stack(frame)[-depth:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(summary))


class StallWatch:
    """Samples the stack of the thread that calls :meth:`beat` when it stops calling.

    :meth:`beat` is called from the loop (every tick); it returns where the loop was
    during the stall that ended, if the watch saw one.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._ident = threading.get_ident()
        self._beat = time.monotonic()
        self._seen: tuple[float, str] | None = None
        """(the beat the stall followed, where the loop was)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peercam-stallwatch",
                                        daemon=True)

    def start(self) -> None:
        self._ident = threading.get_ident()
        self._beat = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> str | None:
        with self._lock:
            last, self._beat = self._beat, time.monotonic()
            seen, self._seen = self._seen, None
        return seen[1] if seen is not None and seen[0] == last else None

    def _watch(self) -> None:
        while not self._stop.wait(self.limit / 4):
            with self._lock:
                beat = self._beat
                if self._seen is not None or time.monotonic() - beat < self.limit:
                    continue
            frame = sys._current_frames().get(self._ident)
            if frame is None:
                return  # the loop's thread is gone
            where = describe(frame)
            del frame
            with self._lock:
                if self._beat == beat:
                    self._seen = (beat, where)
