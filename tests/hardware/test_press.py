"""PressClassifier with synthetic time: edges and ticks in, press events out.

No clock, no pins: every timestamp is chosen by the test, so the 10 s default
long press and 50 ms debounce are exercised exactly and instantly.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import HardwareError
from hardware.press import BadTiming, PressClassifier, PressEvent, PressKind

SHORT, ARMED, LONG, CANCEL = (
    PressKind.SHORT,
    PressKind.LONG_ARMED,
    PressKind.LONG,
    PressKind.CANCEL,
)


def run(
    classifier: PressClassifier, edges: list[tuple[float, bool]], until: float
) -> list[PressEvent]:
    """Feed ``edges``, ticking at every deadline as an adapter's timer would, up to ``until``."""
    events: list[PressEvent] = []
    assert [at for at, _ in edges] == sorted(at for at, _ in edges)
    pending = list(edges)
    while True:
        deadline = classifier.next_deadline()
        next_edge = pending[0][0] if pending else None
        if next_edge is not None and (deadline is None or next_edge <= deadline):
            at, pressed = pending.pop(0)
            events += classifier.edge(at, pressed)
        elif deadline is not None and deadline <= until:
            events += classifier.tick(deadline)
        else:
            events += classifier.tick(until)
            return events


def bouncy(at: float, pressed: bool, gaps: list[float]) -> list[tuple[float, bool]]:
    """A contact settling at ``pressed``: toggles ``gaps`` apart, starting with the new level."""
    edges, level, t = [(at, pressed)], pressed, at
    for gap in gaps:
        t += gap
        level = not level
        edges.append((t, level))
    assert level == pressed, "an even number of gaps ends at the new level"
    return edges


def kinds(events: list[PressEvent]) -> list[PressKind]:
    return [e.kind for e in events]


def test_clean_short_press() -> None:
    c = PressClassifier()
    events = run(c, [(1.0, True), (1.4, False)], until=5.0)
    assert events == [PressEvent(SHORT, pressed_at=1.0, held=pytest.approx(0.4))]
    assert not c.pressed and c.next_deadline() is None


def test_event_is_decided_when_the_release_is_confirmed() -> None:
    c = PressClassifier(bounce=0.05)
    assert c.edge(1.0, True) == []
    assert c.next_deadline() == pytest.approx(1.05)
    assert c.tick(1.049) == [] and not c.pressed
    assert c.tick(1.05) == [] and c.pressed
    assert c.edge(1.5, False) == []
    assert c.pressed  # not yet: could be a bounce
    assert c.next_deadline() == pytest.approx(1.55)
    assert kinds(c.tick(1.55)) == [SHORT]
    assert not c.pressed


def test_heavy_bounce_at_press_and_release_is_one_short_press() -> None:
    c = PressClassifier(bounce=0.05)
    press = bouncy(2.0, True, [0.001, 0.003, 0.002, 0.010, 0.004, 0.030, 0.020, 0.002])
    release = bouncy(2.8, False, [0.002, 0.002, 0.040, 0.001, 0.015, 0.030])
    events = run(c, press + release, until=10.0)
    assert kinds(events) == [SHORT]
    # Timed from the edge that began the stable press to the one that began the release.
    assert events[0].pressed_at == pytest.approx(press[-1][0])
    assert events[0].held == pytest.approx(release[-1][0] - press[-1][0])


def test_without_debounce_the_same_edges_would_be_many_presses() -> None:
    # Guard for the test above: its edges really are several presses when
    # the bounce window is (almost) zero.
    c = PressClassifier(bounce=0.0)
    press = bouncy(2.0, True, [0.001, 0.003, 0.002, 0.010])
    release = bouncy(2.8, False, [0.002, 0.002])
    assert len(run(c, press + release, until=10.0)) >= 3


def test_long_press_with_the_default_ten_seconds() -> None:
    c = PressClassifier()
    assert (c.bounce, c.short_max, c.long_press) == (0.05, 2.0, 10.0)
    assert c.edge(0.0, True) == []
    assert c.tick(5.0) == [] and c.next_deadline() == pytest.approx(10.0)
    assert c.tick(9.999) == []
    armed = c.tick(10.0)
    assert armed == [PressEvent(ARMED, pressed_at=0.0, held=pytest.approx(10.0))]
    assert c.armed and c.next_deadline() is None
    assert c.tick(30.0) == []  # armed once; holding on commits nothing
    assert c.edge(31.0, False) == []
    assert c.tick(31.05) == [PressEvent(LONG, pressed_at=0.0, held=pytest.approx(31.0))]
    assert not c.armed and not c.pressed


def test_long_press_with_bounce_is_armed_then_long_and_never_short() -> None:
    c = PressClassifier()
    press = bouncy(1.0, True, [0.002, 0.004, 0.001, 0.020])
    release = bouncy(13.0, False, [0.003, 0.001, 0.010, 0.002])
    events = run(c, press + release, until=20.0)
    assert kinds(events) == [ARMED, LONG]
    assert events[0].pressed_at == events[1].pressed_at == pytest.approx(press[-1][0])


def test_release_without_a_tick_at_the_mark_still_arms_first() -> None:
    c = PressClassifier()
    c.edge(0.0, True)
    # No tick in between: the release edge shows it was held past the mark.
    assert kinds(c.edge(12.0, False)) == [ARMED]
    assert kinds(c.tick(12.05)) == [LONG]


