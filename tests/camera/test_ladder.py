"""The per-viewer layer controller on synthetic RTCP, with its own clock; the quality
channel's messages."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camera.frames import Layer
from camera.ladder import (
    BadQualityRequest,
    Decision,
    Estimate,
    LadderController,
    LadderTuning,
    Sample,
    layer_for,
    parse_request,
    state_reply,
)

HIGH_BPS, LOW_BPS = 2_000_000, 500_000
PACKET_BITS = 8 * 1200


class Link:
    """A viewer's downlink on a simulated clock: RTP packets at the layer's rate, a
    capacity cap (policing: the excess is lost) and random loss; receiver reports
    every 0.5-1.5 s like aiortc's; a decided move takes effect at the next IDR
    (0.3 s later)."""

    def __init__(self, seed: int = 1, layer: int = 0) -> None:
        self.rng = random.Random(seed)
        self.controller = LadderController(2, layer=layer)
        self.now = 0.0
        self.sent = 0
        self.lost = 0
        self.bytes = 0
        self.report: tuple[float, int, int] | None = None
        self.next_report = 1.0
        self.switch_at: tuple[float, int] | None = None
        self.history: list[tuple[float, int]] = []
        self.decisions: list[tuple[float, Decision]] = []
        self.cap: float | None = None
        self.random_loss = 0.0
        self.rtt = 0.03
        """aiortc's RTT: smoothed (0.85 of the last value per report)."""

    def run(self, until: float, step: float = 0.5) -> None:
        while self.now < until:
            self.now = round(self.now + step, 6)
            rate = HIGH_BPS if self.controller.layer == 0 else LOW_BPS
            packets = round(rate * step / PACKET_BITS)
            over = 0.0 if self.cap is None else max(0.0, 1 - self.cap / rate)
            p = 1 - (1 - over) * (1 - self.random_loss)
            self.lost += sum(self.rng.random() < p for _ in range(packets))
            self.sent += packets
            self.bytes += packets * 1200
            if self.now >= self.next_report:
                self.report = (self.now, self.lost, self.sent)
                self.next_report = self.now + 0.5 + self.rng.random()
                # Near the cap a queue stands at the bottleneck (80 ms over the path's 30).
                queue = self.cap is not None and rate > 0.8 * self.cap
                self.rtt = 0.85 * self.rtt + 0.15 * (0.03 + (0.08 if queue else 0.0))
            if self.switch_at is not None and self.now >= self.switch_at[0]:
                self.controller.switched(self.switch_at[1], self.now)
                self.switch_at = None
            report_at, lost, expected = self.report or (None, None, None)
            decision = self.controller.observe(Sample(
                at=self.now, packets_sent=self.sent, bytes_sent=self.bytes,
                packets_lost=lost, packets_expected=expected, report_at=report_at,
                rtt=self.rtt, nominal_bitrate=rate))
            if decision is not Decision.STAY:
                self.decisions.append((self.now, decision))
                assert self.controller.pending is not None
                self.switch_at = (self.now + 0.3, self.controller.pending)
            self.history.append((self.now, self.controller.layer))

    def layer_at(self, t: float) -> int:
        return next(layer for at, layer in self.history if at >= t)

    def first(self, since: float, test: Callable[[int], bool]) -> float:
        return next(at for at, layer in self.history if at >= since and test(layer))


