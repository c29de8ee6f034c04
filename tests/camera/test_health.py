"""The watchdog decision and recovery ladder, with synthetic time (sans I/O)."""

from __future__ import annotations

from camera.health import Action, HealthMonitor, LinkAction, LinkFault, LinkLadder


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


# -- the rendezvous link's ladder ------------------------------------------------------


def link_tick(ladder: LinkLadder, now: float, *, running: bool = True, registered: bool = False,
              failures: int = 0, activity: float | None = None) -> list[LinkAction]:
    return ladder.tick(now, running, registered, failures, now if activity is None else activity)


def test_a_server_that_is_down_is_not_a_fault_of_the_camera() -> None:
    ladder = LinkLadder()
    for t in range(0, 3600, 5):  # an hour of refused attempts, each a sign of life
        assert link_tick(ladder, float(t), failures=0) == []
    assert ladder.recoveries == 0 and ladder.fault is None


def test_an_ended_link_is_reconnected_at_once_then_rebuilt_then_left_to_systemd() -> None:
    ladder = LinkLadder(settle=10.0)
    assert link_tick(ladder, 0.0, running=False) == [LinkAction.RECONNECT]
    assert ladder.fault is LinkFault.ENDED
    assert link_tick(ladder, 5.0, running=False) == []  # the reconnect gets its time
    assert link_tick(ladder, 10.0, running=False) == [LinkAction.REBUILD]
    assert link_tick(ladder, 20.0, running=False) == [LinkAction.STOP_WATCHDOG]
    assert ladder.gave_up and link_tick(ladder, 100.0, running=False) == []
    assert ladder.recoveries == 3


def test_a_registration_puts_the_ladder_back_at_the_bottom() -> None:
    ladder = LinkLadder(settle=1.0)
    assert link_tick(ladder, 0.0, running=False) == [LinkAction.RECONNECT]
    assert link_tick(ladder, 0.5, registered=True) == []
    assert ladder.step == 0 and ladder.fault is None
    assert link_tick(ladder, 50.0, running=False) == [LinkAction.RECONNECT]


def test_internal_failures_and_a_hung_link_are_faults() -> None:
    ladder = LinkLadder(failures=3, hang=90.0)
    assert link_tick(ladder, 0.0, failures=2) == []
    assert link_tick(ladder, 1.0, failures=3) == [LinkAction.RECONNECT]
    assert ladder.fault is LinkFault.FAILING
    hung = LinkLadder(hang=90.0)
    assert link_tick(hung, 89.0, activity=0.0) == []
    assert link_tick(hung, 91.0, activity=0.0) == [LinkAction.RECONNECT]
    assert hung.fault is LinkFault.HUNG


def test_a_fault_cured_long_ago_does_not_count_towards_the_next() -> None:
    ladder = LinkLadder(settle=1.0)
    assert link_tick(ladder, 0.0, running=False) == [LinkAction.RECONNECT]
    assert link_tick(ladder, 3.0) == []  # running, retrying a server that is down
    assert link_tick(ladder, 7.0) == []  # > 6 settles without a fault
    assert link_tick(ladder, 8.0, running=False) == [LinkAction.RECONNECT]
