"""The watchdog decision and recovery ladder, with synthetic time (sans I/O)."""

from __future__ import annotations

from camera.health import Action, HealthMonitor


def run(monitor: HealthMonitor, times: list[float], frames: list[float | None],
        registered: bool = True) -> list[list[Action]]:
    return [monitor.tick(t, f, registered) for t, f in zip(times, frames, strict=True)]


def test_ready_once_when_frames_and_registration_are_both_up() -> None:
    m = HealthMonitor(started_at=0.0, frame_stall=5.0)
    assert m.tick(0.5, None, registered=True) == []  # no frame yet: neither
    assert m.tick(1.0, 0.9, registered=False) == [Action.WATCHDOG]  # frames, no rendezvous
    assert m.tick(1.5, 1.4, registered=True) == [Action.READY, Action.WATCHDOG]
    assert m.tick(2.0, 1.9, registered=True) == [Action.WATCHDOG]  # READY only once
    assert m.tick(2.5, 2.4, registered=False) == [Action.WATCHDOG]  # lost rendezvous: still OK


def test_no_watchdog_once_frames_stop() -> None:
    m = HealthMonitor(started_at=0.0, frame_stall=2.0)
    assert m.tick(1.0, 1.0, True) == [Action.READY, Action.WATCHDOG]
    assert m.tick(2.9, 1.0, True) == [Action.WATCHDOG]  # 1.9 s old: still within stall
    assert m.tick(3.1, 1.0, True) == [Action.RESTART_SOURCE]  # 2.1 s: stalled
    # Just restarted: not "stalled" (the new source gets its time) but still faulty.
    assert not m.frames_flowing(3.1, 1.0) and not m.stalled(3.1, 1.0)
    assert m.faulty(3.1, 1.0) and not m.faulty(3.2, 3.15)


def test_ladder_restarts_then_gives_up() -> None:
    m = HealthMonitor(started_at=0.0, frame_stall=1.0, max_restarts=2)
    actions = run(m, [0.5, 1.1, 1.5, 2.2, 2.9, 3.3, 4.0], [None] * 7)
    # Stall counted from start; after a restart the source gets frame_stall again.
    assert actions == [[], [Action.RESTART_SOURCE], [], [Action.RESTART_SOURCE], [],
                       [Action.GIVE_UP], []]
    assert m.gave_up and m.total_restarts == 2


def test_recovered_source_stops_the_ladder_and_long_health_resets_it() -> None:
    m = HealthMonitor(started_at=0.0, frame_stall=1.0, max_restarts=1, healthy_reset=10.0)
    assert m.tick(1.5, None, True) == [Action.RESTART_SOURCE]
    assert m.tick(2.0, 1.9, True) == [Action.READY, Action.WATCHDOG]  # the restart worked
    assert m.restarts == 1
    m.tick(11.0, 10.9, True)
    assert m.tick(12.5, 12.4, True) == [Action.WATCHDOG]
    assert m.restarts == 0  # ten healthy seconds: the ladder is whole again
    assert m.tick(14.0, 12.4, True) == [Action.RESTART_SOURCE]


def test_without_restarts_a_stall_gives_up_at_once() -> None:
    m = HealthMonitor(started_at=0.0, frame_stall=1.0, max_restarts=0)
    assert m.tick(1.0, 0.9, True) == [Action.READY, Action.WATCHDOG]
    assert m.tick(2.5, 0.9, True) == [Action.GIVE_UP]
    assert m.tick(3.0, 2.9, True) == []  # gave up: nothing more, not even a watchdog
