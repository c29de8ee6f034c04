"""Which layer each viewer should be on, and the ``quality`` data channel: sans-I/O.

:class:`LadderController` is one viewer's controller, after Google Congestion
Control (draft-ietf-rmcat-gcc-02): its loss half (section 6: what the viewer's
RTCP receiver reports say it lost over a sliding window) and, to tell a link too
thin from random loss, a coarse delay signal (the round-trip time's rise over its
floor, the queue that section 5's delay-based half watches).

* Congestion in two evaluations running (or in one, at ``congestion_loss``): go
  down a layer. Congestion is loss
  over ``up_loss`` (2 %) with a queue at the bottleneck (the round-trip time
  over its floor of the last ``rtt_floor_window`` seconds: by ``rtt_rise``,
  15 ms, at each report of the last ``rtt_recent`` seconds (2 s, and at least
  the last three reports), a queue that stands; or by ``burst_rise``, 30 ms,
  at most of them, a queue each keyframe fills and overflows on a link the
  layer's average fits), or loss of
  ``congestion_loss`` (20 %) or more whatever the RTT (a policer dropping what
  does not fit), or a layer whose IDRs do not fit (``idr_window``: the packets
  resent are mostly IDR packets, far beyond their share of what was sent; the
  RTT seldom shows it). Random loss (Wi-Fi: a few percent, even over ``down_loss``,
  with a flat RTT) demotes nobody: a smaller layer would lose the same share of
  its packets, and NACK recovers them.
* Loss is what the receiver reports lost or, when more, what it asked again for
  (packets resent on its NACKs, per packet sent): a receiver that repairs its
  loss by retransmission (Chromium) reports in its receiver reports only what
  stayed lost, near nothing on a link that drops every keyframe's tail.
* On a lower layer, no congestion and loss under ``down_loss`` with a flat RTT
  (random loss, no queue; under ``up_loss``, 2 %, while no RTT is known) for
  ``up_after`` seconds: probe up (the move happens at the upper layer's next
  IDR). A queue still standing on the lower layer (the RTT over its floor) is
  not clean time (at most of the recent reports: they span a keyframe
  interval, and a link the layer only just fits queues at its IDRs): a probe
  into a full link would only stall the picture.
* The RTT is each receiver report's own sample when the caller has them
  (``Sample.rtt_samples``; a browser sends several reports a second, one with
  each NACK), else the sender's average undone (right for one report between
  two samples). What the caller's own event loop was late by
  (``Sample.host_lag``: a busy camera handles reports late too) is taken off
  the rise: random loss on a busy machine is not congestion.
* A probe that sees loss above ``probe_loss`` within ``probe_window`` seconds of
  taking effect, with congestion or ``probe_loss`` more than the lower layer lost
  before it (or, with the caller's :meth:`LadderController.picture_lost`, a
  picture loss the viewer reports right away) is reverted, and the next probe
  waits twice as long (up to ``max_up_after``, so a viewer whose link got
  better is back up within about ``window + max_up_after`` seconds). A probe
  that survives resets the wait.
* A probe up is tried first with padding (:class:`PaddingProbe`), where the
  caller can pad: padding-only packets added to the viewer's stream, ramped up to
  what the layer above sends, then one burst the size of its last IDR just before
  a frame, while the picture stays on the lower layer. Packets
  the viewer asks again for (its NACKs), ``probe_loss`` more than before, or a
  picture loss fail it at once: the padding stops, the viewer never left its
  layer, and the next probe waits twice as long
  (:meth:`LadderController.probe_refused`). Only a padding probe that held moves
  the viewer (which is then watched as above).
* Between the thresholds nothing moves: the gap is the hysteresis that keeps
  steady random loss from flapping a viewer between layers.

It decides nothing without evidence: a window needs ``min_packets`` packets
covered by fresh receiver reports (none for ``stale_after`` seconds: no
decision, and no clean time accrues). The caller samples the sender's stats
(aiortc's ``remote-inbound-rtp`` and ``outbound-rtp``) into :class:`Sample`
records with its own clock: no wall time in here. Bytes sent are recorded in
each :class:`Estimate` for status; loss and the round-trip time's rise decide.

The ``quality`` data channel lets a viewer pin a layer (docs/protocol.md,
"Quality data channel"). Viewer -> camera, one JSON object per text message::

    {"quality": "auto" | "high" | "low"}

Camera -> viewer: ``{"type": "quality", "mode": ..., "layer": ..., "layers": [...]}``
when the channel opens, after every request and whenever the layer changes;
``{"type": "error", "error": "..."}`` for a refused request.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from camera.errors import PeercamError
from camera.frames import Layer

LABEL = "quality"
"""The data channel's label."""
MAX_MESSAGE_BYTES = 128
"""Largest request (UTF-8 bytes); the biggest valid one is under 30."""
MODES = ("auto", "high", "low")

