"""The port predictor and birthday planner: budgets, targets, predictions (sans-I/O)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aioice import Candidate
from hypothesis import given, settings
from hypothesis import strategies as st

from camera.punch import (
    BadPunchPlan,
    NatProfile,
    PunchBudget,
    PunchConfig,
    PunchGovernor,
    PunchPlan,
    birthday_probability,
    nat_attribute,
    plan_punch,
    predict_ports,
    predicted_candidates,
    profile_from_report,
    sweep_order,
    with_nat_attribute,
    with_predicted_candidates,
)
from services.stun.allocation import classify_allocation
from services.stun.discovery import NatReport
from tests.services.stun.test_allocation import RECORDED_SEQUENTIAL, sequential_ports

PEER_PUBLIC = "203.0.113.104"
OTHER_HOST = "203.0.113.99"
SEQUENTIAL = NatProfile(symmetric=True, allocation="sequential", step=1, last_port=20014)
RANDOM = NatProfile(symmetric=True, allocation="random")
CONE = NatProfile(symmetric=False)


def test_birthday_odds_match_the_textbook() -> None:
    # 256 mappings x 256 probes over ~64k ports: ~63%; x 1024: ~98%.
    assert birthday_probability(256, 256) == pytest.approx(0.64, abs=0.02)
    assert birthday_probability(256, 1024) == pytest.approx(0.98, abs=0.01)
    assert birthday_probability(0, 1024) == 0.0


def test_predicted_ports_follow_the_step_and_wrap() -> None:
    assert predict_ports(20018, 1, 3) == (20019, 20020, 20021)
    assert predict_ports(65535, 1, 2) == (1024, 1025)
    assert predict_ports(20000, -2, 2) == (19998, 19996)
    with pytest.raises(BadPunchPlan, match="step must be non-zero"):
        predict_ports(20000, 0, 2)
    with pytest.raises(BadPunchPlan, match="70000"):
        predict_ports(70000, 1, 2)


@pytest.mark.parametrize("ports", RECORDED_SEQUENTIAL)
def test_recorded_sequence_predicts_the_next_mapping(ports: tuple[int, ...]) -> None:
    # Hold back the last recorded mapping: predicted from the ones before it.
    report = classify_allocation(ports[:-1])
    assert report.step is not None
    assert ports[-1] in predict_ports(ports[-2], report.step, 16)


def test_recorded_runs_predict_the_next_runs_first_flow() -> None:
    # Between the two recorded runs natcheck's other flows took five ports: the
    # window of 16 after the first run's last mapping still holds the next flow.
    first, second = RECORDED_SEQUENTIAL
    step = classify_allocation(first).step
    assert step == 1
    assert second[0] in predict_ports(first[-1], step, 16)
    assert second[0] not in predict_ports(first[-1], step, 4)  # and a window can be too small


@given(start=st.integers(2048, 60000), step=st.sampled_from([1, 2, 3, -1]),
       gaps=st.lists(st.integers(0, 2), min_size=6, max_size=6),
       between=st.integers(0, 15))
def test_prediction_covers_the_next_flow_despite_other_traffic(
        start: int, step: int, gaps: list[int], between: int) -> None:
    # natcheck saw five flows (others' flows in between), then ``between`` more
    # flows of other hosts took ports before ours: the window of 16 holds it.
    # At least once natcheck's flows were back to back.
    seen = sequential_ports(start, [step * (1 + g) for g in [0, *gaps[:3]]])
    report = classify_allocation(seen)
    assert report.pattern == "sequential" and report.step == step
    ours = sequential_ports(seen[-1], [step] * (between + 1))[-1]
    assert ours in predict_ports(seen[-1], report.step, 16)


def report(mapping: Any, ports: tuple[int, ...] = ()) -> NatReport:
    found = classify_allocation(ports) if ports else None
    return NatReport(("203.0.113.1", 3479), None, (PEER_PUBLIC, 4000), None,
                     mapping, "address-and-port-dependent", False, None,
                     found.pattern if found else None, ports, found.step if found else None)


def test_the_sequential_side_offers_its_next_mappings_from_its_natcheck() -> None:
    profile = profile_from_report(report("address-and-port-dependent", RECORDED_SEQUENTIAL[0]))
    assert profile == SEQUENTIAL
    assert predicted_candidates(profile, PEER_PUBLIC, PunchConfig())[:2] == (
        (PEER_PUBLIC, 20015), (PEER_PUBLIC, 20016))
    assert predicted_candidates(profile, PEER_PUBLIC, PunchConfig(enabled=False)) == ()
    cone = profile_from_report(report("endpoint-independent"))
    assert cone == CONE and predicted_candidates(cone, PEER_PUBLIC, PunchConfig()) == ()
    assert profile_from_report(report("address-and-port-dependent", (50437, 9120, 33804,
                                                                     61187))) == RANDOM_SEEN


RANDOM_SEEN = NatProfile(symmetric=True, allocation="random", last_port=61187)


def offered(ports: list[int]) -> set[tuple[str, int]]:
    return {("198.51.100.66", 50000), (PEER_PUBLIC, 3000), *((PEER_PUBLIC, p) for p in ports)}


def test_sequential_plan_checks_exactly_the_offered_predictions() -> None:
    predicted = list(predict_ports(20014, 1, 16))
    candidates = offered(predicted[:10])  # the peer offered ten of them
    plan = plan_punch(CONE, SEQUENTIAL, candidates, [PEER_PUBLIC],
                      PunchConfig(predicted_ports=16), random.Random(1))
    assert plan.strategy == "sequential"
    assert plan.destinations == {(PEER_PUBLIC, p) for p in predicted[:10]}


def test_birthday_probe_targets_only_the_offered_public_address() -> None:
    plan = plan_punch(CONE, RANDOM, offered([]), [PEER_PUBLIC, OTHER_HOST], PunchConfig(),
                      random.Random(2))
    assert plan.strategy == "birthday-probe"
    assert {ip for ip, _ in plan.destinations} == {PEER_PUBLIC}
    assert plan.packets == 2048 and len(plan.destinations) == 2048  # distinct ports
    assert plan.hit_probability > 0.999


def test_random_against_random_is_not_attempted() -> None:
    assert plan_punch(RANDOM, RANDOM, offered([]), [PEER_PUBLIC], PunchConfig(),
                      random.Random(3)).strategy == "none"


def test_switched_off_it_sends_nothing() -> None:
    plan = plan_punch(CONE, RANDOM, offered([]), [PEER_PUBLIC], PunchConfig(enabled=False),
                      random.Random(4))
    assert plan == PunchPlan("off", 0, (), 0.0)


def test_the_process_budget_holds_four_attempts_then_one_every_fifteen_seconds() -> None:
    """A peer may offer anyone's address as its own: however many sessions it opens,
    the process punches no more than the governor's bucket allows."""
    governor = PunchGovernor()
    probe = plan_punch(CONE, RANDOM, offered([]), [PEER_PUBLIC], PunchConfig(),
                       random.Random(5))
    assert probe.packets == 2048
    assert [governor.admit(probe, 100.0) for _ in range(5)] == [True] * 4 + [False]
    assert not governor.admit(probe, 107.0)  # half an attempt's worth back
    assert governor.admit(probe, 115.1)
    assert not governor.admit(probe, 115.2)
    # A small plan fits in what is left; sustained, 2048 packets per 15 s at most.
    sweep = PunchPlan("sequential-sweep", 1, probe.sends[:128], 1.0)
    assert governor.admit(sweep, 116.0)
    admitted = sum(governor.admit(probe, 200.0 + t) for t in range(0, 600))
    assert admitted * 2048 <= 4 * 2048 + 600 * 2048 / 15 + 2048
    with pytest.raises(BadPunchPlan, match="capacity must hold one attempt"):
        PunchGovernor(capacity=100)
    with pytest.raises(BadPunchPlan, match="refill_per_second must be positive"):
        PunchGovernor(refill_per_second=0)


