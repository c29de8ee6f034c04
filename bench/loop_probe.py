"""The probe every benchmark process of the rendezvous benchmarks runs: event-loop
stalls and garbage collections, noted in one log file.

The rendezvous server (``python -c`` through a short bootstrap in bench/scale.py),
the simulated cameras' worker processes and the benchmark's own viewers install
it. Only the standard library: imported into the server before the server's own
modules, it adds nothing to the memory the benchmark measures.

Lines, on CLOCK_MONOTONIC (shared by all processes), times in ms:

- ``I start wall cpu runq``: a loop iteration of 20 ms or more, from select()
  returning to the end of its callbacks (a collection inside them included), in
  wall time and in the loop thread's CPU time; ``runq``, of the wall time, how long
  the thread sat on a run queue, runnable but without a core (/proc schedstat
  run_delay): the machine's share, not the process's work.
- ``W at ms``: a wake-up from select() that waited 1 ms or more for a core before
  the iteration could start (a delay no iteration shows).
- ``G start generation wall cpu``: a garbage collection of 5 ms or more.
- ``K start wall cpu callbacks name=count/cpu ...`` (``server=True``): what that
  long iteration ran, its callbacks' thread CPU summed by kind (a task: its
  coroutine's name; else the callback's), the eight costliest.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

LONG_MS = 20.0
"""An iteration at least this long is noted."""


def install(path: Path, *, server: bool = False) -> None:
    """Note this process's stalls in ``path`` (appended). ``server``: also every full
    collection however short (the server's are counted), and what each long iteration
    ran (a clock read around every callback). Cheap otherwise: two clock reads and
    two small /proc reads per iteration."""
    import asyncio
    import asyncio.base_events as be
    import asyncio.events as ev

    log = path.open("a", buffering=1)
    try:
        sched_fd = os.open(f"/proc/self/task/{os.getpid()}/schedstat", os.O_RDONLY)
    except OSError:
        sched_fd = -1

    def run_delay() -> int:
        return int(os.pread(sched_fd, 100, 0).split()[1]) if sched_fd >= 0 else 0

    woke = [0.0, 0.0, 0]
    ran: dict[str, tuple[int, float]] = {}
    run_once = be.BaseEventLoop._run_once  # type: ignore[attr-defined]

    if server:
        handle_run = ev.Handle._run

        def timed_handle_run(self: Any) -> None:
            t = time.thread_time()
            handle_run(self)
            took = time.thread_time() - t
            cb = self._callback
            owner = getattr(cb, "__self__", None)
            if isinstance(owner, asyncio.Task):
                name = getattr(owner.get_coro(), "__qualname__", "task")
            else:
                name = getattr(cb, "__qualname__", type(cb).__name__)
            n, total = ran.get(name, (0, 0.0))
            ran[name] = (n + 1, total + took)

        ev.Handle._run = timed_handle_run  # type: ignore[method-assign]

    def probed_run_once(self: Any) -> None:
        selector = self._selector
        if not getattr(selector, "_peercam_probe", False):
            select = selector.select

            def timed_select(timeout: float | None = None) -> Any:
                before = run_delay()
                events = select(timeout)
                woke[0], woke[1], woke[2] = time.monotonic(), time.thread_time(), run_delay()
                if woke[2] - before >= 1_000_000:
                    log.write(f"W {woke[0]:.4f} {(woke[2] - before) / 1e6:.2f}\n")
                return events

            selector.select = timed_select
            selector._peercam_probe = True
        ran.clear()
        run_once(self)
        ms = (time.monotonic() - woke[0]) * 1000
        if ms >= LONG_MS:
            cpu = (time.thread_time() - woke[1]) * 1000
            log.write(f"I {woke[0]:.4f} {ms:.2f} {cpu:.2f} {(run_delay() - woke[2]) / 1e6:.2f}\n")
            if server:
                top = sorted(ran.items(), key=lambda kv: -kv[1][1])[:8]
                log.write(f"K {woke[0]:.4f} {ms:.2f} {cpu:.2f} "
                          f"{sum(n for n, _ in ran.values())} "
                          + " ".join(f"{k}={n}/{t * 1000:.2f}" for k, (n, t) in top) + "\n")

    be.BaseEventLoop._run_once = probed_run_once  # type: ignore[attr-defined]
    started = [0.0, 0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0], started[1] = time.monotonic(), time.thread_time()
            return
        ms = (time.monotonic() - started[0]) * 1000
        if ms >= 5 or (server and info["generation"] == 2):
            cpu = (time.thread_time() - started[1]) * 1000
            log.write(f"G {started[0]:.4f} {info['generation']} {ms:.2f} {cpu:.2f}\n")

    gc.callbacks.append(collected)


class Probed(NamedTuple):
    """What a probe log says about a window."""

    iterations: list[tuple[float, float, float, float]]
    """(start, wall ms, CPU ms, ms waiting for a core) of the long loop iterations."""
    collections: list[tuple[float, int, float, float]]
    """(start, generation, wall ms, CPU ms)."""
    wakes: list[tuple[float, float]]
    """(when the loop got its core, ms it waited for it)."""
    kinds: list[dict[str, Any]]
    """The long iterations' callbacks by kind (``server=True`` only): at, wall_ms,
    cpu_ms, callbacks, and kinds (what, count, cpu_ms), the costliest first."""


def read(path: Path | None, since: float, until: float) -> Probed:
    """The lines of a probe log started in [since, until) (monotonic); nothing if
    there is no log."""
    out = Probed([], [], [], [])
    if path is None:
        return out
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        kind, at, *rest = line.split()
        if not since <= float(at) < until:
            continue
        if kind == "I":
            out.iterations.append((float(at), float(rest[0]), float(rest[1]), float(rest[2])))
        elif kind == "G":
            out.collections.append((float(at), int(rest[0]), float(rest[1]), float(rest[2])))
        elif kind == "W":
            out.wakes.append((float(at), float(rest[0])))
        elif kind == "K":
            ms, cpu, count, *parts = rest
            kinds = []
            for part in parts:
                name, _, numbers = part.rpartition("=")
                n, _, took = numbers.partition("/")
                kinds.append({"what": name, "count": int(n), "cpu_ms": float(took)})
            out.kinds.append({"at": float(at), "wall_ms": float(ms), "cpu_ms": float(cpu),
                              "callbacks": int(count), "kinds": kinds})
    return out