Mode = Literal["auto", "high", "low"]


class Decision(enum.Enum):
    """What one viewer's controller says after a sample."""

    STAY = "stay"
    DOWN = "down"
    """Go down one layer (at its next IDR)."""
    UP = "up"
    """Probe the layer above (at its next IDR); reverted if it brings loss."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a viewer's sender stats, on the caller's clock."""

    at: float
    """Seconds on the caller's monotonic clock."""
    packets_sent: int
    """RTP packets sent so far (``outbound-rtp`` packetsSent)."""
    bytes_sent: int
    """RTP payload bytes sent so far (``outbound-rtp`` bytesSent)."""
    packets_lost: int | None = None
    """Cumulative packets lost in the viewer's latest receiver report (None: no report yet)."""
    packets_expected: int | None = None
    """Packets the sender had sent when that report came in (received + lost)."""
    report_at: float | None = None
    """When that report arrived, on any clock that only moves forward (tells reports apart)."""
    rtt: float | None = None
    """Round-trip time from the latest report, in seconds."""
    nominal_bitrate: int | None = None
    """The target bitrate of the layer the viewer is on (bit/s)."""
    packets_resent: int | None = None
    """RTP packets resent so far on the viewer's NACKs (None: not known)."""
    rtt_samples: tuple[float, ...] | None = None
    """The raw round-trip time samples (seconds) the sender took from receiver reports
    since the previous sample, oldest first (None: not known; then the controller
    undoes the sender's average, ``LadderTuning.rtt_smoothing``, which is only right
    for one report between two samples)."""
    packets_resent_keyframe: int | None = None
    """Of ``packets_resent``, packets of IDR access units (None: not known)."""
    keyframe_packets_sent: int | None = None
    """Of ``packets_sent``, packets of IDR access units (None: not known)."""
    host_lag: float | None = None
    """Seconds the caller's own timer fired late just before this sample: the
    caller's event loop was that busy, and a receiver report it read about then
    waited as long (an RTT that much higher is the camera's load, not a queue)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the controller made of its window (for status and logs)."""

    loss: float | None
    """Fraction of packets lost over the window; None: not enough evidence."""
    rtt: float | None
    send_rate: float | None
    """Bits per second sent over the window."""
    rtt_rise: float | None = None
    """Seconds the recent RTT (raw: the least of the last three reports' samples) is
    over its floor (the least raw sample of the last ``rtt_floor_window`` s): a queue
    that stood through all three."""
    rtt_rise_median: float | None = None
    """The same for the median of those three: a queue at most reports (three reports
    span a keyframe interval, whose IDR fills a link the layer only just fits), not
    one odd report of a busy machine."""
    resent: float | None = None
    """Packets resent on NACKs over the window, per packet sent (part of ``loss``)."""
    idr_resent: float | None = None
    """Of the packets resent over the last ``idr_window`` s, the share that were IDRs'
    (None: too few resent to say)."""
    host_lag: float | None = None
    """The median ``Sample.host_lag`` of the last ``rtt_recent`` seconds (taken off the
    median RTT's rise; the least of them off the least RTT's)."""