@pytest.mark.parametrize(("settings_", "needle"), [
    ({"max_packets": 0}, "max_packets must be at least 1, not 0"),
    ({"max_seconds": -1.0}, "max_seconds must be positive, not -1.0"),
    ({"packets_per_second": 0.0}, "packets_per_second"),
    ({"packets_per_second": 1000.0}, r"\(0, 200\], not 1000.0"),
])
def test_bad_budgets_are_named(settings_: dict[str, float], needle: str) -> None:
    with pytest.raises(BadPunchPlan, match=needle):
        PunchBudget(**settings_)  # type: ignore[arg-type]


profiles = st.one_of(
    st.just(CONE), st.just(RANDOM),
    st.builds(NatProfile, symmetric=st.just(True), allocation=st.just("sequential"),
              step=st.sampled_from([1, 2, -1]), last_port=st.integers(1024, 65535),
              window=st.sampled_from([None, 8, 64, 1024])),
)
addresses = st.tuples(st.sampled_from([PEER_PUBLIC, "198.51.100.66", "2001:db8::2"]),
                      st.integers(1, 65535))


@settings(max_examples=60, deadline=None)
@given(local=profiles, remote=profiles,
       candidates=st.lists(addresses, max_size=40),
       public=st.lists(st.sampled_from([PEER_PUBLIC, OTHER_HOST, "2001:db8::2"]), max_size=3),
       max_packets=st.integers(1, 5000), max_seconds=st.floats(0.01, 30),
       rate=st.floats(1, 200), seed=st.integers(0, 2**16), enabled=st.booleans())