def test_capped_viewer_goes_down_within_the_window_and_stays_down() -> None:
    link = Link()
    link.run(10)
    assert link.decisions == [] and link.controller.layer == 0
    link.cap = 1_000_000  # the high layer loses half its packets, the low one none
    link.run(70)
    went_down = link.first(10, lambda layer: layer == 1)
    # Two windows' evaluations over 10 % (the window is 2 s), plus the IDR.
    assert went_down - 10 <= link.controller.tuning.window + 1.5, went_down
    # While capped: probes up are tried, each one reverted within the probe window,
    # each waiting longer than the last (up to the ceiling): mostly on the low layer.
    capped = [layer for at, layer in link.history if went_down <= at < 70]
    assert capped.count(1) / len(capped) > 0.8
    ups = [at for at, d in link.decisions if d is Decision.UP]
    downs = [at for at, d in link.decisions if d is Decision.DOWN]
    assert 2 <= len(ups) <= 8, ups
    end = link.history[-1][0]
    for up in ups:
        if up > end - link.controller.tuning.probe_window - 1.0:
            continue  # the run ends before its window does
        revert = next(at for at in downs if at > up)
        assert revert - up <= link.controller.tuning.probe_window + 1.0
    gaps = [b - a for a, b in zip(ups, ups[1:], strict=False)]
    # Backed off: never sooner than a failed probe's doubled wait (the probe's queue
    # draining, the RTT coming back down, adds to it).
    assert min(gaps) >= 2 * link.controller.tuning.up_after, gaps
    assert link.controller.failed_probes >= 2


def test_viewer_goes_back_up_within_ten_seconds_of_the_cap_lifting() -> None:
    link = Link(seed=3)
    link.cap = 800_000
    link.run(60)  # long enough for the probe wait to reach its ceiling
    assert link.controller.up_after == link.controller.tuning.max_up_after
    link.cap = None
    link.run(90)
    back_up = link.first(60, lambda layer: layer == 0)
    assert back_up - 60 <= 10, back_up
    # And it stays up: the probe held, the wait is reset.
    assert all(layer == 0 for at, layer in link.history if at >= back_up)
    assert link.controller.failed_probes == 0


@pytest.mark.parametrize("loss", [0.01, 0.015, 0.02])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steady_random_loss_never_flaps(loss: float, seed: int) -> None:
    link = Link(seed=seed)
    link.random_loss = loss
    link.run(600)  # ten minutes
    assert link.decisions == []
    # Started low (say it was capped before), it goes up once and stays.
    low = Link(seed=seed, layer=1)
    low.random_loss = loss / 2
    low.run(600)
    assert [d for _, d in low.decisions] == [Decision.UP]


def test_no_reports_no_decision() -> None:
    controller = LadderController(2, layer=1)
    for i in range(100):
        # Packets go out, but the viewer never reports: nothing is known.
        assert controller.observe(Sample(at=i * 0.5, packets_sent=i * 50,
                                         bytes_sent=i * 60_000)) is Decision.STAY
    assert controller.estimate.loss is None
    # A report that stops coming is stale after a while: no clean time accrues.
    controller = LadderController(2, layer=1)
    for i in range(40):
        report = min(i, 2) * 0.5
        decision = controller.observe(Sample(
            at=i * 0.5, packets_sent=i * 50, bytes_sent=i * 60_000, packets_lost=0,
            packets_expected=min(i, 2) * 50, report_at=report))
        assert decision is Decision.STAY, i


def test_a_pending_move_is_not_decided_twice_and_tuning_is_checked() -> None:
    controller = LadderController(2)
    decisions = []
    for i in range(1, 12):
        decisions.append(controller.observe(Sample(
            at=i * 0.5, packets_sent=i * 100, bytes_sent=0, packets_lost=i * 50,
            packets_expected=i * 100, report_at=float(i))))
    assert decisions.count(Decision.DOWN) == 1 and controller.pending == 1
    controller.switched(1, 6.0)
    assert controller.layer == 1 and controller.pending is None
    with pytest.raises(ValueError, match="layer 2 of 2"):
        controller.switched(2, 7.0)
    with pytest.raises(ValueError, match="need 0 < up < down"):
        LadderTuning(up_loss=0.2, down_loss=0.1)


# -- the quality channel's messages ------------------------------------------------


