"""Prometheus helpers shared by peercam's servers (the rendezvous, later the gateway).

Each server owns one :class:`prometheus_client.CollectorRegistry`: the tests
start many servers in one process, so per-server state never goes into the
library's global default registry. What a server adds here:

- :class:`RuntimeMetrics`: event-loop lag (a task that sleeps a fixed interval
  and observes how late it woke), garbage-collector pauses by generation (from
  ``gc.callbacks``), the process collector (CPU, memory, descriptors) and a
  build-info gauge;
- :func:`metrics_handler`: the ``/metrics`` aiohttp handler for a registry;
- :func:`serve_metrics`: the same handler alone on its own address, for a
  server that keeps ``/metrics`` off its public port;
- :func:`counter`, :func:`gauge`, :class:`Families`: metric families built at
  scrape time from a server's own plain counters (no second copy of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

#: The classic text exposition format, which ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LAG_INTERVAL = 0.5
"""Seconds the lag probe sleeps between observations."""
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def version() -> str:
    """peercam's installed version ("unknown" when run from a tree not installed)."""
    try:
        return metadata.version("peercam")
    except metadata.PackageNotFoundError:
        return "unknown"


class RuntimeMetrics:
    """Process-level metrics for one server, in that server's registry.

    :meth:`start` (on the server's event loop) starts the lag probe and hooks
    ``gc.callbacks``; :meth:`stop` undoes both. Safe to stop twice.
    """

    def __init__(self, registry: CollectorRegistry, component: str,
                 lag_interval: float = LAG_INTERVAL) -> None:
        self.registry = registry
        self.lag_interval = lag_interval
        self.loop_lag = Histogram(
            "peercam_event_loop_lag_seconds",
            "How late the event loop woke a task that slept a fixed interval "
            "(time the loop was busy with other work)",
            buckets=LAG_BUCKETS, registry=registry)
        self.gc_pause = Histogram(
            "peercam_gc_pause_seconds",
            "Garbage-collector pauses (the whole process stops), by generation",
            ["generation"], buckets=GC_BUCKETS, registry=registry)
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)  # every series from the first scrape
        build = Gauge("peercam_build_info", "Always 1: which peercam and component this is",
                      ["version", "component"], registry=registry)
        build.labels(version(), component).set(1)
        ProcessCollector(registry=registry)
        self._task: asyncio.Task[None] | None = None
        self._gc_started: float | None = None
        self._hooked = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._probe(), name="metrics-loop-lag")
        if not self._hooked:
            gc.callbacks.append(self._gc_callback)
            self._hooked = True

    async def stop(self) -> None:
        if self._hooked:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._gc_callback)
            self._hooked = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.lag_interval)
            self.loop_lag.observe(max(0.0, loop.time() - before - self.lag_interval))

    def _gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the interpreter around each collection: must never raise.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif phase == "stop" and self._gc_started is not None:
            pause = time.perf_counter() - self._gc_started
            self._gc_started = None
            generation = info.get("generation", 2)
            self.gc_pause.labels(str(generation if generation in (0, 1, 2) else 2)).observe(
                pause)


def _family(family: CounterMetricFamily | GaugeMetricFamily, value: float | None,
            values: Mapping[Any, float] | None) -> Metric:
    if value is not None:
        family.add_metric([], value)
    for key, number in (values or {}).items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], number)
    return family


def counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
            values: Mapping[Any, float] | None = None) -> Metric:
    """A counter family for a custom collector: ``value`` unlabelled, or ``values`` by
    label value (a string for one label, a tuple for several). ``_total`` is added."""
    return _family(CounterMetricFamily(name, doc, labels=list(labels)), value, values)


def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
          values: Mapping[Any, float] | None = None) -> Metric:
    """A gauge family for a custom collector (as :func:`counter`). With neither
    ``value`` nor ``values`` it has no sample: unknown for now."""
    return _family(GaugeMetricFamily(name, doc, labels=list(labels)), value, values)


class Families(Collector):
    """A collector that yields what ``collect`` returns, on each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return iter(list(self._collect()))


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text exposition format."""
    return generate_latest(registry)


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` (no request input is read)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry),
                            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    return handler


async def serve_metrics(registry: CollectorRegistry, host: str,
                        port: int) -> tuple[web.AppRunner, int]:
    """Serve only ``/metrics`` on ``host:port``; returns the runner and the bound port."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server: Any = site._server
    sockets = server.sockets if server is not None else []
    bound = sockets[0].getsockname()[1] if sockets else port
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return runner, int(bound)
