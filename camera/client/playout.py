"""When the CLI viewer hands a frame to its decoder, and which packets it asks again: sans-I/O.

aiortc 1.16's receiver, as shipped, waits for every missing packet: its jitter
buffer holds every later frame behind a gap until the gap fills or 512 packets
pile up behind it (seconds at 720p), and its NACK generator asks again for the
missing packets only when a new gap appears. Over a lossy link that is a stall
whenever a packet and its retransmission are both lost.

:class:`Playout` is one video stream's receive side:

* **NACK at once, then again at RTT intervals.** A gap is NACKed with the packet
  that reveals it, then every ``max(renack_min, rtt x renack_factor)`` while it
  can still help: not once its frame was given up, and not beyond the sender's
  retransmit history (``history`` packets behind the newest).
* **Bounded wait.** A frame whose packet is missing waits at most ``wait`` from
  the moment the gap was seen: ``rtt x wait_factor + margin``, clamped to
  [``min_wait``, ``max_wait``]. The round-trip time is learnt from NACKed
  packets that come back (sent once only: Karn's rule), starting at ``initial_rtt``.
* **Skip, then a keyframe.** Past that deadline the frame is dropped and the
  buffer moves on to the next frame; a dropped frame was a reference (every
  P-frame of the camera's encoders is), so the frames after it would decode to
  garbage: they are dropped too until an IDR arrives, and a keyframe is asked
  for once (again every ``keyframe_retry`` while none comes; not while one that
  began arriving after the request is still being repaired, up to
  ``keyframe_wait``).
* **Complete frames go at once**: the packets from the head through a marker
  bit, one timestamp, no gap.

Everything takes the time as an argument; the adapters in
:mod:`camera.client.receiver` feed it aiortc's packets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from camera.errors import PeercamError

SEQ_MOD = 1 << 16
OVERFLOW = 512
"""Packets held behind a gap before the head frame is dropped whatever the settings
(aiortc's video jitter buffer holds as many)."""


class BadReceiveSettings(PeercamError, ValueError):
    """A receive setting out of range."""


@dataclass(frozen=True)
class ReceiveSettings:
    """How the CLI viewer's receiver waits, asks again and skips.

    ``playout=False`` and ``nack=False`` give aiortc's behaviour as it was before
    (release on the marker bit, wait for every retransmission; NACK a gap's
    packets again only when a new gap appears): benchmarks compare the two.
    """

    playout: bool = True
    """Bounded waits and skipping to the next decodable frame (False: wait for every packet)."""
    nack: bool = True
    """NACK on a gap and again at RTT intervals (False: aiortc's NACK generator)."""
    initial_rtt: float = 0.1
    """Round-trip time assumed until a retransmission has been timed (seconds)."""
    wait_factor: float = 1.5
    margin: float = 0.03
    """A frame with a missing packet waits rtt x wait_factor + margin (seconds) ..."""
    min_wait: float = 0.04
    max_wait: float = 0.4
    """... clamped to these bounds (seconds)."""
    renack_factor: float = 1.0
    renack_min: float = 0.01
    """A packet is NACKed again after max(renack_min, rtt x renack_factor) seconds."""
    keyframe_retry: float = 0.5
    """Seconds between keyframe requests while waiting for one."""
    keyframe_wait: float = 2.0
    """While the stream waits for an IDR, an IDR with a missing packet waits this long
    (seconds) instead of ``wait``: giving it up would only ask for another as big."""
    history: int = 128
    """Packets the sender keeps for retransmission (aiortc: 128); older ones are not NACKed."""

    def __post_init__(self) -> None:
        for name in ("initial_rtt", "wait_factor", "margin", "min_wait", "max_wait",
                     "renack_factor", "renack_min", "keyframe_retry", "keyframe_wait"):
            value = getattr(self, name)
            if not 0 <= value <= 10:
                raise BadReceiveSettings(f"{name} {value!r}: need 0..10")
        if self.min_wait > self.max_wait:
            raise BadReceiveSettings(f"min_wait {self.min_wait} > max_wait {self.max_wait}")
        if not 1 <= self.history <= 32768:
            raise BadReceiveSettings(f"history {self.history}: need 1..32768")


@dataclass(frozen=True)
class Packet:
    """What the playout needs of one RTP packet."""

    seq: int
    """16-bit RTP sequence number."""
    timestamp: int
    marker: bool
    keyframe_start: bool = False
    """The packet starts an IDR picture (an SPS, PPS or IDR slice NAL in its payload)."""
    payload: bytes = b""


@dataclass(frozen=True)
class Frame:
    """A complete access unit released to the decoder."""

    timestamp: int
    data: bytes
    keyframe: bool


@dataclass
class PlayoutCounters:
    """What the playout did so far (the viewer's ``--json`` stats report them)."""

    frames: int = 0
    """Frames released to the decoder."""
    skipped: int = 0
    """Frames given up at their deadline (a packet never came)."""
    dropped_for_keyframe: int = 0
    """Complete frames dropped while waiting for an IDR after a skip."""
    nacks: int = 0
    """NACK messages sent."""
    nacked_packets: int = 0
    """Sequence numbers asked for (repeats included)."""
    recovered: int = 0
    """NACKed packets that came back in time."""
    late: int = 0
    """Packets that came after their frame was released or given up."""
    keyframe_requests: int = 0
    waited_ms_max: float = 0.0
    """Longest a frame was held for a missing packet before it was released or skipped."""


@dataclass
class _Missing:
    seen_at: float
    sent_at: float | None = None
    sends: int = 0


@dataclass
class Playout:
    """One video stream's bounded jitter buffer and NACK schedule (see the module doc)."""

    settings: ReceiveSettings = field(default_factory=ReceiveSettings)
    on_keyframe_request: Callable[[], None] | None = None
    counters: PlayoutCounters = field(default_factory=PlayoutCounters)
    rtt: float | None = None
    """Smoothed round-trip time from timed retransmissions (None: none yet)."""

    def __post_init__(self) -> None:
        self._packets: dict[int, Packet] = {}
        self._arrived: dict[int, float] = {}
        self._missing: dict[int, _Missing] = {}
        self._head: int | None = None
        """Unwrapped sequence number of the first packet not yet released or given up."""
        self._head_starts_frame = False
        """Whether the head is known to be a frame's first packet (it follows a marker)."""
        self._newest: int | None = None
        self._awaiting_keyframe = False
        self._asked_at: float | None = None
        self._ready: list[Frame] = []
        self._key_timestamps: dict[int, None] = {}
        """RTP timestamps of IDRs whose first packet came (the latest few, oldest first)."""
        self._key_began_at: float | None = None
        """When the first packet of the newest IDR came."""

    # -- the clock-driven parts ----------------------------------------------------

    @property
    def current_rtt(self) -> float:
        return self.settings.initial_rtt if self.rtt is None else self.rtt

    @property
    def wait(self) -> float:
        """How long a frame may wait for a missing packet, from when the gap was seen."""
        s = self.settings
        return min(s.max_wait, max(s.min_wait, self.current_rtt * s.wait_factor + s.margin))

    @property
    def renack_interval(self) -> float:
        s = self.settings
        return max(s.renack_min, self.current_rtt * s.renack_factor)

    @property
    def awaiting_keyframe(self) -> bool:
        return self._awaiting_keyframe

    def _unwrap(self, seq: int) -> int:
        if self._newest is None:
            return seq
        delta = (seq - self._newest) % SEQ_MOD
        if delta >= SEQ_MOD // 2:
            delta -= SEQ_MOD
        return self._newest + delta

    # -- packets in ------------------------------------------------------------------

    def observe(self, seq16: int, now: float) -> int:
        """A packet with this sequence number arrived: note gaps it reveals and a gap it
        fills (timing the round trip). Idempotent; returns the unwrapped number."""
        seq = self._unwrap(seq16)
        if self._head is None or self._newest is None:
            self._head = self._newest = seq
            return seq
        if seq > self._newest:
            if seq - self._newest > 4 * self.settings.history:
                self._restart(seq)  # a jump no gap filling could bridge
            else:
                for lost in range(self._newest + 1, seq):
                    self._missing[lost] = _Missing(now)
            self._newest = seq
        missing = self._missing.pop(seq, None)
        if missing is not None and missing.sends:
            if seq >= self._head:
                self.counters.recovered += 1
            if missing.sends == 1 and missing.sent_at is not None:
                sample = now - missing.sent_at
                self.rtt = sample if self.rtt is None else 0.875 * self.rtt + 0.125 * sample
        return seq

    def add(self, packet: Packet, now: float) -> None:
        """A packet arrived (a retransmission included); frames it completes become ready."""
        seq = self.observe(packet.seq, now)
        assert self._head is not None
        if seq < self._head or seq in self._packets:
            self.counters.late += seq < self._head
            return
        self._packets[seq] = packet
        self._arrived[seq] = now
        if packet.keyframe_start:
            if packet.timestamp not in self._key_timestamps:
                self._key_began_at = now
            self._key_timestamps[packet.timestamp] = None
            if len(self._key_timestamps) > 8:
                del self._key_timestamps[next(iter(self._key_timestamps))]
        self._release(now)

    def _restart(self, seq: int) -> None:
        self._packets.clear()
        self._arrived.clear()
        self._missing.clear()
        self._head = seq
        self._head_starts_frame = False
        self._skip_to_keyframe()

    def due_nacks(self, now: float) -> list[int]:
        """The 16-bit sequence numbers to NACK now (marked as sent)."""
        if not self.settings.nack or self._newest is None or self._head is None:
            return []
        oldest = max(self._head, self._newest - self.settings.history + 1)
        interval = self.renack_interval
        due = []
        for seq in list(self._missing):
            if seq < oldest:
                del self._missing[seq]  # given up, or gone from the sender's history
                continue
            entry = self._missing[seq]
            if self._awaiting_keyframe and self.settings.playout and not self._in_keyframe(seq):
                continue  # its frame would be dropped anyway: leave the link to the IDR
            if entry.sent_at is None or now - entry.sent_at >= interval:
                entry.sent_at, entry.sends = now, entry.sends + 1
                due.append(seq % SEQ_MOD)
        if due:
            self.counters.nacks += 1
            self.counters.nacked_packets += len(due)
        return due

    def poll(self, now: float) -> None:
        """Apply deadlines that passed (the adapters call this with every packet)."""
        self._release(now)

    def take(self) -> Frame | None:
        """The oldest frame ready for the decoder, if any."""
        return self._ready.pop(0) if self._ready else None

    # -- releasing -------------------------------------------------------------------

    def _release(self, now: float) -> None:
        self._release_ready(now)
        if self._awaiting_keyframe:
            self._ask_keyframe(now)  # also while a frame waits at the head

    def _release_ready(self, now: float) -> None:
        while self._head is not None and self._newest is not None and self._head <= self._newest:
            frame_end = self._complete_frame()
            if frame_end is not None:
                self._emit(frame_end, now)
                continue
            gap_seen = self._head_gap_seen()
            if gap_seen is None:
                return  # the head frame is still arriving (no packet missing yet)
            overflow = self._newest - self._head >= OVERFLOW
            wait = self.wait
            if self._awaiting_keyframe and self._in_latest_keyframe(self._head):
                wait = max(wait, self.settings.keyframe_wait)
            if overflow or self.settings.playout and now >= gap_seen + wait:
                self._give_up_head(now, gap_seen)
                continue
            return

    def _in_keyframe(self, seq: int) -> bool:
        """Whether a (missing or present) packet is part of an IDR whose start came:
        the nearest packet after it is one, or the nearest before it is one and not
        its last."""
        assert self._newest is not None and self._head is not None
        for after in range(seq, min(self._newest, seq + 512) + 1):
            packet = self._packets.get(after)
            if packet is not None:
                if packet.timestamp in self._key_timestamps:
                    return True
                break
        for before in range(seq - 1, max(self._head, seq - 512) - 1, -1):
            packet = self._packets.get(before)
            if packet is not None:
                return packet.timestamp in self._key_timestamps and not packet.marker
        return False

    def _in_latest_keyframe(self, seq: int) -> bool:
        """Part of the newest IDR that started (an older one is given up at its deadline:
        the newer one replaces it)."""
        assert self._newest is not None
        if not self._key_timestamps or not self._in_keyframe(seq):
            return False
        latest = next(reversed(self._key_timestamps))
        for after in range(seq, min(self._newest, seq + 512) + 1):
            packet = self._packets.get(after)
            if packet is not None:
                return packet.timestamp == latest
        return False

    def _complete_frame(self) -> int | None:
        """The last sequence number of the head frame, if it is all here."""
        assert self._head is not None and self._newest is not None
        first = self._packets.get(self._head)
        if first is None:
            return None
        seq = self._head
        while seq <= self._newest:
            packet = self._packets.get(seq)
            if packet is None or packet.timestamp != first.timestamp:
                return None
            if packet.marker:
                return seq
            seq += 1
        return None

    def _head_gap_seen(self) -> float | None:
        """When the first missing packet at or after the head was noticed (None: no gap)."""
        assert self._head is not None and self._newest is not None
        for seq in range(self._head, self._newest + 1):
            if seq not in self._packets:
                entry = self._missing.get(seq)
                if entry is not None:
                    return entry.seen_at
                if seq == self._newest:
                    return None  # observed (NACK side), its payload comes next
                return float("-inf")  # not tracked any more: beyond the sender's history
        return None

    def _emit(self, end: int, now: float) -> None:
        assert self._head is not None
        packets = [self._packets.pop(seq) for seq in range(self._head, end + 1)]
        arrived = [self._arrived.pop(seq) for seq in range(self._head, end + 1)]
        self._head = end + 1
        whole = self._head_starts_frame or packets[0].keyframe_start
        self._head_starts_frame = True
        keyframe = any(p.keyframe_start for p in packets)
        if not whole:
            # Its first packets may have been lost before anything told us of them.
            self._skip_to_keyframe()
        if self._awaiting_keyframe and not keyframe:
            self.counters.dropped_for_keyframe += 1
            return
        self._awaiting_keyframe = False
        self._asked_at = None
        self.counters.frames += 1
        held = (now - max(arrived)) * 1000
        self.counters.waited_ms_max = max(self.counters.waited_ms_max, round(held, 1))
        self._ready.append(Frame(packets[0].timestamp,
                                 b"".join(p.payload for p in packets), keyframe))

    def _give_up_head(self, now: float, gap_seen: float) -> None:
        """Drop the head frame (and whatever is missing before the next one)."""
        assert self._head is not None and self._newest is not None
        self.counters.skipped += 1
        self.counters.waited_ms_max = max(self.counters.waited_ms_max,
                                          round((now - gap_seen) * 1000, 1))
        stuck: int | None = None
        dropped: set[int] = set()
        seq = self._head
        while seq <= self._newest:
            packet = self._packets.get(seq)
            if packet is not None:
                if stuck is None:
                    stuck = packet.timestamp
                elif packet.timestamp != stuck:
                    break
                dropped.add(seq)
                del self._packets[seq]
                self._arrived.pop(seq, None)
            self._missing.pop(seq, None)
            seq += 1
        self._head = seq
        # The next frame starts here only if the packet before it was seen.
        self._head_starts_frame = (seq - 1) in dropped
        self._skip_to_keyframe()

    def _skip_to_keyframe(self) -> None:
        if not self._awaiting_keyframe:
            self._awaiting_keyframe = True
            self._asked_at = None

    def _ask_keyframe(self, now: float) -> None:
        if self._asked_at is not None and now - self._asked_at < self.settings.keyframe_retry:
            return
        began = self._key_began_at
        if (self._asked_at is not None and began is not None and began >= self._asked_at
                and now - began < self.settings.keyframe_wait):
            # The IDR asked for is arriving and NACKs repair it: asking for another
            # would only put a second burst on a link the first one already fills.
            return
        self._asked_at = now
        self.counters.keyframe_requests += 1
        if self.on_keyframe_request is not None:
            self.on_keyframe_request()