def test_quality_requests_parse_and_replies_say_the_layer() -> None:
    assert parse_request('{"quality": "low"}') == "low"
    assert layer_for("low") is Layer.LOW and layer_for("high") is Layer.HIGH
    assert layer_for("auto") is None
    reply = json.loads(state_reply("auto", Layer.LOW, (Layer.HIGH, Layer.LOW)))
    assert reply == {"type": "quality", "mode": "auto", "layer": "low",
                     "layers": ["high", "low"]}
    for bad, message in [
        (b"{}", "binary"),
        ("{", "not JSON"),
        ('{"quality": "medium"}', "'medium': need one of auto, high, low"),
        ('{"quality": "low", "x": 1}', "need exactly"),
        ("[]", "need exactly"),
        ("x" * 200, "at most 128 bytes"),
    ]:
        with pytest.raises(BadQualityRequest, match=message):
            parse_request(bad)


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_message_is_a_mode_or_a_clear_error(data: str | bytes) -> None:
    try:
        assert parse_request(data) in ("auto", "high", "low")
    except BadQualityRequest as exc:
        assert str(exc)


def test_picture_loss_during_a_probe_reverts_it_at_once() -> None:
    from camera.ladder import Decision, LadderController

    controller = LadderController(2, layer=1)
    assert controller.picture_lost(0.0) is Decision.STAY  # not probing: nothing moves
    controller.switched(0, at=10.0)  # a probe up took effect
    assert controller.probing
    assert controller.picture_lost(10.5) is Decision.DOWN
    assert controller.pending == 1 and controller.failed_probes == 1
    assert not controller.probing
    assert controller.picture_lost(10.6) is Decision.STAY  # one revert, not two
    controller.switched(1, at=10.7)
    controller.switched(0, at=30.0)
    assert controller.picture_lost(30.0 + controller.tuning.probe_window + 1) is Decision.STAY


def test_a_padding_probe_ramps_its_padding_and_stops_when_over() -> None:
    from camera.ladder import PaddingProbe, ProbeState

    tuning = LadderTuning(pad_ramp=0.5, pad_hold=0.5, pad_grace=0.2)
    probe = PaddingProbe(at=10.0, extra=800_000, packets_sent=1000, resent=5,
                         loss_before=0.0, tuning=tuning)
    assert probe.due(10.0) == 0
    # Linear ramp to 100 kB/s over 0.5 s: 6.25 kB by its middle, 25 kB at its top,
    # then 100 kB/s for 0.5 s more: 75 kB in all, and nothing after.
    assert probe.due(10.25) == 6250
    probe.padded(6300)  # a packet more than was due
    assert probe.due(10.5) == 25_000 - 6300
    probe.padded(25_000 - 6300)
    assert probe.owed(11.0) == pytest.approx(75_000)
    assert probe.due(12.0) == 75_000 - 25_000
    assert probe.check(11.1, 1100, 5) is ProbeState.RUNNING  # the grace: NACKs may come
    assert probe.check(11.2, 1110, 6) is ProbeState.PASSED
    assert probe.due(11.3) == 0 and probe.loss == pytest.approx(1 / 110)
    # With a burst: it is taken once, when the ramp and hold are over, and the verdict
    # waits for the NACKs of the frame sent behind it.
    probe = PaddingProbe(at=0.0, extra=800_000, packets_sent=0, resent=0,
                         loss_before=0.0, burst=30_000, tuning=tuning)
    assert probe.take_burst(0.9, 90, 0) == 0
    assert probe.take_burst(1.0, 100, 0) == 30_000 and probe.take_burst(1.1, 101, 0) == 0
    assert probe.check(1.1, 104, 0) is ProbeState.RUNNING
    # The two packets of the frame behind the burst, of ten sent since: 3 of 110 over
    # the whole probe would be random loss, 2 of 10 after the burst are not.
    assert probe.check(1.19, 110, 2) is ProbeState.FAILED
    assert "after the burst" in probe.reason
    with pytest.raises(ValueError, match="padding rate"):
        PaddingProbe(at=0, extra=0, packets_sent=0, resent=0, loss_before=0)
    with pytest.raises(ValueError, match="padding ramp"):
        LadderTuning(pad_ramp=-1)