@dataclass(frozen=True, slots=True)
class LadderTuning:
    """The controller's thresholds and timers (seconds, fractions)."""

    window: float = 2.0
    down_loss: float = 0.10
    up_loss: float = 0.02
    probe_loss: float = 0.05
    min_packets: int = 20
    up_after: float = 3.0
    max_up_after: float = 6.0
    probe_window: float = 3.0
    stale_after: float = 2.0
    congestion_loss: float = 0.20
    """Loss this heavy is a link too thin for the layer, whatever the RTT."""
    rtt_rise: float = 0.015
    """RTT this far over its recent floor: a queue is building (congestion)."""
    burst_rise: float = 0.030
    """RTT this far over its floor at two of the last three reports: a queue too (one
    that drains between keyframes). Higher than ``rtt_rise``: two odd reports in three
    of a busy machine reach 15 ms, a keyframe's queue on a thin link several times that."""
    rtt_floor_window: float = 60.0
    idr_window: float = 4.0
    """Seconds (two keyframe intervals) over which resends tell IDRs that do not fit: at
    least ``idr_resends`` packets resent, ``idr_share`` of them and at least twice their
    share of what was sent IDRs' packets. A link the layer's average fits drops the
    tail of each IDR; random loss takes IDR packets in their share. A congestion signal
    where the RTT shows none (a sender report seldom queues behind an IDR)."""
    idr_resends: int = 8
    idr_share: float = 0.8
    rtt_recent: float = 2.0
    """The rise is taken over the raw RTT samples of this many seconds (a keyframe
    interval), and at least the last three: a browser that reports with every NACK
    sends several a second, and three of them span a busy moment, not a queue."""
    loss_only: bool = False
    """Decide on loss alone, as the controller did before it looked at the RTT (down
    over ``down_loss``, clean under ``up_loss``, a probe failed over ``probe_loss``;
    loss from receiver reports only): for comparisons."""
    pad_ramp: float = 0.4
    """Seconds over which a padding probe's padding rises from nothing to its full
    rate: a link with less room loses a few packets early, not a burst at once."""
    pad_hold: float = 0.2
    """Seconds the full rate is then held."""
    pad_grace: float = 0.25
    """Seconds after the padding (and after its burst) for NACKs to come back: the
    frame the burst went before, a round trip, the viewer's NACK."""
    pad_headroom: float = 1.25
    """A padding probe tries this much more than the layer above sends on average
    (its IDRs come as bursts over it)."""
    pad_min_resends: int = 3
    """A padding probe fails on at least this many packets asked again for, more
    than ``probe_loss`` over the share asked again for before it (after its burst:
    on any, over that share, of the packets sent since the burst)."""
    rtt_smoothing: float = 0.85
    """The weight of the old value in the sender's RTT average (aiortc's is 0.85 per
    report); the controller undoes it to see a queue build or drain within a report
    or two rather than seconds later. 0: the RTT given is a raw sample."""

    def __post_init__(self) -> None:
        if not 0 < self.up_loss < self.down_loss <= 1:
            raise ValueError(f"loss thresholds up {self.up_loss}, down {self.down_loss}: "
                             "need 0 < up < down <= 1")
        if not 0 < self.up_after <= self.max_up_after:
            raise ValueError(f"up_after {self.up_after}, max_up_after {self.max_up_after}: "
                             "need 0 < up_after <= max_up_after")
        if not 0 <= self.rtt_smoothing < 1:
            raise ValueError(f"rtt_smoothing {self.rtt_smoothing}: need 0 <= x < 1")
        if not 0 < self.rtt_rise <= self.burst_rise:
            raise ValueError(f"rtt_rise {self.rtt_rise}, burst_rise {self.burst_rise}: need "
                             "0 < rtt_rise <= burst_rise")
        if min(self.pad_ramp, self.pad_hold, self.pad_grace) < 0 or (
                self.pad_ramp + self.pad_hold <= 0):
            raise ValueError(f"padding ramp {self.pad_ramp}, hold {self.pad_hold}, grace "
                             f"{self.pad_grace}: need >= 0, and some time to pad")
        if not self.down_loss <= self.congestion_loss <= 1:
            raise ValueError(f"congestion_loss {self.congestion_loss}: need down_loss "
                             f"{self.down_loss} <= congestion_loss <= 1")


@dataclass(frozen=True, slots=True)
class _Report:
    at: float
    lost: int
    expected: int


