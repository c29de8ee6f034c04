"""One encode, many viewers.

The source publishes each access unit once; every viewer has a small bounded
queue. A viewer that falls behind loses its backlog and waits for the next
keyframe instead of buffering (live video drops, never queues without bound).
Keyframe requests from joins, PLI/FIR and unservable NACKs are coalesced and
rate-limited here, so one bad viewer cannot turn every frame into an IDR.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from camera.frames import EncodedFrame
from camera.h264 import find_sps, profile_level_id
from services.ratelimit import TokenBucket

logger = logging.getLogger(__name__)


class Subscription:
    """One viewer's view of the stream: a bounded queue that restarts at keyframes."""

    def __init__(self, broadcaster: Broadcaster, max_frames: int) -> None:
        self._broadcaster = broadcaster
        self._queue: deque[EncodedFrame] = deque()
        self._max_frames = max_frames
        self._waiter: asyncio.Future[None] | None = None
        self.waiting_for_keyframe = True
        self.closed = False
        self.frames_sent = 0
        self.frames_dropped = 0

    def _offer(self, frame: EncodedFrame) -> None:
        if self.waiting_for_keyframe:
            if not frame.keyframe:
                self.frames_dropped += 1
                return
            self.waiting_for_keyframe = False
        if len(self._queue) >= self._max_frames:
            # Behind: a decoder cannot skip P-frames, so drop all and restart at an IDR.
            self.frames_dropped += len(self._queue) + 1
            self._queue.clear()
            self.waiting_for_keyframe = True
            self._broadcaster.request_keyframe("slow viewer")
            return
        self._queue.append(frame)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> EncodedFrame:
        """The next frame for this viewer; raises ConnectionError once closed."""
        while not self._queue:
            if self.closed:
                raise ConnectionError("subscription closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.frames_sent += 1
        return self._queue.popleft()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Leave the broadcast; a pending ``get`` raises ConnectionError. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._broadcaster._subscribers.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Broadcaster:
    """Fans one encoded stream out to every subscribed viewer."""

    def __init__(
        self,
        request_source_keyframe: Callable[[], None],
        *,
        max_queue_frames: int = 8,
        keyframe_rate: float = 2.0,
        keyframe_burst: float = 2.0,
    ) -> None:
        self._request_source_keyframe = request_source_keyframe
        self._max_queue_frames = max_queue_frames
        # A burst lets two viewers joining together both start at once; the rate
        # caps what a PLI-flooding viewer can cost everyone (IDRs are ~10x P-frames).
        self._keyframe_bucket = TokenBucket(keyframe_rate, keyframe_burst)
        self._subscribers: set[Subscription] = set()
        self._pending: asyncio.TimerHandle | None = None
        self.profile_level_id: str | None = None
        self.frames_published = 0
        self.keyframes_published = 0
        self.keyframe_requests = 0
        self.keyframe_requests_sent = 0
        self.last_frame_time: float | None = None
        self._recent: deque[float] = deque(maxlen=256)

    def recent_fps(self, now: float, window: float = 2.0) -> float:
        """Frames per second published over the last ``window`` seconds."""
        count = sum(1 for t in self._recent if now - t <= window)
        return count / window

    def publish(self, frame: EncodedFrame) -> None:
        """Hand one access unit to every viewer. Event loop thread only."""
        self.frames_published += 1
        self.last_frame_time = asyncio.get_running_loop().time()
        self._recent.append(self.last_frame_time)
        if frame.keyframe:
            self.keyframes_published += 1
            sps = find_sps(frame.data)
            if sps is not None:
                self.profile_level_id = profile_level_id(sps)
        for sub in list(self._subscribers):
            sub._offer(frame)

    def subscribe(self) -> Subscription:
        """Join the broadcast; the viewer starts at a fresh IDR, asked for now."""
        sub = Subscription(self, self._max_queue_frames)
        self._subscribers.add(sub)
        self.request_keyframe("viewer joined")
        return sub

    @property
    def viewer_count(self) -> int:
        return len(self._subscribers)

    def request_keyframe(self, reason: str) -> None:
        """Ask the source for an IDR, rate-limited by a token bucket.

        A request over the limit is not lost: one IDR is scheduled for when the
        next token arrives, however many requests come in meanwhile.
        """
        self.keyframe_requests += 1
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._keyframe_bucket.wait_time(loop.time())
        if wait <= 0:
            self._fire(reason)
        else:
            logger.debug("keyframe request (%s) deferred %.3f s", reason, wait)
            self._pending = loop.call_later(wait, self._fire, reason)

    def _fire(self, reason: str) -> None:
        self._pending = None
        self._keyframe_bucket.allow(asyncio.get_running_loop().time())
        self.keyframe_requests_sent += 1
        logger.debug("keyframe requested: %s", reason)
        self._request_source_keyframe()

    def close(self) -> None:
        """End every subscription and any pending request. Idempotent."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for sub in list(self._subscribers):
            sub.close()