def test_a_padding_probe_fails_on_nacks_beyond_the_loss_before_it() -> None:
    from camera.ladder import PaddingProbe, ProbeState

    def probe(loss_before: float = 0.04) -> PaddingProbe:
        return PaddingProbe(at=0.0, extra=1_000_000, packets_sent=0, resent=0,
                            loss_before=loss_before)

    # Random loss as before the probe (4 % then, 4 % now): not the padding's doing.
    p = probe()
    assert p.check(0.5, 100, 4) is ProbeState.RUNNING
    # Two packets are no evidence, whatever their share; three over 4 + 5 % are.
    p = probe(0.0)
    assert p.check(0.1, 10, 2) is ProbeState.RUNNING
    assert p.check(0.2, 20, 3) is ProbeState.FAILED and "3 of 20" in p.reason
    assert p.due(0.3) == 0  # the padding stops at once
    assert p.check(5.0, 20, 3) is ProbeState.FAILED  # and stays failed
    p = probe()
    p.picture_lost()
    assert p.check(0.1, 10, 0) is ProbeState.FAILED and p.reason == "picture loss"


def test_a_refused_padding_probe_keeps_the_layer_and_backs_off() -> None:
    controller = LadderController(2, layer=1)
    controller.pending = 0  # as a decided probe up leaves it
    controller.probe_refused()
    assert controller.pending is None and controller.layer == 1
    assert controller.failed_probes == 1 and not controller.probing
    assert controller.up_after == 2 * controller.tuning.up_after
    controller.pending = 1  # not a move up: nothing to refuse
    controller.probe_refused()
    assert controller.pending == 1 and controller.failed_probes == 1


# -- recorded traces: random loss against a capped link ------------------------------

TRACES = json.loads((Path(__file__).parent / "data" / "ladder_traces.json").read_text())


def replay(name: str, tuning: LadderTuning | None = None
           ) -> tuple[LadderController, list[tuple[float, Decision]], list[Estimate]]:
    """Feed a recorded trace to a controller; the layer follows the recording (what the
    camera did), so a decision the recording did not take stays pending."""
    rows = TRACES[name]
    controller = LadderController(2, tuning, layer=rows[0][7])
    decisions: list[tuple[float, Decision]] = []
    estimates: list[Estimate] = []
    for at, sent, sent_bytes, lost, expected, report_at, rtt, layer in rows:
        if layer != controller.layer:
            controller.switched(layer, at)
        decision = controller.observe(Sample(
            at=at, packets_sent=sent, bytes_sent=sent_bytes, packets_lost=lost,
            packets_expected=expected, report_at=report_at, rtt=rtt))
        estimates.append(controller.estimate)
        if decision is not Decision.STAY:
            decisions.append((at, decision))
    return controller, decisions, estimates


def test_recorded_random_loss_demotes_nobody() -> None:
    controller, decisions, estimates = replay("loss")
    losses = [e.loss for e in estimates if e.loss is not None]
    # 5 % random loss at ~60 packets/s: some windows see over 10 % ...
    assert max(losses) > controller.tuning.down_loss
    # ... but the RTT stays flat (no queue) and the loss is never a policer's: no move.
    assert max(e.rtt_rise for e in estimates if e.rtt_rise is not None) < 0.005
    assert decisions == [] and controller.layer == 0


def test_recorded_cap_demotes_once_the_queue_shows() -> None:
    controller, decisions, estimates = replay("cap")
    rows = TRACES["cap"]
    # The cap went on ~10 s in; the queue it builds shows in the RTT once a keyframe
    # burst overflows it, with loss (or the loss alone is a policer's): down within
    # an evaluation or two.
    first = next(at for (at, *_), e in zip(rows, estimates, strict=True)
                 if e.loss is not None and (e.loss >= controller.tuning.congestion_loss or (
                     e.rtt_rise is not None and e.rtt_rise >= controller.tuning.rtt_rise
                     and e.loss > controller.tuning.up_loss)))
    down = next(at for at, d in decisions if d is Decision.DOWN)
    assert 10 < first <= down <= first + 1.0, (first, down)
    # Nothing moved before the cap; on the low layer the queue still stands (the
    # RTT stays up): no probe into the full link while capped (lifted at ~31 s).
    assert all(at > 10 for at, _ in decisions)
    assert [d for at, d in decisions if at < 31] == [Decision.DOWN]