def test_every_plan_stays_inside_its_budget_and_the_offered_addresses(
        local: NatProfile, remote: NatProfile, candidates: list[tuple[str, int]],
        public: list[str], max_packets: int, max_seconds: float, rate: float, seed: int,
        enabled: bool) -> None:
    budget = PunchBudget(max_packets, max_seconds, rate)
    config = PunchConfig(enabled=enabled, budget=budget)
    plan = plan_punch(local, remote, candidates, public, config, random.Random(seed),
                      controlling=bool(seed % 2), remote_anchors=candidates)
    assert plan.packets <= max_packets
    assert plan.duration <= max_seconds + 1e-9
    times = [send.at for send in plan.sends]
    assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(times, times[1:], strict=False))
    offered_ips = {ip for ip, _ in candidates}
    # Never an address the peer did not offer; ports beyond the offered ones only
    # for the birthday probe, and only at an offered server-reflexive address.
    assert {ip for ip, _ in plan.destinations} <= offered_ips & (set(public) or {""})
    if plan.strategy in ("sequential", "birthday-open"):
        assert plan.destinations <= set(candidates)
    if plan.strategy == "sequential-sweep":
        # Only the window the peer invited, after one of its offered anchors.
        assert remote.step is not None and remote.window is not None
        assert any(plan.destinations <= {(ip, p) for p in predict_ports(
            port, remote.step, min(remote.window, config.sweep_ports))}
            for ip, port in candidates if ip in public)
    assert all(0 <= send.socket < max(plan.sockets, 1) for send in plan.sends)
    if not enabled:
        assert plan.packets == 0


# -- predicted candidates in the camera's answer -------------------------------------

ANSWER = "\r\n".join([
    "v=0", "m=video 9 UDP/TLS/RTP/SAVPF 102",
    "a=candidate:aa 1 udp 2130706431 10.0.0.5 40000 typ host",
    "a=candidate:bb 1 udp 1694498815 198.51.100.7 20005 typ srflx raddr 10.0.0.5 rport 40000",
    "a=candidate:cc 1 udp 1694498815 2001:db8::5 40002 typ srflx raddr 2001:db8::5 rport 40002",
    "a=candidate:dd 1 udp 16777215 203.0.113.1 50000 typ relay raddr 198.51.100.7 rport 20006",
    "a=end-of-candidates", ""])