class LadderController:
    """One viewer's layer choice from its loss; layer 0 is the top (best) one."""

    def __init__(self, layers: int, tuning: LadderTuning | None = None, *,
                 layer: int = 0) -> None:
        if layers < 1 or not 0 <= layer < layers:
            raise ValueError(f"layer {layer} of {layers}: out of range")
        self.tuning = tuning or LadderTuning()
        self.layers = layers
        self.layer = layer
        """The layer in effect (moved by :meth:`switched`, not by a decision)."""
        self.pending: int | None = None
        """A layer decided on but not yet in effect (waiting for its IDR)."""
        self.probes = 0
        self.failed_probes = 0
        """Probes reverted in a row (the next probe waits 2**n times as long)."""
        self.estimate = Estimate(None, None, None)
        self._reports: deque[_Report] = deque()
        self._samples: deque[Sample] = deque()
        self._last_report_at: float | None = None
        self._last_fresh: float | None = None
        self._over = 0
        self._clean_since: float | None = None
        self._probe_until: float | None = None
        self._rtts: deque[tuple[float, float]] = deque()
        """(when, the raw RTT sample) per fresh report: the floor is their least."""
        self._long: deque[Sample] = deque()
        """Samples of the last ``idr_window`` s (and one before)."""
        self.idr_tails = False
        """The layer's IDRs do not fit the link: their packets are the ones resent."""
        self._raw_rtts: deque[tuple[float, float]] = deque()
        """(when, the raw RTT sample) of the last ``rtt_recent`` s (at least three)."""
        self._lags: deque[tuple[float, float]] = deque()
        self._last_rtt: float | None = None
        self._loss_before_probe = 0.0

    @property
    def probing(self) -> bool:
        return self._probe_until is not None

    @property
    def up_after(self) -> float:
        """Clean seconds needed before the next probe up (backed off by failures)."""
        t = self.tuning
        return min(t.max_up_after, t.up_after * 2.0 ** self.failed_probes)

    def switched(self, layer: int, at: float) -> None:
        """The viewer's move to ``layer`` took effect (its IDR went out) at ``at``."""
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer {layer} of {self.layers}: out of range")
        up = layer < self.layer
        self.layer, self.pending = layer, None
        # The window starts again: loss on the old layer says nothing about this one.
        self._reports.clear()
        self._over = 0
        self._clean_since = None
        self._probe_until = at + self.tuning.probe_window if up else None

    def observe(self, sample: Sample) -> Decision:
        """Take one sample; say whether this viewer should move."""
        t = self.tuning
        now = sample.at
        self._take(sample)
        loss = self.estimate.loss
        if self.pending is not None:
            return Decision.STAY
        if self._probe_until is not None:
            if loss is not None and loss > t.probe_loss and (
                    t.loss_only or self.congested
                    or loss - self._loss_before_probe > t.probe_loss):
                self.failed_probes += 1
                self._probe_until = None
                return self._decide(Decision.DOWN)
            if now >= self._probe_until:
                self._probe_until = None
                self.failed_probes = 0  # the probe held: the link has room
        # Loss with a queue at most reports, or loss of a policer's size: the layer does
        # not fit.
        e = self.estimate
        queued = (e.rtt_rise is not None and e.rtt_rise >= t.rtt_rise) or (
            e.rtt_rise_median is not None and e.rtt_rise_median >= t.burst_rise) or (
            self.idr_tails)
        over = loss is not None and (loss >= t.congestion_loss or (queued and loss > t.up_loss))
        if t.loss_only:
            over = loss is not None and loss > t.down_loss
        self._over = self._over + 1 if over else 0
        # A policer's share of the packets is no run of random loss: one window says.
        policed = loss is not None and loss >= t.congestion_loss and not t.loss_only
        if (self._over >= 2 or policed) and self.layer < self.layers - 1:
            return self._decide(Decision.DOWN)
        if self.layer > 0:
            # A standing queue (the RTT over its floor) says the link is full even
            # when nothing is lost yet: no clean time then.
            typical = self.estimate.rtt_rise_median
            flat = typical is not None and typical < t.rtt_rise
            clean = loss is not None and not self.congested and (typical is None or flat) and (
                loss < t.up_loss or (flat and loss < t.down_loss))
            if t.loss_only:
                clean = loss is not None and loss < t.up_loss
            if not clean:
                self._clean_since = None
            elif self._clean_since is None:
                self._clean_since = now
            elif now - self._clean_since >= self.up_after:
                self.probes += 1
                self._loss_before_probe = loss or 0.0
                return self._decide(Decision.UP)
        return Decision.STAY

    @property
    def congested(self) -> bool:
        """The window's loss or the RTT's rise says the link is too thin for the layer
        (not random loss on a link with room)."""
        t, e = self.tuning, self.estimate
        if e.loss is not None and e.loss >= t.congestion_loss:
            return True
        if self.idr_tails and not t.loss_only:
            return True
        return e.rtt_rise is not None and e.rtt_rise >= t.rtt_rise

    def picture_lost(self, at: float) -> Decision:
        """The viewer reported picture loss (PLI/FIR, or a NACK beyond the retransmit
        history) at ``at``. During a probe that is the probe failing, well before
        the receiver reports show it: go back down now. Otherwise nothing moves."""
        if self._probe_until is None or self.pending is not None or at > self._probe_until:
            return Decision.STAY
        self.failed_probes += 1
        self._probe_until = None
        return self._decide(Decision.DOWN)

    def probe_refused(self) -> None:
        """The decided move up failed its padding probe: the viewer stays, and the next
        probe waits twice as long (as after a probe reverted)."""
        if self.pending is None or self.pending >= self.layer:
            return
        self.pending = None
        self.failed_probes += 1
        self._clean_since = None
        self._over = 0

    def _decide(self, decision: Decision) -> Decision:
        self.pending = self.layer + (1 if decision is Decision.DOWN else -1)
        self._clean_since = None
        self._over = 0
        return decision

    def cancel(self) -> None:
        """The decided move will not happen (forced layer, single-layer source)."""
        self.pending = None

    def _take(self, sample: Sample) -> None:
        t = self.tuning
        now = sample.at
        self._samples.append(sample)
        while len(self._samples) > 1 and self._samples[1].at <= now - t.window:
            self._samples.popleft()
        fresh = (sample.report_at is not None and sample.packets_lost is not None
                 and sample.packets_expected is not None
                 and sample.report_at != self._last_report_at)
        if fresh:
            assert sample.packets_lost is not None and sample.packets_expected is not None
            self._last_report_at = sample.report_at
            self._last_fresh = now
            self._reports.append(_Report(now, sample.packets_lost, sample.packets_expected))
        # Keep one report at or before the window's start as the baseline.
        while len(self._reports) > 1 and self._reports[1].at <= now - t.window:
            self._reports.popleft()
        loss: float | None = None
        stale = self._last_fresh is None or now - self._last_fresh > t.stale_after
        if len(self._reports) >= 2 and not stale:
            first, last = self._reports[0], self._reports[-1]
            expected = last.expected - first.expected
            if expected >= t.min_packets:
                loss = min(1.0, max(0.0, (last.lost - first.lost) / expected))
        oldest = self._samples[0]
        resent: float | None = None
        if (not stale and not t.loss_only and sample.packets_resent is not None
                and oldest.packets_resent is not None
                and sample.packets_sent - oldest.packets_sent >= t.min_packets):
            resent = min(1.0, max(0.0, (sample.packets_resent - oldest.packets_resent)
                                  / (sample.packets_sent - oldest.packets_sent)))
            loss = resent if loss is None else max(loss, resent)
        self._long.append(sample)
        while len(self._long) > 1 and self._long[1].at <= now - t.idr_window:
            self._long.popleft()
        earliest = self._long[0]
        idr_resent: float | None = None
        self.idr_tails = False
        if (not stale and not t.loss_only and sample.packets_resent is not None
                and earliest.packets_resent is not None
                and sample.packets_resent_keyframe is not None
                and earliest.packets_resent_keyframe is not None):
            resends = sample.packets_resent - earliest.packets_resent
            idr = sample.packets_resent_keyframe - earliest.packets_resent_keyframe
            if resends >= t.idr_resends:
                idr_resent = idr / resends
                sent = sample.packets_sent - earliest.packets_sent
                idr_sent = (None if sample.keyframe_packets_sent is None
                            or earliest.keyframe_packets_sent is None
                            else sample.keyframe_packets_sent - earliest.keyframe_packets_sent)
                self.idr_tails = (idr >= t.idr_resends and idr_resent >= t.idr_share
                                  and idr_sent is not None and sent > 0
                                  and idr_resent >= 2 * idr_sent / sent)
        span = now - oldest.at
        rate = 8 * (sample.bytes_sent - oldest.bytes_sent) / span if span > 0 else None
        rise: float | None = None
        rise_median: float | None = None
        if sample.host_lag is not None:
            self._lags.append((now, max(0.0, sample.host_lag)))
        while self._lags and self._lags[0][0] < now - t.rtt_recent:
            self._lags.popleft()
        lags = sorted(late for _, late in self._lags)
        raws: tuple[float, ...] = ()
        if sample.rtt_samples is not None:
            raws = sample.rtt_samples
        elif fresh and sample.rtt is not None and sample.rtt != self._last_rtt:
            # The raw sample behind the average: (new - a * old) / (1 - a). A report
            # that left the average as it was (it answered an older sender report)
            # carried no sample.
            a, before = t.rtt_smoothing, self._last_rtt
            raws = (sample.rtt if before is None else (sample.rtt - a * before) / (1 - a),)
        if fresh and sample.rtt is not None:
            self._last_rtt = sample.rtt
        for raw in raws:
            self._raw_rtts.append((now, max(0.0, raw)))
            self._rtts.append((now, max(0.0, raw)))
        while len(self._raw_rtts) > 3 and self._raw_rtts[0][0] < now - t.rtt_recent:
            self._raw_rtts.popleft()
        while self._rtts and self._rtts[0][0] < now - t.rtt_floor_window:
            self._rtts.popleft()
        if self._rtts and self._raw_rtts and not stale:
            # A queue stands across reports; an odd report or two (a busy loop, a
            # delayed RTCP) is not one: the least of the recent raw samples says.
            # What the camera's own busy loop added is no queue either: as late as
            # its timers fired over the same seconds (the least, and the median,
            # so that one slow moment does not hide a queue for long).
            floor = min(rtt for _, rtt in self._rtts)
            recent = sorted(rtt for _, rtt in self._raw_rtts)
            least_lag = lags[0] if lags else 0.0
            typical_lag = lags[len(lags) // 2] if lags else 0.0
            rise = max(0.0, recent[0] - floor - least_lag)
            rise_median = max(0.0, recent[len(recent) // 2] - floor - typical_lag)
        lag = lags[len(lags) // 2] if lags else None
        self.estimate = Estimate(loss, sample.rtt, rate, rise, rise_median, resent,
                                 idr_resent, lag)


class ProbeState(enum.Enum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class PaddingProbe:
    """One padding probe: how much padding is due, and whether the link took it.

    The caller sends ``due(now)`` bytes of padding whenever it looks (every few
    milliseconds), says so with :meth:`padded`, and asks :meth:`check` with its
    sender's counters. ``extra`` is the padding's full rate (bit/s): what the layer
    above sends, with headroom, less what the viewer gets now.
    """

    def __init__(self, *, at: float, extra: float, packets_sent: int, resent: int,
                 loss_before: float, burst: int = 0,
                 tuning: LadderTuning | None = None) -> None:
        if not extra > 0:
            raise ValueError(f"padding rate {extra} bit/s: need > 0")
        self.tuning = tuning or LadderTuning()
        self.started = at
        self.extra = extra
        self._packets0 = packets_sent
        self._resent0 = resent
        self.loss_before = loss_before
        self.padded_bytes = 0
        self.burst = burst
        """Bytes of padding sent in one burst when the ramp is done, just before a
        frame (the size of the upper layer's IDR, which comes as one burst too)."""
        self.burst_at: float | None = None
        self._burst_counters = (0, 0)
        self.state = ProbeState.RUNNING
        self.reason = ""
        self.loss: float | None = None
        """Of the media packets sent since the start, the share asked again for."""

    @property
    def ends(self) -> float:
        """When the padding stops (the verdict comes ``pad_grace`` later)."""
        return self.started + self.tuning.pad_ramp + self.tuning.pad_hold

    def owed(self, now: float) -> float:
        """Bytes of padding the ramp has called for from the start until ``now``."""
        t = self.tuning
        x = min(max(0.0, now - self.started), t.pad_ramp + t.pad_hold)
        rate = self.extra / 8
        if t.pad_ramp == 0:
            return rate * x
        if x <= t.pad_ramp:
            return rate * x * x / (2 * t.pad_ramp)
        return rate * (t.pad_ramp / 2 + x - t.pad_ramp)

    def due(self, now: float) -> int:
        """Bytes of padding to send now (0 once the probe is over or failed)."""
        if self.state is not ProbeState.RUNNING:
            return 0
        return max(0, int(self.owed(now)) - self.padded_bytes)

    def padded(self, nbytes: int) -> None:
        self.padded_bytes += nbytes

    def take_burst(self, now: float, packets_sent: int, resent: int) -> int:
        """The burst's bytes, once, when the ramp and hold are over (else 0); the
        counters as it goes: what is asked again for after it is judged apart."""
        if self.state is not ProbeState.RUNNING or self.burst_at is not None or (
                not self.burst or now < self.ends):
            return 0
        self.burst_at = now
        self._burst_counters = (packets_sent, resent)
        return self.burst

    def picture_lost(self) -> None:
        """The viewer reported picture loss during the probe: it failed."""
        if self.state is ProbeState.RUNNING:
            self.state, self.reason = ProbeState.FAILED, "picture loss"

    def check(self, now: float, packets_sent: int, resent: int) -> ProbeState:
        """The verdict so far from the sender's counters (media packets sent, and
        packets resent on the viewer's NACKs; padding counts in neither)."""
        if self.state is not ProbeState.RUNNING:
            return self.state
        t = self.tuning
        sent = packets_sent - self._packets0
        resends = resent - self._resent0
        self.loss = resends / sent if sent > 0 else None
        # After the burst, apart: the frame behind it is a few packets, and those are
        # what a queue too short for the burst drops.
        after_sent = packets_sent - self._burst_counters[0]
        after_resends = resent - self._burst_counters[1]
        if (resends >= t.pad_min_resends and self.loss is not None
                and self.loss > self.loss_before + t.probe_loss):
            self.state = ProbeState.FAILED
            self.reason = f"{resends} of {sent} packets asked again for"
        elif (self.burst_at is not None and after_resends > 0 and after_sent > 0
              and after_resends / after_sent > self.loss_before + t.probe_loss):
            self.state = ProbeState.FAILED
            self.reason = (f"{after_resends} of {after_sent} packets asked again for "
                           "after the burst")
        elif now >= self.ends + t.pad_grace and (
                not self.burst or (self.burst_at is not None
                                   and now >= self.burst_at + t.pad_grace)):
            self.state = ProbeState.PASSED
        return self.state


# -- the quality data channel ---------------------------------------------------------


class BadQualityRequest(PeercamError, ValueError):
    """A message on the quality channel that is not a valid request (the reply says why)."""


def parse_request(data: str | bytes) -> Mode:
    """The mode a viewer asks for; :class:`BadQualityRequest` naming the fault."""
    if isinstance(data, bytes):
        raise BadQualityRequest("binary message: send JSON text")
    if len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise BadQualityRequest(f"message of {len(data)} characters: at most "
                                f"{MAX_MESSAGE_BYTES} bytes")
    try:
        message: Any = json.loads(data)
    except ValueError:
        raise BadQualityRequest(f"not JSON: {data[:40]!r}") from None
    if not isinstance(message, dict) or set(message) != {"quality"}:
        raise BadQualityRequest('need exactly {"quality": "auto" | "high" | "low"}')
    mode = message["quality"]
    if mode not in MODES:
        raise BadQualityRequest(f"quality {str(mode)[:20]!r}: need one of {', '.join(MODES)}")
    result: Mode = mode
    return result


def state_reply(mode: Mode, layer: Layer, layers: tuple[Layer, ...]) -> str:
    """The camera's report of a viewer's quality mode and the layer it is on."""
    return json.dumps({"type": "quality", "mode": mode, "layer": layer.label,
                       "layers": [item.label for item in layers]})


def error_reply(text: str) -> str:
    return json.dumps({"type": "error", "error": text})


def layer_for(mode: Mode) -> Layer | None:
    """The layer a fixed mode pins; None for ``auto``."""
    return None if mode == "auto" else Layer[mode.upper()]