def test_a_standing_queue_holds_probes_until_the_cap_lifts() -> None:
    """Capped just over the low layer's rate: a queue stands on the low layer too. No
    probe while it stands; back up within ten seconds once the cap is lifted."""
    link = Link(seed=5)
    link.run(10)
    link.cap = 600_000
    link.run(50)
    down = link.first(10, lambda layer: layer == 1)
    assert down - 10 <= 4, down
    assert [d for _, d in link.decisions] == [Decision.DOWN]
    link.cap = None
    link.run(80)
    back_up = link.first(50, lambda layer: layer == 0)
    assert back_up - 50 <= 10, back_up
    assert link.controller.failed_probes == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_five_percent_random_loss_on_a_thin_stream_stays_high(seed: int) -> None:
    """A stream of ~60 packets/s (the test pattern's) at 5 % random loss, ten minutes:
    loss alone over 10 % in two windows running happens, and used to demote the viewer
    (loss-only tuning below); with a flat RTT it moves nobody now."""

    def run(tuning: LadderTuning | None) -> list[tuple[float, Decision]]:
        rng = random.Random(seed)
        controller = LadderController(2, tuning)
        sent = lost = 0
        report: tuple[float, int, int] | None = None
        decisions = []
        for step in range(1, 1200):
            now = step * 0.5
            packets = 30
            lost += sum(rng.random() < 0.05 for _ in range(packets))
            sent += packets
            if step % 2 == 0:
                report = (now, lost, sent)
            decision = controller.observe(Sample(
                at=now, packets_sent=sent, bytes_sent=sent * 900,
                packets_lost=report[1] if report else None,
                packets_expected=report[2] if report else None,
                report_at=report[0] if report else None, rtt=0.002 + 0.0005 * rng.random()))
            if decision is not Decision.STAY:
                decisions.append((now, decision))
                controller.cancel()
        return decisions

    assert run(None) == []
    loss_only = LadderTuning(loss_only=True)
    assert any(d is Decision.DOWN for _, d in run(loss_only))


def test_recorded_lab_cap_demotes_on_a_queue_each_keyframe_fills() -> None:
    """The NAT lab's capped viewer: the high layer's average fits the cap, its IDRs do
    not. Loss of a few percent with the RTT up at most reports (not all three: the
    queue drains between keyframes) is congestion: down within a few seconds of the
    first loss, not when a policer's share of the packets is finally lost."""
    rows = TRACES["lab_cap"]
    controller, decisions, estimates = replay("lab_cap")
    first_loss = next(at for (at, *_), e in zip(rows, estimates, strict=True)
                      if e.loss is not None and e.loss > 0)
    down = next(at for at, d in decisions if d is Decision.DOWN)
    assert down - first_loss <= 3.5, (first_loss, down)
    # The loss then was never a policer's, nor did the queue stand through three reports.
    before = [e for (at, *_), e in zip(rows, estimates, strict=True) if at <= down]
    assert max(e.loss or 0 for e in before) < controller.tuning.congestion_loss
    assert all(e.rtt_rise is None or e.rtt_rise < controller.tuning.rtt_rise for e in before)


def _resending(resent_share: float, rtt: Callable[[int], float]) -> list[Decision]:
    """A viewer that repairs everything by NACK (its receiver reports say nothing is
    lost) while the camera resends ``resent_share`` of what it sends."""
    controller = LadderController(2)
    decisions = []
    for step in range(1, 41):
        now = step * 0.5
        sent = 30 * step
        report = step // 2 * 2  # a receiver report every second
        decision = controller.observe(Sample(
            at=now, packets_sent=sent, bytes_sent=sent * 900, packets_lost=0,
            packets_expected=30 * report, report_at=float(report), rtt=rtt(step),
            packets_resent=round(sent * resent_share)))
        if decision is not Decision.STAY:
            decisions.append(decision)
            controller.cancel()
    return decisions