def test_predicted_candidates_follow_the_srflx_one_below_it_in_priority() -> None:
    sdp = with_predicted_candidates(ANSWER, step=1, count=3)
    lines = sdp.split("\r\n")
    srflx = lines.index(next(line for line in lines if "20005 typ srflx" in line))
    predicted = lines[srflx + 1:srflx + 4]
    assert predicted == [
        f"a=candidate:pred{k} 1 udp {1694498815 - k} 198.51.100.7 {20005 + k} typ srflx "
        "raddr 10.0.0.5 rport 40000" for k in (1, 2, 3)]
    # Nothing else changed: not the host, IPv6 or relay candidates, not the ending.
    assert [line for line in lines if not line.startswith("a=candidate:pred")] == \
        ANSWER.split("\r\n")
    # Every prediction parses as a candidate of the announced address only.
    for line in predicted:
        candidate = Candidate.from_sdp(line.removeprefix("a=candidate:"))
        assert candidate.host == "198.51.100.7" and candidate.type == "srflx"


@given(port=st.integers(1024, 65535), step=st.integers(-64, 64).filter(bool),
       count=st.integers(1, 32))
def test_predictions_stay_in_the_port_range_and_count(port: int, step: int, count: int) -> None:
    sdp = ANSWER.replace("20005", str(port))
    extra = [line for line in with_predicted_candidates(sdp, step, count).split("\r\n")
             if line.startswith("a=candidate:pred")]
    ports = [int(line.split()[5]) for line in extra]
    assert len(ports) <= count and len(set(ports)) == len(ports)
    assert all(1024 <= p <= 65535 and p != port for p in ports)


def _nat_counter(anchor: int, step: int, drift: int) -> Any:
    """A sequential NAT: the port of each new destination, in the order they come,
    after ``drift`` flows nobody announced since the one that got ``anchor``."""
    ports = iter(predict_ports(anchor, step, drift + 128)[drift:])
    mapping: dict[tuple[str, int], int] = {}

    def port_for(destination: tuple[str, int]) -> int:
        if destination not in mapping:
            mapping[destination] = next(ports)
        return mapping[destination]
    return port_for


PUBLIC_A, PUBLIC_B = "198.51.100.7", "203.0.113.104"


@settings(max_examples=300, deadline=None)
@given(anchor_a=st.integers(1024, 65535), anchor_b=st.integers(1024, 65535),
       step_a=st.sampled_from([1, 2, -1, 3]), step_b=st.sampled_from([1, 2, -1]),
       drift=st.integers(0, 63), share=st.floats(0, 1))
def test_two_sequential_nats_meet_for_every_drift_within_the_window(
        anchor_a: int, anchor_b: int, step_a: int, step_b: int, drift: int,
        share: float) -> None:
    """Both sides behind sequential NATs whose counters moved on by ``drift`` flows in
    all since their srflx candidates: with the default 128-port window, one packet of
    each sweep meets the other's (A's goes from the port B's aims at, to the port
    B's comes from), whoever sends first."""
    drift_a = round(drift * share)
    drift_b = drift - drift_a
    config = PunchConfig()
    profile_a = NatProfile(True, "sequential", step_a, window=config.sweep_ports)
    profile_b = NatProfile(True, "sequential", step_b, window=config.sweep_ports)
    plan_a = plan_punch(profile_a, profile_b, {(PUBLIC_B, anchor_b)}, [PUBLIC_B], config,
                        random.Random(0), controlling=True,
                        remote_anchors=[(PUBLIC_B, anchor_b)])
    plan_b = plan_punch(profile_b, profile_a, {(PUBLIC_A, anchor_a)}, [PUBLIC_A], config,
                        random.Random(0), controlling=False,
                        remote_anchors=[(PUBLIC_A, anchor_a)])
    assert plan_a.strategy == plan_b.strategy == "sequential-sweep"
    assert plan_a.packets == plan_b.packets == 128
    nat_a = _nat_counter(anchor_a, step_a, drift_a)
    nat_b = _nat_counter(anchor_b, step_b, drift_b)
    from_a = {(nat_a(send.destination), send.destination[1]) for send in plan_a.sends}
    from_b = {(send.destination[1], nat_b(send.destination)) for send in plan_b.sends}
    # A flow A -> B that B also opened from the other end: both filters let it through.
    assert from_a & from_b, (drift_a, drift_b)


