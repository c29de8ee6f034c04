"""One encode per layer, many viewers.

The source publishes each access unit once, tagged with its layer (the
configured stream, and the smaller low layer where the source makes one). Every
viewer is on one layer at a time and has a small bounded queue. A viewer that
falls behind loses its backlog and waits for its layer's next keyframe instead
of buffering (live video drops, never queues without bound).

A viewer moves to another layer only at that layer's IDR (asked for when the
move is decided): its queue keeps the old layer's frames from before the IDR's
picture, then goes on with the new layer. It sees one stream whose picture size
changes at an IDR, which carries the new SPS/PPS.

Keyframe requests from joins, switches, PLI/FIR and unservable NACKs go to the
viewer's layer, coalesced and rate-limited per layer, so one bad viewer cannot
turn every frame of a layer into an IDR.

A viewer's join is prepared when its offer arrives (:meth:`Broadcaster.prepare_join`):
the IDR is asked for then, while ICE and DTLS are still being set up, and the
layer keeps the frames since its last IDR for a moment; a viewer whose
connection comes up within :data:`WARM_JOIN_S` of that IDR starts with them
(:meth:`Broadcaster.subscribe` ``warm=True``) instead of asking for another and
waiting for the source's next frame and its encode; one whose connection comes up
before that IDR takes it when it comes, without asking for a second.

Each access unit is cut into RTP payloads once per layer, for every viewer on
that layer (:meth:`Broadcaster.payloads`): a viewer's sender adds only its own
RTP header fields and SRTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from camera.frames import EncodedFrame, Layer
from camera.h264 import find_sps, profile_level_id
from services.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

P = TypeVar("P")


class Subscription:
    """One viewer's view of the stream: a bounded queue on one layer, restarting at
    keyframes, that moves to another layer at that layer's IDR."""

    def __init__(self, broadcaster: Broadcaster, layer: Layer, max_frames: int) -> None:
        self._broadcaster = broadcaster
        self._queue: deque[EncodedFrame] = deque()
        self._max_frames = max_frames
        self._waiter: asyncio.Future[None] | None = None
        self.layer = layer
        """The layer whose frames this viewer gets now."""
        self.target: Layer | None = None
        """A layer this viewer moves to at its next IDR (None: no move pending)."""
        self.waiting_for_keyframe = True
        self.closed = False
        self.frames_sent = 0
        self.frames_dropped = 0
        self.switches = 0
        """Moves from one layer to another so far."""

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
            self.request_keyframe("slow viewer")
            return
        self._enqueue(frame)

    def _switch(self, frame: EncodedFrame) -> None:
        """The target layer's IDR: from here on this viewer is on that layer."""
        old, self.layer, self.target = self.layer, frame.layer, None
        self._broadcaster._move(self, old, frame.layer)
        # The old layer's picture of the same moment (or later) must not go out too.
        kept = [f for f in self._queue if f.pts < frame.pts]
        self.frames_dropped += len(self._queue) - len(kept)
        self._queue = deque(kept)
        self.switches += 1
        self.waiting_for_keyframe = False
        logger.debug("viewer moved from the %s layer to the %s layer", old.label,
                     frame.layer.label)
        self._offer(frame)

    def _enqueue(self, frame: EncodedFrame) -> None:
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

    def switch_to(self, layer: Layer) -> bool:
        """Move to ``layer`` at its next IDR (asked for now); True if a move is pending.

        Asking for the current layer cancels a pending move; a layer the source
        does not make is refused (False).
        """
        if self.closed or layer not in self._broadcaster.layers:
            return False
        if layer is self.layer:
            if self.target is not None:
                self._broadcaster._cancel_switch(self)
                self.target = None
            return False
        if self.target is layer:
            return True
        if self.target is not None:
            self._broadcaster._cancel_switch(self)
        self.target = layer
        self._broadcaster._await_switch(self, layer)
        self._broadcaster.request_keyframe("layer switch", layer)
        return True

    def request_keyframe(self, reason: str) -> None:
        """An IDR on this viewer's layer (PLI/FIR, NACK beyond history, fell behind)."""
        self._broadcaster.request_keyframe(reason, self.layer)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Leave the broadcast; a pending ``get`` raises ConnectionError. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._broadcaster._leave(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


PACKETIZED_KEPT = 16
"""Access units per layer whose RTP payloads are kept for viewers still to send them:
more than a viewer's queue holds, so a viewer behind by its whole queue still shares."""


WARM_JOIN_S = 0.25
"""How old a layer's last IDR may be for a joining viewer to start from it (with the
frames since) rather than ask for a new one: about the time from an offer to its
DTLS handshake on a direct path. Older, the burst would start the viewer's
playout that far behind live."""


JOIN_TAKES_ASKED_IDR = True
"""A viewer joining (``subscribe(warm=True)``) while an IDR asked for at most
:data:`WARM_JOIN_S` ago has not come yet starts from it instead of asking for
another (False: it asks again, as before; benchmarks compare the two)."""


class LayerFeed:
    """One layer's fan-out state: its viewers, its keyframe budget, its counters."""

    def __init__(self, layer: Layer, keyframe_rate: float, keyframe_burst: float) -> None:
        self.layer = layer
        self.subscribers: set[Subscription] = set()
        self.switching: set[Subscription] = set()
        """Viewers waiting for this layer's next IDR to move onto it."""
        # A burst lets two viewers joining together both start at once; the rate
        # caps what a PLI-flooding viewer can cost everyone (IDRs are ~10x P-frames).
        self.bucket = TokenBucket(keyframe_rate, keyframe_burst)
        self.pending: asyncio.TimerHandle | None = None
        self.profile_level_id: str | None = None
        self.frames_published = 0
        self.bytes_published = 0
        self.keyframes_published = 0
        self.keyframe_bytes = 0
        """Bytes of the last IDR access unit (what a viewer moving here gets at once)."""
        self.keyframe_requests = 0
        self.keyframe_requests_sent = 0
        self.last_frame_time: float | None = None
        self.recent: deque[float] = deque(maxlen=256)
        self.packetized: deque[tuple[EncodedFrame, object]] = deque(maxlen=PACKETIZED_KEPT)
        """The last access units' RTP payloads, cut once for every viewer (newest last)."""
        self.packetizations = 0
        self.gop: list[EncodedFrame] = []
        """The frames since the last IDR (IDR first), while it is younger than
        :data:`WARM_JOIN_S`; empty otherwise."""
        self.gop_started = 0.0
        """Loop time at which that IDR was published."""
        self.warm_joins = 0
        """Viewers that started from a kept IDR instead of asking for one."""
        self.idr_asked_at: float | None = None
        """Loop time a keyframe request last went to the source, until an IDR comes."""
        self.joins_waiting = 0
        """Viewers that joined while an IDR asked for was on its way, and took it
        instead of asking for another."""

    def recent_fps(self, now: float, window: float = 2.0) -> float:
        return sum(1 for t in self.recent if now - t <= window) / window


class Broadcaster:
    """Fans each layer's encoded stream out to the viewers on that layer."""

    def __init__(
        self,
        request_source_keyframe: Callable[[Layer], None],
        *,
        layers: Sequence[Layer] = (Layer.HIGH,),
        max_queue_frames: int = 8,
        keyframe_rate: float = 2.0,
        keyframe_burst: float = 2.0,
    ) -> None:
        """``request_source_keyframe(layer)`` asks the source for an IDR on one layer;
        ``layers`` are the ones the source makes, best first."""
        if not layers:
            raise ValueError("a broadcaster needs at least one layer")
        self._request_source_keyframe = request_source_keyframe
        self._max_queue_frames = max_queue_frames
        self.layers: tuple[Layer, ...] = tuple(layers)
        self._feeds = {layer: LayerFeed(layer, keyframe_rate, keyframe_burst)
                       for layer in self.layers}

    def feed(self, layer: Layer) -> LayerFeed:
        """One layer's state and counters; KeyError for a layer the source does not make."""
        return self._feeds[layer]

    @property
    def _top(self) -> LayerFeed:
        return self._feeds[self.layers[0]]

    # The picture counters are the top layer's (every layer carries the same pictures).

    @property
    def profile_level_id(self) -> str | None:
        """The top layer's (every layer is Constrained Baseline; its level is the highest)."""
        return self._top.profile_level_id

    @property
    def frames_published(self) -> int:
        return self._top.frames_published

    @property
    def last_frame_time(self) -> float | None:
        return self._top.last_frame_time

    def recent_fps(self, now: float, window: float = 2.0) -> float:
        """Pictures per second published over the last ``window`` seconds (top layer)."""
        return self._top.recent_fps(now, window)

    # The keyframe counters add up every layer's.

    @property
    def keyframes_published(self) -> int:
        return sum(f.keyframes_published for f in self._feeds.values())

    @property
    def keyframe_requests(self) -> int:
        return sum(f.keyframe_requests for f in self._feeds.values())

    @property
    def keyframe_requests_sent(self) -> int:
        return sum(f.keyframe_requests_sent for f in self._feeds.values())

    @property
    def viewer_count(self) -> int:
        return sum(len(f.subscribers) for f in self._feeds.values())

    def publish(self, frame: EncodedFrame) -> None:
        """Hand one access unit to every viewer on its layer. Event loop thread only."""
        feed = self._feeds.get(frame.layer)
        if feed is None:
            return  # a layer nobody set up (a source making more than it said)
        feed.frames_published += 1
        feed.bytes_published += len(frame.data)
        feed.last_frame_time = asyncio.get_running_loop().time()
        feed.recent.append(feed.last_frame_time)
        switched: set[Subscription] = set()
        if frame.keyframe:
            feed.gop, feed.gop_started = [frame], feed.last_frame_time
            feed.idr_asked_at = None
        elif feed.gop:
            if feed.last_frame_time - feed.gop_started <= WARM_JOIN_S:
                feed.gop.append(frame)
            else:
                feed.gop = []
        if frame.keyframe:
            feed.keyframes_published += 1
            feed.keyframe_bytes = len(frame.data)
            sps = find_sps(frame.data)
            if sps is not None:
                feed.profile_level_id = profile_level_id(sps)
            switched = set(feed.switching)
            for sub in switched:
                sub._switch(frame)  # the IDR is its first frame on this layer
        for sub in list(feed.subscribers):
            if sub not in switched:
                sub._offer(frame)

    def payloads(self, frame: EncodedFrame, packetize: Callable[[bytes], P]) -> P:
        """``packetize(frame.data)``, computed once per access unit for all its viewers.

        Kept for the last :data:`PACKETIZED_KEPT` access units of the frame's layer
        (found by identity: every viewer on a layer gets the same frame objects).
        A frame of a layer nobody set up is packetized and not kept."""
        feed = self._feeds.get(frame.layer)
        if feed is None:
            return packetize(frame.data)
        for known, payloads in reversed(feed.packetized):
            if known is frame:
                return payloads  # type: ignore[return-value]
        made = packetize(frame.data)
        feed.packetized.append((frame, made))
        feed.packetizations += 1
        return made

    def subscribe(self, layer: Layer | None = None, *, warm: bool = False) -> Subscription:
        """Join the broadcast on ``layer`` (default: the top one) at a fresh IDR, asked
        for now.

        ``warm``: if the layer's last IDR is at most :data:`WARM_JOIN_S` old (the one
        :meth:`prepare_join` asked for), start from it and the frames since instead.
        """
        layer = self.layers[0] if layer is None else layer
        feed = self._feeds[layer]
        sub = Subscription(self, layer, self._max_queue_frames)
        feed.subscribers.add(sub)
        now = asyncio.get_running_loop().time()
        if (warm and feed.gop and now - feed.gop_started <= WARM_JOIN_S
                and len(feed.gop) <= self._max_queue_frames // 2):
            sub.waiting_for_keyframe = False
            for frame in feed.gop:
                sub._enqueue(frame)
            feed.warm_joins += 1
            logger.debug("viewer joined the %s layer at an IDR %.0f ms old (%d frames)",
                         layer.label, (now - feed.gop_started) * 1000, len(feed.gop))
        elif (warm and JOIN_TAKES_ASKED_IDR and feed.idr_asked_at is not None
              and now - feed.idr_asked_at <= WARM_JOIN_S):
            # The IDR prepare_join asked for is being made (the connection came up
            # first): it is this viewer's first frame. Asking again would cost a
            # second IDR, encoded while the first is sent and decoded, and a token.
            feed.joins_waiting += 1
            logger.debug("viewer joined the %s layer; the IDR asked %.0f ms ago is coming",
                         layer.label, (now - feed.idr_asked_at) * 1000)
        else:
            self.request_keyframe("viewer joined", layer)
        return sub

    def prepare_join(self, layer: Layer | None = None) -> None:
        """A viewer's offer arrived: ask for the IDR it will start from now, so that
        it is encoded while ICE and DTLS are set up (see ``subscribe(warm=True)``)."""
        self.request_keyframe("viewer joining", layer)

    def _move(self, sub: Subscription, old: Layer, new: Layer) -> None:
        self._feeds[old].subscribers.discard(sub)
        self._feeds[new].switching.discard(sub)
        self._feeds[new].subscribers.add(sub)

    def _await_switch(self, sub: Subscription, layer: Layer) -> None:
        self._feeds[layer].switching.add(sub)

    def _cancel_switch(self, sub: Subscription) -> None:
        for feed in self._feeds.values():
            feed.switching.discard(sub)

    def _leave(self, sub: Subscription) -> None:
        for feed in self._feeds.values():
            feed.subscribers.discard(sub)
            feed.switching.discard(sub)

    def request_keyframe(self, reason: str, layer: Layer | None = None) -> None:
        """Ask the source for an IDR on ``layer`` (default: the top one), rate-limited
        per layer by a token bucket.

        A request over the limit is not lost: one IDR is scheduled for when the
        next token arrives, however many requests come in meanwhile.
        """
        feed = self._feeds.get(self.layers[0] if layer is None else layer)
        if feed is None:
            return
        feed.keyframe_requests += 1
        if feed.pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = feed.bucket.wait_time(loop.time())
        if wait <= 0:
            self._fire(feed, reason)
        else:
            logger.debug("keyframe request (%s, %s layer) deferred %.3f s", reason,
                         feed.layer.label, wait)
            feed.pending = loop.call_later(wait, self._fire, feed, reason)

    def _fire(self, feed: LayerFeed, reason: str) -> None:
        feed.pending = None
        feed.bucket.allow(asyncio.get_running_loop().time())
        feed.keyframe_requests_sent += 1
        feed.idr_asked_at = asyncio.get_running_loop().time()
        logger.debug("keyframe requested on the %s layer: %s", feed.layer.label, reason)
        self._request_source_keyframe(feed.layer)

    def close(self) -> None:
        """End every subscription and any pending request. Idempotent."""
        for feed in self._feeds.values():
            if feed.pending is not None:
                feed.pending.cancel()
                feed.pending = None
            for sub in list(feed.subscribers | feed.switching):
                sub.close()