def test_loss_repaired_by_nack_counts_as_loss() -> None:
    # Chromium under a cap: nothing lost in its reports, 5 % resent, a queue: down.
    assert Decision.DOWN in _resending(0.05, lambda step: 0.005 + 0.04 * (step > 6))
    # The same resends with a flat RTT are random loss: nobody moves.
    assert _resending(0.05, lambda step: 0.005) == []


def test_recorded_random_loss_on_a_busy_machine_demotes_nobody() -> None:
    """Two odd receiver reports of three (a busy machine) a little over the RTT floor,
    with random loss: not the queue of a link too thin for the layer."""
    controller, decisions, estimates = replay("loss_busy")
    assert max(e.rtt_rise_median or 0 for e in estimates) >= controller.tuning.rtt_rise
    assert max(e.loss or 0 for e in estimates) > controller.tuning.up_loss
    assert decisions == [] and controller.layer == 0


def test_a_policers_share_of_loss_moves_down_at_once() -> None:
    """A fifth of the packets lost in one window is no run of random loss: down at the
    first evaluation that sees it, not the second."""
    controller = LadderController(2)
    decisions, losses = [], []
    for step in range(1, 13):
        sent = 30 * step
        lost = 0 if step <= 8 else 10 * (step - 8)  # a third lost from 4.5 s on
        decisions.append(controller.observe(Sample(
            at=step * 0.5, packets_sent=sent, bytes_sent=sent * 900, packets_lost=lost,
            packets_expected=sent, report_at=step * 0.5, rtt=0.005)))
        losses.append(controller.estimate.loss or 0.0)
    first_over = next(k for k, loss in enumerate(losses)
                      if loss >= controller.tuning.congestion_loss)
    assert decisions.index(Decision.DOWN) == first_over


# -- the RTT the controller sees -------------------------------------------------------


async def test_each_receiver_report_gives_its_own_rtt_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """watch_rtt hands over the raw sample behind aiortc's average for every report
    that answers the latest sender report (several between two looks at the stats:
    a browser reports with every NACK), and none for one that answers an older one;
    it goes on top of the camera's other RTCP hook, as a session installs them."""
    import time
    import types

    from aiortc import RTCRtpSender
    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

    from camera.broadcaster import Broadcaster
    from camera.compat import watch_rtcp, watch_rtt
    from camera.track import PassthroughTrack
    from tests.camera.test_broadcaster import Requests, _dtls

    # aiortc reads the wall clock when a report arrives: a frozen one, so that a
    # busy machine's scheduling cannot add milliseconds to the samples.
    now = time.time()
    monkeypatch.setattr("aiortc.rtcrtpsender.time", types.SimpleNamespace(time=lambda: now))
    sender = RTCRtpSender(PassthroughTrack(Broadcaster(Requests())), _dtls())
    seen: list[int] = []
    watch_rtcp(sender, lambda: seen.append(1))
    samples: list[float] = []
    watch_rtt(sender, samples.append)

    async def report(lsr: int, answered_ago: float, held: float) -> None:
        sender._RTCRtpSender__lsr = 77  # type: ignore[attr-defined]
        sender._RTCRtpSender__lsr_time = now - answered_ago  # type: ignore[attr-defined]
        info = RtcpReceiverInfo(ssrc=sender._ssrc, fraction_lost=0, packets_lost=0,
                                highest_sequence=0, jitter=0, lsr=lsr,
                                dlsr=round(held * 65536))
        await sender._handle_rtcp_packet(RtcpRrPacket(ssrc=1, reports=[info]))

    await report(77, 0.050, 0.010)  # 40 ms
    await report(77, 0.130, 0.010)  # 120 ms: the average moves 15 % of the way
    await report(12, 0.500, 0.010)  # an older sender report's answer: no sample
    await report(77, 0.040, 0.010)  # 30 ms
    assert len(seen) == 4
    assert [round(x, 2) for x in samples] == [0.04, 0.12, 0.03]


