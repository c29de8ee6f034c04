"""The CLI viewer's healing rules (camera.client.heal), events in, actions out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camera.client.heal import (
    BYE_THEN_STALL,
    CLOSED,
    STALLED,
    WAITING,
    Backoff,
    Close,
    GiveUp,
    Healer,
    Open,
    Promote,
    terminal_refusal,
)


def playing(now: float = 0.0) -> Healer:
    """A healer whose first session (0) plays at 30 fps up to ``now``."""
    healer = Healer(stall=1.5, stall_after_bye=0.5, retry=Backoff(0.25, 2.0, rng=lambda: 1.0))
    assert healer.start(0.0) == [Open(0, "start")]
    assert healer.frame(0, 0.1, keyframe=True) == [Promote(0)]
    t = 0.1
    while t < now:
        t += 1 / 30
        assert healer.frame(0, t, keyframe=False) == []
    return healer


def test_a_stall_opens_a_replacement_while_the_old_session_stays_open() -> None:
    healer = playing(1.0)
    assert healer.tick(2.0) == []  # under the threshold
    assert healer.tick(2.6) == [Open(1, STALLED)]
    assert healer.tick(2.7) == []  # one attempt at a time
    # The old one is not closed until the new one has a keyframe.
    assert healer.frame(1, 2.9, keyframe=False) == []
    assert healer.frame(1, 3.0, keyframe=True) == [
        Promote(1), Close(0, "replaced by a new session")]
    assert healer.current == 1 and healer.sessions_used == 2
    assert healer.last_cause == STALLED


def test_the_old_session_coming_back_first_closes_the_new_one() -> None:
    healer = playing(1.0)
    assert healer.tick(2.6) == [Open(1, STALLED)]
    assert healer.frame(0, 2.8, keyframe=False) == [Close(1, "the old session came back first")]
    assert healer.current == 0 and healer.pending is None
    assert healer.frame(1, 2.9, keyframe=True) == []  # the loser's late frame changes nothing


def test_a_bye_is_advice_it_only_shortens_the_stall_threshold() -> None:
    healer = playing(1.0)
    assert healer.bye(0, 1.0) == []
    t = 1.0
    while t < 5.0:  # video flows on after a (maybe forged) bye: nothing happens
        t += 1 / 30
        assert healer.frame(0, t, keyframe=False) == []
        assert healer.tick(t) == []
    assert healer.tick(t + 0.6) == [Open(1, BYE_THEN_STALL)]


def test_a_closed_session_is_replaced_at_once_then_with_backoff() -> None:
    healer = playing(1.0)
    assert healer.ended(0, CLOSED, 1.5) == [Close(0, CLOSED), Open(1, CLOSED)]
    assert healer.failed(1, "camera refused: unavailable", terminal=False, now=1.6) == []
    assert healer.tick(1.7) == []  # backoff: 0.25 * 1.0 (rng) after the first failure
    assert healer.tick(1.86) == [Open(2, CLOSED)]
    assert healer.failed(2, "timeout", terminal=False, now=2.0) == []
    assert healer.tick(2.4) == []
    assert healer.tick(2.51) == [Open(3, CLOSED)]
    assert healer.frame(3, 3.0, keyframe=True) == [Promote(3)]  # nothing left to close


def test_the_camera_coming_back_skips_the_wait() -> None:
    healer = playing(1.0)
    assert healer.ended(0, CLOSED, 1.5) == [Close(0, CLOSED), Open(1, CLOSED)]
    healer.retry.attempt = 5  # well into an outage: the next wait is the cap, 2 s
    assert healer.failed(1, "unavailable", terminal=False, now=1.6) == []
    assert healer.tick(2.0) == []
    assert healer.retry_now(2.0) == [Open(2, CLOSED)]
    assert healer.retry_now(2.1) == []  # one attempt at a time


def test_terminal_refusals_and_failures_before_video_give_up() -> None:
    healer = Healer()
    assert healer.start(0.0) == [Open(0, "start")]
    # Before the first frame, even a transient failure ends the run (a wrong ID must not hang).
    assert healer.failed(0, "unavailable", terminal=False, now=1.0) == [GiveUp(0, "unavailable")]
    healer = playing(1.0)
    healer.ended(0, CLOSED, 1.5)
    assert healer.failed(1, "not authorized", terminal=True, now=1.6) == [
        GiveUp(1, "not authorized")]


def test_a_run_that_waits_retries_an_offline_camera_until_its_wait_is_over() -> None:
    healer = Healer(wait=10.0, wait_retry=Backoff(1.0, 5.0, rng=lambda: 1.0))
    assert healer.start(0.0) == [Open(0, "start")]
    assert healer.failed(0, "unavailable", terminal=False, now=0.5) == []
    assert healer.tick(1.4) == []
    assert healer.tick(1.5) == [Open(1, WAITING)]  # the fallback: 1 s later
    assert healer.failed(1, "unavailable", terminal=False, now=1.6) == []
    assert healer.retry_now(1.7) == [Open(2, WAITING)]  # the rendezvous says it is back
    assert healer.failed(2, "not authorized", terminal=True, now=1.8) == [
        GiveUp(2, "not authorized")]
    healer = Healer(wait=2.0)
    healer.start(0.0)
    assert healer.failed(0, "unavailable", terminal=False, now=0.1) == []
    assert healer.tick(2.0) == [Open(1, WAITING)]  # the last try is at the end of the wait
    assert healer.failed(1, "unavailable", terminal=False, now=2.1) == [
        GiveUp(1, "unavailable")]


@pytest.mark.parametrize(("reason", "terminal"), [
    ("not authorized: this viewer was revoked", True),
    ("not authorized: this viewer is not paired with the camera", True),
    ("pairing refused: no open pairing window has that secret", True),
    ("stale: the request's timestamp is too far from the camera's clock", True),
    ("camera busy: too many viewers", False),
    ("camera went offline", False),
    ("that camera is not online", False),
    ("the camera did not answer", False),
    ("camera reconnected", False),
])
def test_which_refusals_are_for_good(reason: str, terminal: bool) -> None:
    assert terminal_refusal(reason) is terminal


@given(st.lists(st.tuples(st.sampled_from(["frame", "key", "tick", "ended", "failed", "bye"]),
                          st.integers(0, 6), st.floats(0.0, 0.5)), max_size=200))
def test_any_event_sequence_keeps_one_current_and_one_pending_at_most(
    events: list[tuple[str, int, float]]
) -> None:
    healer = Healer(retry=Backoff(0.25, 2.0, rng=lambda: 0.5))
    opened = {a.session for a in healer.start(0.0) if isinstance(a, Open)}
    closed: set[int] = set()
    now = 0.0
    for kind, session, step in events:
        now += step
        if kind in ("frame", "key"):
            actions = healer.frame(session, now, kind == "key")
        elif kind == "tick":
            actions = healer.tick(now)
        elif kind == "ended":
            actions = healer.ended(session, CLOSED, now)
        elif kind == "failed":
            actions = healer.failed(session, "x", terminal=False, now=now)
        else:
            actions = healer.bye(session, now)
        for action in actions:
            if isinstance(action, Open):
                assert action.session not in opened
                opened.add(action.session)
            elif isinstance(action, Close):
                assert action.session in opened and action.session not in closed
                closed.add(action.session)
            elif isinstance(action, GiveUp):
                assert not healer.played
                return
        live = opened - closed
        assert healer.current is None or healer.current in live
        assert healer.pending is None or healer.pending in live
        assert healer.pending is None or healer.pending != healer.current


def test_backoff_is_capped_and_fully_jittered() -> None:
    highest = Backoff(0.25, 2.0, rng=lambda: 1.0)
    assert [highest.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert Backoff(0.25, 2.0, rng=lambda: 0.0).next() == 0.0
    refused = Backoff(0.25, 10.0, rng=lambda: 1.0)
    refused.attempt = 10
    assert refused.next(cap=2.0) == 2.0
    with pytest.raises(ValueError, match="backoff base 0"):
        Backoff(0, 1.0)