def test_sweep_orders_differ_by_role_and_cover_the_window() -> None:
    assert sweep_order(6, controlling=True) == (1, 2, 3, 4, 5, 6)
    assert sweep_order(6, controlling=False) == (1, 3, 5, 2, 4, 6)
    assert sorted(sweep_order(64, controlling=False)) == list(range(1, 65))


def test_a_sweep_needs_the_peers_invitation_and_a_sequential_nat_here() -> None:
    anchor = [(PUBLIC_B, 20000)]
    invited = NatProfile(True, "sequential", 1, window=16)
    assert plan_punch(SEQUENTIAL, invited, set(anchor), [PUBLIC_B], PunchConfig(),
                      random.Random(0), remote_anchors=anchor).packets == 16
    # No window said (an older peer): no sweep, and the predictions are checked instead.
    plan = plan_punch(SEQUENTIAL, NatProfile(True, "sequential", 1), set(anchor),
                      [PUBLIC_B], PunchConfig(), random.Random(0), remote_anchors=anchor)
    assert plan.strategy != "sequential-sweep"
    # An anchor the peer did not offer is never swept from.
    assert plan_punch(SEQUENTIAL, invited, {(PUBLIC_B, 3000)}, [PUBLIC_B], PunchConfig(),
                      random.Random(0), remote_anchors=anchor).packets == 0
    # Behind a random NAT a sweep of the peer's ports would not meet anything.
    assert plan_punch(RANDOM, invited, set(anchor), [PUBLIC_B], PunchConfig(),
                      random.Random(0), remote_anchors=anchor).strategy != "sequential-sweep"


def test_the_nat_attribute_says_the_step_and_window_and_reads_them_back() -> None:
    sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    said = with_nat_attribute(sdp, SEQUENTIAL, 128)
    assert "a=x-peercam-nat:symmetric sequential 1 128\r\n" in said
    assert nat_attribute(said) == NatProfile(True, "sequential", 1, window=128)
    # Without a window to invite (or a step to say) it says what it did before.
    assert "a=x-peercam-nat:symmetric sequential\r\n" in with_nat_attribute(sdp, SEQUENTIAL)
    for bad in ("symmetric sequential 0 64", "symmetric sequential 1 0",
                "symmetric sequential 1 5000", "symmetric sequential x 64",
                "symmetric random 1 64", "symmetric sequential 99999 64"):
        assert nat_attribute(f"v=0\r\na=x-peercam-nat:{bad}\r\nm=video 9 X 96\r\n") is None


def test_the_nat_attribute_goes_at_session_level_and_reads_back() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" \
          "a=mid:0\r\n"
    for profile in (NatProfile(True, "random"), NatProfile(True, "sequential"),
                    NatProfile(False)):
        said = with_nat_attribute(sdp, profile)
        lines = said.split("\r\n")
        assert lines.index(next(x for x in lines if x.startswith("a=x-peercam-nat:"))) \
            < lines.index("m=video 9 UDP/TLS/RTP/SAVPF 96")
        assert nat_attribute(said) == NatProfile(profile.symmetric, profile.allocation)
    assert nat_attribute(sdp) is None
    # Only at session level, and only what it can say; anything else is no statement.
    assert nat_attribute(sdp + "a=x-peercam-nat:symmetric random\r\n") is None
    for bad in ("", "symmetric", "symmetric bogus", "cone extra", "symmetric random x"):
        assert nat_attribute(f"v=0\r\na=x-peercam-nat:{bad}\r\nm=video 9 X 96\r\n") is None