def test_once_armed_the_release_commits_even_if_its_edge_was_queued_late() -> None:
    # The adapter's timer tick ran before an older release edge reached the loop.
    c = PressClassifier()
    c.edge(0.0, True)
    assert kinds(c.tick(10.001)) == [ARMED]
    assert c.edge(9.999, False) == []  # older than the tick: taken as 10.001
    assert kinds(c.tick(10.06)) == [LONG]


@pytest.mark.parametrize("held", [2.0, 5.0, 9.99])
def test_release_between_short_and_long_is_cancel(held: float) -> None:
    c = PressClassifier()
    events = run(c, [(0.0, True), (held, False)], until=held + 1)
    assert events == [PressEvent(CANCEL, pressed_at=0.0, held=pytest.approx(held))]


@pytest.mark.parametrize(
    ("held", "expected"),
    [(1.999, [SHORT]), (2.0, [CANCEL]), (9.999, [CANCEL]), (10.0, [ARMED, LONG])],
)
def test_boundaries(held: float, expected: list[PressKind]) -> None:
    c = PressClassifier()
    assert kinds(run(c, [(0.0, True), (held, False)], until=held + 1)) == expected


@pytest.mark.parametrize("pulse", [0.0, 0.01, 0.049])
def test_a_pulse_shorter_than_bounce_is_noise(pulse: float) -> None:
    c = PressClassifier(bounce=0.05)
    assert run(c, [(1.0, True), (1.0 + pulse, False)], until=20.0) == []
    assert not c.pressed
    # ...and leaves the classifier ready for a real press.
    assert kinds(run(c, [(21.0, True), (21.5, False)], until=25.0)) == [SHORT]


def test_a_dropout_shorter_than_bounce_does_not_split_a_hold() -> None:
    c = PressClassifier()
    edges = [(0.0, True), (6.0, False), (6.02, True), (9.0, False), (9.03, True), (12.0, False)]
    events = run(c, edges, until=15.0)
    assert kinds(events) == [ARMED, LONG]
    assert events[-1].held == pytest.approx(12.0)


def test_edges_alone_confirm_earlier_edges() -> None:
    # No ticks at all: each edge first settles what the previous one started.
    c = PressClassifier()
    assert c.edge(0.0, True) == []
    assert c.edge(1.0, False) == []
    assert kinds(c.edge(3.0, True)) == [SHORT]
    assert c.edge(3.01, False) == []  # noise
    assert c.edge(5.0, True) == []
    assert not c.pressed and c.next_deadline() == pytest.approx(5.05)


def test_repeated_levels_are_ignored() -> None:
    c = PressClassifier()
    c.edge(0.0, True)
    c.edge(0.03, True)  # not a new edge: must not restart the debounce
    assert c.next_deadline() == pytest.approx(0.05)
    c.edge(0.5, False)
    c.edge(0.52, False)
    assert c.next_deadline() == pytest.approx(0.55)
    assert kinds(c.tick(0.55)) == [SHORT]


def test_a_press_held_at_start_is_not_classified() -> None:
    c = PressClassifier(start_pressed=True)
    assert c.pressed and c.next_deadline() is None
    assert c.tick(100.0) == []  # no arming either: its start is unknown
    assert run(c, [(150.0, False)], until=160.0) == []
    assert not c.pressed
    assert kinds(run(c, [(200.0, True), (200.3, False)], until=210.0)) == [SHORT]


def test_time_going_backwards_is_taken_as_the_latest_time() -> None:
    c = PressClassifier()
    c.edge(5.0, True)
    c.tick(6.0)
    c.edge(4.0, False)  # recorded at 6.0, so held 1.0 s
    events = c.tick(7.0)
    assert events == [PressEvent(SHORT, pressed_at=5.0, held=pytest.approx(1.0))]


@pytest.mark.parametrize(
    ("bounce", "short_max", "long_press"),
    [(-0.01, 2.0, 10.0), (2.0, 2.0, 10.0), (0.05, 11.0, 10.0), (0.05, 0.0, 10.0)],
)
def test_bad_timings_are_refused(bounce: float, short_max: float, long_press: float) -> None:
    with pytest.raises(BadTiming, match=f"bounce={bounce!r}, short_max={short_max!r}"):
        PressClassifier(bounce=bounce, short_max=short_max, long_press=long_press)
    assert issubclass(BadTiming, HardwareError) and issubclass(BadTiming, ValueError)


# Any bounce burst (gaps < bounce) around any press classifies like the clean press.
gaps = st.lists(st.floats(min_value=0.0001, max_value=0.0499), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    held=st.floats(min_value=0.06, max_value=15.0),
    press_gaps=gaps,
    release_gaps=gaps,
)
def test_bounce_never_changes_the_classification(
    held: float, press_gaps: list[float], release_gaps: list[float]
) -> None:
    press_gaps = press_gaps[: len(press_gaps) // 2 * 2]  # even: ends pressed
    release_gaps = release_gaps[: len(release_gaps) // 2 * 2]
    press = bouncy(1.0, True, press_gaps)
    settled = press[-1][0]
    release = bouncy(settled + held, False, release_gaps)
    noisy = run(PressClassifier(), press + release, until=settled + held + 2)
    clean = run(PressClassifier(), [(settled, True), (release[-1][0], False)], until=30.0)
    assert kinds(noisy) == kinds(clean)
    assert len(noisy) in (1, 2)
    assert noisy[-1].held == pytest.approx(clean[-1].held)
