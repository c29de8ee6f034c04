"""The stall watch names where a blocked loop was, from a real second thread."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from camera.stallwatch import StallWatch


def _stuck_in_a_slow_call(seconds: float) -> None:
    time.sleep(seconds)


def test_a_stall_is_described_by_the_blocked_threads_stack() -> None:
    watch = StallWatch(0.2)
    watch.start()
    try:
        assert watch.beat() is None
        _stuck_in_a_slow_call(0.8)
        where = watch.beat()
        assert where is not None and "_stuck_in_a_slow_call" in where, where
        assert "test_a_stall_is_described" in where, where  # its caller, after it
        # Seen once: the next beat, right after, reports nothing.
        assert watch.beat() is None
    finally:
        watch.stop()


def test_beats_in_time_report_no_stall() -> None:
    watch = StallWatch(0.5)
    watch.start()
    try:
        for _ in range(10):
            time.sleep(0.02)
            assert watch.beat() is None
    finally:
        watch.stop()


async def test_the_supervisor_logs_where_its_loop_was_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from camera import supervisor

    class Nothing:
        async def tick(self, now: float) -> None:
            return None

    runner = Nothing()
    fake = supervisor.Supervisor.__new__(supervisor.Supervisor)
    fake.health = type("H", (), {"started_at": 0.0})()
    fake.tick = runner.tick  # type: ignore[method-assign]
    task = asyncio.create_task(fake.run())
    with caplog.at_level(logging.WARNING, logger="camera.supervisor"):
        await asyncio.sleep(0.6)
        _stuck_in_a_slow_call(supervisor.STALL + 1.0)
        await asyncio.sleep(0.6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    blocked = [r.getMessage() for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert len(blocked) == 1 and "_stuck_in_a_slow_call" in blocked[0], blocked