def _busy_machine(host_lag: bool) -> list[Decision]:
    """5 % random loss (Chromium repairs it all: resent), a 3 ms path, and a camera
    whose event loop is 40 ms late for 4 s from 10 s: each receiver report (four a
    second, exact samples) handled 40 ms late."""
    rng = random.Random(3)
    controller = LadderController(2)
    decisions = []
    sent = resent = 0
    for step in range(1, 41):
        now = step * 0.5
        busy = 10 <= now < 14
        sent += 30
        resent += sum(rng.random() < 0.05 for _ in range(30))
        rtts = tuple(0.003 + 0.001 * rng.random() + (0.040 if busy else 0.0)
                     for _ in range(2))
        decision = controller.observe(Sample(
            at=now, packets_sent=sent, bytes_sent=sent * 900, packets_lost=0,
            packets_expected=sent, report_at=now, rtt=rtts[-1], packets_resent=resent,
            rtt_samples=rtts, host_lag=(0.040 if busy else 0.001) if host_lag else None))
        if decision is not Decision.STAY:
            decisions.append(decision)
            controller.cancel()
    return decisions


def test_a_busy_camera_is_no_queue() -> None:
    """The RTT the camera measures includes how late it handled the report: a busy
    event loop (its own timer as late) is not a queue at the bottleneck, so random
    loss on a busy machine moves nobody; unaccounted, the same rise would."""
    assert _busy_machine(host_lag=True) == []
    assert Decision.DOWN in _busy_machine(host_lag=False)


def test_a_queue_on_a_calm_camera_still_moves_it_down() -> None:
    """The same loss with the same rise while the camera's loop is on time (one slow
    moment apart, which hides nothing): a queue."""
    controller = LadderController(2)
    decisions = []
    for step in range(1, 21):
        now = step * 0.5
        sent = 30 * step
        rtts = (0.003, 0.003) if now < 5 else (0.045, 0.048)
        decision = controller.observe(Sample(
            at=now, packets_sent=sent, bytes_sent=sent * 900, packets_lost=0,
            packets_expected=sent, report_at=now, rtt=rtts[-1],
            packets_resent=round(0.05 * sent), rtt_samples=rtts,
            host_lag=0.060 if step == 11 else 0.001))
        if decision is not Decision.STAY:
            decisions.append((now, decision))
            controller.cancel()
    assert decisions and decisions[0][1] is Decision.DOWN and decisions[0][0] <= 7.5


def test_recorded_lab_cap_chromium_each_report_its_own_sample() -> None:
    """The NAT lab's capped Chromium tab, recorded with each receiver report's own RTT
    sample (two to six a look) and the camera's lateness: no queue read before the
    cap; down within a few seconds of the first loss; each probe up into the cap
    (the recording's switches) reverted within its window; up again after the lift."""
    rows = TRACES["lab_cap_chromium"]
    controller = LadderController(2, layer=rows[0][7])
    decisions: list[tuple[float, Decision]] = []
    estimates: list[tuple[float, Estimate]] = []
    ups: list[float] = []
    for at, sent, sent_bytes, lost, expected, report_at, rtt, layer, resent, rtts, lag in rows:
        if layer != controller.layer:
            if layer < controller.layer:
                ups.append(at)
            controller.switched(layer, at)
        decision = controller.observe(Sample(
            at=at, packets_sent=sent, bytes_sent=sent_bytes, packets_lost=lost,
            packets_expected=expected, report_at=report_at, rtt=rtt, packets_resent=resent,
            rtt_samples=tuple(rtts), host_lag=lag))
        estimates.append((at, controller.estimate))
        if decision is not Decision.STAY:
            decisions.append((at, decision))
    assert sum(len(row[9]) for row in rows) > 2 * len(rows)  # several reports a look
    t = controller.tuning
    first_loss = next(at for at, e in estimates if e.loss is not None and e.loss > 0)
    before = [e for at, e in estimates if at < first_loss]
    assert all((e.rtt_rise or 0) < t.rtt_rise and (e.rtt_rise_median or 0) < t.burst_rise
               for e in before)
    down = next(at for at, d in decisions if d is Decision.DOWN)
    assert first_loss < down <= first_loss + 3.5, (first_loss, down)
    *capped_probes, after_lift = ups
    assert capped_probes
    for up in capped_probes:
        assert any(d is Decision.DOWN and up < at <= up + t.probe_window
                   for at, d in decisions), (up, decisions)
    assert all(at < after_lift for at, d in decisions if d is Decision.DOWN)


