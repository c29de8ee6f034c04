"""One viewer's place on the quality ladder: the asyncio adapter around camera/ladder.py.

Each viewer session with video has one :class:`ViewerQuality`. It owns:

* a sampling task (started when the session connects, ended when it closes):
  every :data:`SAMPLE_EVERY` seconds it reads the video sender's stats (aiortc's
  public ``getStats``: ``outbound-rtp`` and the viewer's receiver reports as
  ``remote-inbound-rtp``; and the packets it resent on the viewer's NACKs),
  feeds the :class:`~camera.ladder.LadderController`
  and moves the viewer's track at the target layer's next IDR;
* the viewer's ``quality`` data channel, if it opens one: ``auto`` (the
  controller decides), ``high`` or ``low`` (pinned). Every request re-checks the
  ACL, like pan/tilt, and takes a token from the session's bucket;
* a padding probe's task, while one runs: a move up is first tried by padding
  the viewer's stream (padding-only RTX packets,
  :func:`camera.compat.fastsend.send_padding`) up to the upper layer's measured
  rate and then one burst of its IDR's size just before a frame, and made only if the
  viewer asked for no more packets again than before
  (:class:`~camera.ladder.PaddingProbe`). A link without room loses a few packets
  for it, repaired by retransmission, instead of the picture for the upper
  layer's IDR and the way back. Where the sender cannot pad (no RTX negotiated)
  the move is made at once, as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from aiortc import RTCRtpSender
from aiortc.exceptions import InvalidStateError

from camera.compat import watch_rtt
from camera.compat.fastsend import pad_before_next_frame, send_padding, stats_of
from camera.frames import Layer
from camera.ladder import (
    BadQualityRequest,
    Decision,
    LadderController,
    LadderTuning,
    Mode,
    PaddingProbe,
    ProbeState,
    Sample,
    error_reply,
    layer_for,
    parse_request,
    state_reply,
)
from camera.track import PassthroughTrack
from services.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

SAMPLE_EVERY = 0.5
"""Seconds between looks at a viewer's sender stats (receiver reports come every ~1 s)."""
SWITCH_POLL = 0.1
"""... and while a decided move waits for its IDR: the viewer hears of its new layer
(and the controller of when the move took effect) within this of the IDR going out."""
PAD_EVERY = 0.01
"""Seconds between a padding probe's sends (its ramp is followed at this grain)."""
RATE_WINDOW = 4.0
"""Seconds over which a layer's rate is measured for a padding probe (two keyframe
intervals: its IDRs are in the average)."""
STATS_TIMEOUT = 2.0
"""Longest wait for one ``getStats`` (it answers from memory; a bound all the same)."""
NOT_AUTHORIZED = "not authorized: this viewer is not paired with the camera"


def _listed(values: tuple[float, ...] | None) -> str:
    """RTT samples in a debug line: comma-separated, ``-`` for none, ``None``: not known."""
    return "None" if values is None else ",".join(f"{x:.5f}" for x in values) or "-"