# -- IDRs that do not fit: their packets are the ones resent ---------------------------


def test_the_send_loop_tells_idr_packets() -> None:
    """Every packet of an IDR access unit (SPS/PPS aggregated, IDR slice in fragments)
    counts as the IDR's, with or without RTP header extensions; none of a P frame's."""
    from camera.compat.fastsend import carries_keyframe, packetize_h264, payload_carries_keyframe

    start = b"\x00\x00\x00\x01"
    idr = (start + b"\x09\xf0" + start + b"\x67\x42\xc0\x1f\xda" + start + b"\x68\xce\x3c\x80"
           + start + b"\x65" + bytes(range(256)) * 20)
    p_frame = start + b"\x09\x30" + start + b"\x41" + bytes(range(256)) * 8
    idr_payloads, p_payloads = packetize_h264(idr), packetize_h264(p_frame)
    assert len(idr_payloads) > 3 and len(p_payloads) > 1
    assert all(payload_carries_keyframe(x) for x in idr_payloads)
    assert not any(payload_carries_keyframe(x) for x in p_payloads)
    plain = bytes([0x80, 96]) + bytes(10)
    extended = bytes([0x90, 96]) + bytes(10) + b"\xbe\xde\x00\x01" + b"\x10\x01\x00\x00"
    assert carries_keyframe(plain + idr_payloads[-1]) and carries_keyframe(extended
                                                                           + idr_payloads[0])
    assert not carries_keyframe(extended + p_payloads[-1]) and not carries_keyframe(plain)


def _keyframe_link(seed: int, idr_tail: int, random_loss: float
                   ) -> tuple[list[Decision], bool]:
    """A layer of 40 packets a second and an IDR of 16 packets every 2 s, every packet
    lost repaired by NACK (the receiver reports nothing lost), a flat 3 ms RTT: the
    last ``idr_tail`` packets of each IDR dropped (a link its average fits) and/or
    random loss; five minutes. The decisions, and whether the IDRs were ever said not
    to fit."""
    rng = random.Random(seed)
    controller = LadderController(2)
    decisions = []
    sent = idr_sent = resent = idr_resent = 0
    tails = False
    for step in range(1, 601):
        now = step * 0.5
        packets = [False] * 20
        if step % 4 == 0:
            packets[:16] = [True] * 16  # the IDR leads this half second
        for k, is_idr in enumerate(packets):
            lost = rng.random() < random_loss or (is_idr and k >= 16 - idr_tail)
            sent += 1
            idr_sent += is_idr
            resent += lost
            idr_resent += lost and is_idr
        decision = controller.observe(Sample(
            at=now, packets_sent=sent, bytes_sent=sent * 900, packets_lost=0,
            packets_expected=sent, report_at=now, rtt=0.003, packets_resent=resent,
            rtt_samples=(0.003, 0.003), host_lag=0.001, packets_resent_keyframe=idr_resent,
            keyframe_packets_sent=idr_sent))
        tails = tails or controller.idr_tails
        if decision is not Decision.STAY:
            decisions.append((now, decision))
            controller.cancel()
    return [d for _, d in decisions], tails


@pytest.mark.parametrize("seed", [1, 2])
def test_idrs_that_do_not_fit_move_down_where_random_loss_does_not(seed: int) -> None:
    """The tails of the IDRs lost (6 of 16 each: the RTT shows nothing) is congestion;
    random loss over the same stream, its IDR packets lost in their share, is not (at
    10 % a window now and then reaches a policer's 20 %: that is another rule)."""
    decisions, tails = _keyframe_link(seed, idr_tail=6, random_loss=0.0)
    assert tails and decisions[0] is Decision.DOWN
    assert _keyframe_link(seed, idr_tail=0, random_loss=0.05) == ([], False)
    assert not _keyframe_link(seed, idr_tail=0, random_loss=0.10)[1]