class ViewerQuality:
    """Chooses (or pins) one viewer's layer."""

    def __init__(
        self,
        session_id: str,
        track: PassthroughTrack,
        *,
        viewer_key: str | None,
        authorized: Callable[[str | None], bool],
        bitrates: Mapping[Layer, int] | None = None,
        tuning: LadderTuning | None = None,
        rate: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        revert_on_picture_loss: bool = True,
        pad_probes: bool = True,
    ) -> None:
        self.session_id = session_id
        self.track = track
        self._viewer_key = viewer_key
        self._authorized = authorized
        self._bitrates = dict(bitrates or {})
        self._clock = clock
        self._bucket = TokenBucket(rate, rate)
        self.revert_on_picture_loss = revert_on_picture_loss
        self.pad_probes = pad_probes
        self._sender: RTCRtpSender | None = None
        self._probe: PaddingProbe | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._layer_bytes: deque[tuple[float, dict[Layer, int]]] = deque()
        self.padding_probes = 0
        """Padding probes started (tests and status read them) ..."""
        self.padding_probes_failed = 0
        """... and those the link did not take (the viewer stayed where it was)."""
        self.layers = track.layers
        self.controller = LadderController(len(self.layers), tuning,
                                           layer=self.layers.index(track.layer))
        self.mode: Mode = "auto"
        self._channel: Any = None
        self._task: asyncio.Task[None] | None = None
        self._reported: Layer | None = None
        self._rtt_samples: list[float] = []
        """Raw RTT samples taken since the last look (``watch_rtt``; None: not watched)."""
        self._rtt_watched = False
        self.rtt_samples_taken = 0
        """Round-trip time samples the viewer's receiver reports gave (tests read it)."""
        self.refused = 0

    @property
    def layer(self) -> Layer:
        return self.track.layer

    # -- the sampling task ----------------------------------------------------------

    def start(self, sender: RTCRtpSender) -> None:
        """Start sampling ``sender``'s stats (once; the session calls :meth:`close`)."""
        if self._task is None and len(self.layers) > 1:
            watch_rtt(sender, self._took_rtt)
            self._rtt_watched = True
            self._sender = sender
            self._task = asyncio.create_task(self._run(sender), name="viewer-quality")

    def _took_rtt(self, rtt: float) -> None:
        self.rtt_samples_taken += 1
        self._rtt_samples.append(rtt)

    async def _run(self, sender: RTCRtpSender) -> None:
        while True:
            pause = SWITCH_POLL if self.controller.pending is not None else SAMPLE_EVERY
            due = self._clock() + pause
            await asyncio.sleep(pause)
            # How late this loop woke: a receiver report handled about now waited as long.
            late = max(0.0, self._clock() - due)
            try:
                async with asyncio.timeout(STATS_TIMEOUT):
                    report = await sender.getStats()
            except Exception as exc:  # closing under us
                logger.debug("session %s: no sender stats: %s", self.session_id, exc)
                continue
            shared = stats_of(sender)
            self._note_layer_bytes()
            self.step(self._sample(
                report.values(), None if shared is None else shared.retransmitted, late,
                None if shared is None else (shared.retransmitted_keyframe,
                                             shared.keyframe_packets)))

    def _sample(self, stats: Any, resent: int | None = None, late: float | None = None,
                keyframes: tuple[int, int] | None = None) -> Sample:
        sent = sent_bytes = 0
        lost = expected = None
        report_at = rtt = None
        for stat in stats:
            if stat.type == "outbound-rtp":
                sent, sent_bytes = stat.packetsSent, stat.bytesSent
            elif stat.type == "remote-inbound-rtp":
                lost = stat.packetsLost
                expected = stat.packetsReceived + stat.packetsLost
                report_at = stat.timestamp.timestamp()
                rtt = stat.roundTripTime
        samples: tuple[float, ...] | None = None
        if self._rtt_watched:
            samples = tuple(self._rtt_samples)
            self._rtt_samples.clear()
        return Sample(at=self._clock(), packets_sent=sent, bytes_sent=sent_bytes,
                      packets_lost=lost, packets_expected=expected, report_at=report_at,
                      rtt=rtt, nominal_bitrate=self._bitrates.get(self.track.layer),
                      packets_resent=resent, rtt_samples=samples, host_lag=late,
                      packets_resent_keyframe=None if keyframes is None else keyframes[0],
                      keyframe_packets_sent=None if keyframes is None else keyframes[1])

    def step(self, sample: Sample) -> None:
        """One sample: follow a move that took effect, then let the controller decide."""
        index = self.layers.index(self.track.layer)
        if index != self.controller.layer:
            self.controller.switched(index, sample.at)
            logger.info("session %s: now on the %s layer", self.session_id,
                        self.track.layer.label)
        self._report_layer()
        decision = self.controller.observe(sample)
        # One line per sample at debug: what a recorded trace for the ladder's tests is.
        logger.debug("session %s: ladder sample %s %s %s %s %s %s %s layer %d -> %s "
                     "resent %s samples %s lag %s idr %s %s", self.session_id, sample.at,
                     sample.packets_sent, sample.bytes_sent, sample.packets_lost,
                     sample.packets_expected, sample.report_at, sample.rtt,
                     self.controller.layer, decision.value, sample.packets_resent,
                     _listed(sample.rtt_samples), sample.host_lag,
                     sample.packets_resent_keyframe, sample.keyframe_packets_sent)
        if self.mode != "auto" or decision is Decision.STAY:
            if self.mode != "auto":
                self.controller.cancel()
            return
        assert self.controller.pending is not None
        target = self.layers[self.controller.pending]
        loss = self.controller.estimate.loss
        logger.info("session %s: loss %s on the %s layer: %s to the %s layer",
                    self.session_id, "?" if loss is None else f"{100 * loss:.1f} %",
                    self.track.layer.label,
                    "probing up" if decision is Decision.UP else "going down", target.label)
        if decision is Decision.UP and self._start_padding(target, sample.at):
            return
        if not self.track.switch_to(target):
            self.controller.cancel()

    # -- padding probes ---------------------------------------------------------------

    def _note_layer_bytes(self) -> None:
        now = self._clock()
        self._layer_bytes.append((now, {layer: self.track.layer_bytes(layer)
                                        for layer in self.layers}))
        while len(self._layer_bytes) > 2 and self._layer_bytes[1][0] <= now - RATE_WINDOW:
            self._layer_bytes.popleft()

    def layer_rate(self, layer: Layer) -> float | None:
        """Bits per second ``layer`` published over the last ``RATE_WINDOW`` seconds
        (None: under half of that measured yet)."""
        if len(self._layer_bytes) < 2:
            return None
        (t0, first), (t1, last) = self._layer_bytes[0], self._layer_bytes[-1]
        if t1 - t0 < RATE_WINDOW / 2:
            return None
        return 8 * (last[layer] - first[layer]) / (t1 - t0)

    def _start_padding(self, target: Layer, now: float) -> bool:
        """Try the move up to ``target`` with padding first; False: make it at once
        (padding off, or nothing to pad with)."""
        sender = self._sender
        shared = None if sender is None else stats_of(sender)
        if not self.pad_probes or sender is None or shared is None or self._probe is not None:
            return False
        tuning = self.controller.tuning
        rate = self.layer_rate(target) or self._bitrates.get(target)
        current = self.controller.estimate.send_rate or 0.0
        if not rate or tuning.pad_headroom * rate - current <= 0:
            return False
        probe = PaddingProbe(at=now, extra=tuning.pad_headroom * rate - current,
                             packets_sent=shared.packets, resent=shared.retransmitted,
                             loss_before=self.controller.estimate.resent or 0.0,
                             burst=self.track.keyframe_bytes(target), tuning=tuning)
        self._probe = probe
        self.padding_probes += 1
        logger.info("session %s: padding %.0f kbit/s and a %d-byte burst to try the %s "
                    "layer (%.0f kbit/s)", self.session_id, probe.extra / 1000, probe.burst,
                    target.label, rate / 1000)
        self._probe_task = asyncio.create_task(self._pad(sender, probe, target),
                                               name="viewer-quality-padding")
        return True

    async def _pad(self, sender: RTCRtpSender, probe: PaddingProbe, target: Layer) -> None:
        shared = stats_of(sender)
        assert shared is not None
        state = ProbeState.RUNNING
        try:
            while state is ProbeState.RUNNING:
                now = self._clock()
                state = probe.check(now, shared.packets, shared.retransmitted)
                burst = probe.take_burst(now, shared.packets, shared.retransmitted)
                if burst:
                    pad_before_next_frame(sender, burst)
                due = probe.due(now)
                if state is ProbeState.RUNNING and due:
                    sent = await send_padding(sender, due)
                    if not sent and not probe.padded_bytes:
                        break  # nothing to pad with (no RTX): move as before
                    probe.padded(sent)
                if state is ProbeState.RUNNING:
                    await asyncio.sleep(PAD_EVERY)
        except ConnectionError as exc:
            logger.debug("session %s: padding stopped: %s", self.session_id, exc)
            probe.state, probe.reason = ProbeState.FAILED, "not connected"
        finally:
            if self._probe is probe:
                self._probe = None
        state = probe.state
        pending = self.controller.pending
        if self.mode != "auto" or pending is None or self.layers[pending] is not target:
            return  # the viewer pinned a layer meanwhile
        if state is ProbeState.FAILED:
            self.padding_probes_failed += 1
            self.controller.probe_refused()
            logger.info("session %s: the link did not take the %s layer's rate (%s, "
                        "%d bytes of padding): staying on the %s layer", self.session_id,
                        target.label, probe.reason, probe.padded_bytes,
                        self.track.layer.label)
            return
        if state is ProbeState.RUNNING:
            logger.info("session %s: no padding on this session (no RTX): moving to the %s "
                        "layer", self.session_id, target.label)
        else:
            logger.info("session %s: the link took %d bytes of padding and a %d-byte burst: "
                        "moving to the %s layer", self.session_id, probe.padded_bytes,
                        probe.burst if probe.burst_at is not None else 0, target.label)
        if not self.track.switch_to(target):
            self.controller.cancel()

    def picture_lost(self, reason: str) -> None:
        """The viewer asked for a keyframe (PLI/FIR, NACK beyond history): a probe up that
        brings picture loss goes back down at once (``revert_on_picture_loss``)."""
        if self._probe is not None:
            self._probe.picture_lost()  # the padding cost a picture: the move is off
            return
        if not self.revert_on_picture_loss or self.mode != "auto" or len(self.layers) < 2:
            return
        now = self._clock()
        index = self.layers.index(self.track.layer)
        if index != self.controller.layer:
            self.controller.switched(index, now)  # the probe's IDR went out since the sample
        if self.controller.picture_lost(now) is not Decision.DOWN:
            return
        assert self.controller.pending is not None
        target = self.layers[self.controller.pending]
        logger.info("session %s: picture loss (%s) while probing the %s layer: back to the %s "
                    "layer", self.session_id, reason, self.track.layer.label, target.label)
        if not self.track.switch_to(target):
            self.controller.cancel()

    # -- the quality data channel -------------------------------------------------

    def attach(self, channel: Any) -> None:
        """Serve the viewer's ``quality`` channel (one per session)."""
        if self._channel is not None:
            logger.info("session %s: refusing a second quality channel", self.session_id)
            channel.close()
            return
        self._channel = channel

        def on_message(data: str | bytes) -> None:
            if self._channel is channel:
                self._received(data)

        def on_close() -> None:
            if self._channel is channel:
                self._channel = None

        channel.on("message", on_message)
        channel.on("close", on_close)
        if channel.readyState == "open":
            self._say(self._state())
        else:
            channel.on("open", lambda: self._say(self._state()))

    def _received(self, data: str | bytes) -> None:
        if not self._authorized(self._viewer_key):
            self.refused += 1
            self._say(error_reply(NOT_AUTHORIZED))
            return
        if not self._bucket.allow(self._clock()):
            self._say(error_reply("rate limited: too many quality requests"))
            return
        try:
            mode = parse_request(data)
        except BadQualityRequest as exc:
            self._say(error_reply(str(exc)))
            return
        self.set_mode(mode)
        self._say(self._state())

    def set_mode(self, mode: Mode) -> None:
        """``auto``: the controller decides from here on; ``high``/``low``: pinned."""
        pinned = layer_for(mode)
        if pinned is not None and pinned not in self.layers:
            self._say(error_reply(f"unavailable: this camera sends no {pinned.label} layer"))
            return
        self.mode = mode
        self.controller.cancel()
        self._stop_padding()
        if pinned is not None:
            self.track.switch_to(pinned)
        else:
            # Fresh evidence from here on, starting where the viewer is.
            self.controller = LadderController(len(self.layers), self.controller.tuning,
                                               layer=self.layers.index(self.track.layer))
        logger.info("session %s: quality %s", self.session_id, mode)

    def _state(self) -> str:
        return state_reply(self.mode, self.track.layer, self.layers)

    def _report_layer(self) -> None:
        if self._reported is not self.track.layer:
            self._reported = self.track.layer
            self._say(self._state())

    def _say(self, text: str) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        with contextlib.suppress(InvalidStateError, ConnectionError):
            channel.send(text)

    def _stop_padding(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done():
            task.cancel()
        self._probe = None

    async def close(self) -> None:
        """Stop sampling and padding; forget the channel. Safe twice."""
        self._channel = None
        probe_task = self._probe_task
        self._stop_padding()
        if probe_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
