"""Rendezvous scale: idle cameras one process holds, and the signaling round trip under load.

The rendezvous runs as shipped (``python -m camera.cli rendezvous``, started
through a ``gc.callbacks`` probe that notes how long its garbage collections
take) in its own process, so its memory (VmRSS) and CPU (utime + stime) are its
own. Simulated
cameras (``bench/scale_cameras.py``, a few worker processes) do the real
registration handshake with real P-256 keys and stay idle on the agent's 20 s
heartbeat. At each level (cumulative: 1k, then 5k, then 10k) the rendezvous'
RSS above its empty baseline is divided by the cameras it holds, and its CPU is
sampled for one heartbeat period. Then a pool of viewer WebSockets starts
sessions open-loop (Poisson arrivals) at increasing rates: each sends a signed
offer to a random camera, the camera answers at once, the viewer times offer to
answer and says ``bye``. Rates step up until the round trip degrades (p99 past
``--degrade-factor`` times the best p99 so far, errors, or the generator falling
behind), always through 200/s. The machine's other load is recorded with each
figure: a busy shared machine shows up there, not as a server limit.

The rendezvous admits 40 new connections per source IP in a burst, then 5/s,
and at most 16 connections per IP that have not finished their WebSocket
upgrade; cameras and viewers are spread over loopback source addresses
(127.10.x.y, 127.20.x.y), ``--per-address`` each, as real cameras come from
many addresses. Client-side CPU is recorded too: on a
small machine the load generator competes with the server for cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import random
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench import loop_probe
from bench.common import ROOT, cpu_seconds, percentile, pyplot, rss_kib, summary
from bench.scale_cameras import VIEWER_NET, fake_sdp, raise_nofile, source_address

NAME = "scale"
HELP = "rendezvous: idle cameras held, signaling round trip under load"
SMOKE = ["--levels", "50", "--rates", "10,20", "--step-seconds", "1", "--idle-seconds", "1",
         "--settle", "0.5", "--viewers", "4", "--workers", "1"]
NEEDS: list[str] = []

TARGET_KIB = 15.0
TARGET_CAMERAS = 100_000
TARGET_PAUSE_MS = 50.0
TARGET_P99_MS = 20.0
TARGET_RATE = 200.0
DRAIN_SECONDS = 5.0
"""How long after a step's last offer its answers may still arrive."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default="10000,50000,100000",
                   help="registered cameras to measure at (cumulative)")
    p.add_argument("--rates", default="25,50,100,200,400,800,1600",
                   help="session starts per second, stepped up until it degrades")
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each rate step")
    p.add_argument("--idle-seconds", type=float, default=20.0,
                   help="idle CPU window (20 s: one heartbeat period of every connection)")
    p.add_argument("--settle", type=float, default=3.0, help="pause after each ramp")
    p.add_argument("--workers", type=int, default=2, help="camera worker processes")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight, total")
    p.add_argument("--per-address", type=int, default=16,
                   help="connections per loopback source address (the server's per-IP burst)")
    p.add_argument("--viewers", type=int, default=64,
                   help="viewer connections at least (more if the top rate needs them)")
    p.add_argument("--degrade-factor", type=float, default=10.0,
                   help="degraded: p99 past this times the best p99 of a lower rate")
    p.add_argument("--log-level", default="INFO",
                   help="the rendezvous' log level (INFO is what ships)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compare-tick-freeze", action=argparse.BooleanOptionalAction,
                   default=False,
                   help="then the top level again on a server that freezes only at its "
                        "once-a-second tick (no freeze as each batch of new connections is "
                        "in): before and after, one run")
    p.add_argument("--aligned-heartbeats", action="store_true",
                   help="the simulated cameras' heartbeats on aiohttp's whole-second timers "
                        "(all of a worker's cameras ping in one loop iteration), as before")
    p.add_argument("--compare-no-freeze", action=argparse.BooleanOptionalAction, default=True,
                   help="then the top level again on a server run with --no-gc-freeze")
    p.add_argument("--compare-before", action=argparse.BooleanOptionalAction, default=True,
                   help="then the top level again on a server that unwinds every handler "
                        "at shutdown (the exit without unwinding patched out): before and "
                        "after, one run")


# -- processes -----------------------------------------------------------------


# Runs ``python -m camera.cli`` unchanged, with the benchmarks' loop probe
# (bench/loop_probe.py, with what each long iteration ran): at 10k connections a
# full collection walks ~750k objects and the event loop stops.
_SERVER = """
import os, runpy, sys
from pathlib import Path
from bench import loop_probe
loop_probe.install(Path(sys.argv.pop(1)), server=True)
if os.environ.get("PEERCAM_BENCH_BEFORE"):
    # The comparison server: the shutdown as it was before the exit without
    # unwinding (2026-12-07 morning): every handler unwinds, then the interpreter
    # exits; the rest as shipped.
    import services.rendezvous as rdv
    async def stop_unwinding(self, runner):
        await runner.cleanup()
    rdv.Rendezvous.stop_process = stop_unwinding
if os.environ.get("PEERCAM_BENCH_TICK_FREEZE"):
    # The comparison server: the collector frozen only at the once-a-second tick,
    # as before a batch of new connections was frozen as soon as it was in.
    import services.rendezvous as rdv
    rdv.Rendezvous._freeze_batch = lambda self: None
sys.argv[0] = "camera.cli"
runpy.run_module("camera.cli", run_name="__main__", alter_sys=True)
"""


class RendezvousProcess:
    """``python -m camera.cli rendezvous --listen 127.0.0.1:0``, as shipped (plus the loop
    probe)."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path,
                 probe_log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.probe_log = probe_log
        """Its event-loop stalls and collections (``bench.loop_probe``)."""
        self.sigterm_at: float | None = None
        """Wall-clock time the SIGTERM was sent (the server's log lines are in wall time)."""

    def loop_pauses(self, since: float, until: float) -> list[tuple[float, float]]:
        """(wall ms, CPU ms) of the server's event-loop iterations of 20 ms or more
        started in [since, until)."""
        return [(ms, cpu) for _at, ms, cpu, _waited in self.loop_iterations(since, until)]

    def loop_iterations(self, since: float, until: float
                        ) -> list[tuple[float, float, float, float]]:
        """(start, wall ms, CPU ms, ms waiting for a core) of the server's event-loop
        iterations of 20 ms or more started in [since, until) (monotonic)."""
        return loop_probe.read(self.probe_log, since, until).iterations

    def longest_iteration(self, since: float, until: float) -> dict[str, Any] | None:
        """The longest loop iteration started in [since, until) (monotonic) and what it
        ran: callbacks in all, and per kind (a task's coroutine, else the callback)
        how many and their thread CPU ms, the costliest first."""
        return max(loop_probe.read(self.probe_log, since, until).kinds,
                   key=lambda it: it["wall_ms"], default=None)

    def longest_pause(self, since: float, until: float) -> dict[str, float]:
        """The longest loop iteration in a window, in wall time and in CPU time, and
        how much of the longest the server waited for a core."""
        pauses = self.loop_iterations(since, until)
        longest = max(pauses, key=lambda p: p[1], default=(0.0, 0.0, 0.0, 0.0))
        return {"wall_ms": round(longest[1], 1),
                "cpu_ms": round(max((p[2] for p in pauses), default=0.0), 1),
                "runq_ms": round(longest[3], 1)}

    def gc_pauses(self, since: float, until: float) -> list[tuple[int, float, float]]:
        """(generation, wall ms, CPU ms) of the server's collections started in
        [since, until) (monotonic)."""
        return [(gen, ms, cpu) for _at, gen, ms, cpu
                in loop_probe.read(self.probe_log, since, until).collections]

    @classmethod
    async def start(cls, state: Path, log_level: str, server_args: list[str] | None = None,
                    env: dict[str, str] | None = None) -> RendezvousProcess:
        log = state / "rendezvous.log"
        probe_log = state / "rendezvous-loop.log"
        probe_log.write_text("")
        with log.open("w") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _SERVER, str(probe_log), "rendezvous",
                "--listen", "127.0.0.1:0", *(server_args or []),
                stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT,
                env={**os.environ, "PEERCAM_LOG_LEVEL": log_level, **(env or {})})
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        except TimeoutError:
            line = ""
        if not line.startswith("LISTENING "):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SystemExit(f"bench: the rendezvous did not start (printed {line!r}); "
                             f"its log ends:\n{tail(log)}")
        return cls(proc, f"ws://{line.split()[1].strip()}", log, probe_log)

    def alive(self) -> None:
        if self.proc.returncode is not None:
            raise SystemExit(f"bench: the rendezvous exited ({self.proc.returncode}); "
                             f"its log ends:\n{tail(self.log)}")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    async def stop(self, timeout: float = 30.0) -> float | None:
        """SIGTERM, as systemd stops it; seconds to exit (None: killed after ``timeout``)."""
        if self.proc.returncode is not None:
            return 0.0
        started = time.monotonic()
        self.sigterm_at = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None
        return time.monotonic() - started


class WorkerProcess:
    """One ``python -m bench.scale_cameras`` process, one JSON command/reply at a time."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.loop_log: Path | None = None
        """Its event-loop stalls (``bench.loop_probe``)."""

    @classmethod
    async def start(cls, url: str, index: int, workers: int, per_address: int,
                    concurrency: int, state: Path,
                    extra: list[str] | None = None) -> WorkerProcess:
        log = state / f"cameras-{index}.log"
        loop_log = state / f"cameras-{index}-loop.log"
        loop_log.write_text("")
        with log.open("w") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.scale_cameras", "--url", url, "--index", str(index),
                "--workers", str(workers), "--per-address", str(per_address),
                "--concurrency", str(concurrency), "--state-dir", str(state / "cameras"),
                "--loop-log", str(loop_log),
                *(extra or []), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, cwd=ROOT, limit=1 << 26)
        worker = cls(proc, log)
        worker.loop_log = loop_log
        assert proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), 60)
        except TimeoutError:
            ready = b""
        if b"ready" not in ready:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SystemExit(f"bench: a camera worker did not start; its log ends:\n{tail(log)}")
        return worker

    async def command(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await self.proc.wait()
            raise SystemExit(f"bench: a camera worker exited ({self.proc.returncode}); "
                             f"its log ends:\n{tail(self.log)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc.returncode is None else 0.0

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid) if self.proc.returncode is None else 0

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError, TimeoutError, SystemExit):
                await self.command({"cmd": "quit"}, 60)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- viewers -------------------------------------------------------------------


class ViewerPool:
    """Viewer WebSockets that start sessions on demand and time offer → answer."""

    def __init__(self, url: str, count: int, per_address: int) -> None:
        self.url = url.rstrip("/") + "/ws/viewer"
        self.count = count
        self.per_address = per_address
        self._http: dict[str, Any] = {}
        self._links: list[tuple[Any, Any, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.pending: dict[str, tuple[float, str, str, list[float]]] = {}
        """session_id -> (perf_counter at send, device_id, offer sdp, where its RTT goes)."""
        self.errors: collections.Counter[str] = collections.Counter()
        self.verify_left = 0
        self.verified = 0
        self.timed: list[tuple[float, float]] = []
        """(perf_counter at send, round trip ms) of the answers in the current step;
        perf_counter is CLOCK_MONOTONIC, the clock of the server's probes."""

    async def open(self) -> None:
        import aiohttp
        from cryptography.hazmat.primitives.asymmetric import ec

        from services.signaling import Role, parse
        from services.signatures import encode_public_key

        for i in range(self.count):
            address = source_address(VIEWER_NET, i // self.per_address)
            http = self._http.get(address)
            if http is None:
                connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
                http = self._http[address] = aiohttp.ClientSession(connector=connector)
            try:
                ws = await http.ws_connect(self.url, heartbeat=20.0)
                hello = await ws.receive(timeout=30)
                if parse(hello.data, Role.SERVER).type != "hello":
                    raise ValueError(f"{hello.data!r} is not a hello")
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
                raise SystemExit(f"bench: viewer {i} could not connect to the rendezvous "
                                 f"({exc!r}); nothing was measured") from None
            key = ec.generate_private_key(ec.SECP256R1())
            self._links.append((ws, key, encode_public_key(key.public_key())))
            self._tasks.append(asyncio.create_task(self._read(ws), name=f"viewer-{i}"))

    async def _read(self, ws: Any) -> None:
        import aiohttp

        try:
            await self._receive(ws)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self.errors[f"viewer: {type(exc).__name__}: {str(exc)[:60]}"] += 1
        if self._links:
            self.errors[f"a viewer connection closed ({ws.close_code})"] += 1

    async def _receive(self, ws: Any) -> None:
        import aiohttp

        from services.signaling import ProtocolError, Role, encode, parse

        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter()
            try:
                message = parse(msg.data, Role.SERVER)
            except ProtocolError as exc:
                self.errors[f"bad message: {exc.message[:60]}"] += 1
                continue
            session_id = message.get("session_id")
            if message.type == "answer":
                sent = self.pending.pop(session_id, None)
                await ws.send_str(encode(Role.VIEWER, "bye", session_id=session_id))
                if sent is None:
                    self.errors["answer after the drain window"] += 1
                    continue
                sent[3].append((now - sent[0]) * 1000)
                self.timed.append((sent[0], (now - sent[0]) * 1000))
                if self.verify_left > 0:
                    self.verify_left -= 1
                    self._verify(message, sent[1], sent[2])
            elif message.type in ("error", "bye"):
                what = message.get("code") or f"bye: {message.get('reason')}"
                if self.pending.pop(session_id or "", None) is not None or message.type == "error":
                    self.errors[str(what)[:80]] += 1

    def _verify(self, message: Any, device_id: str, offer_sdp: str) -> None:
        """Check a few answers as a real viewer would: the camera's key, its signature."""
        from services.signatures import answer_statement, device_id_of, verify

        signed = answer_statement(device_id, message["session_id"], offer_sdp, message["sdp"])
        if device_id_of(message["device_key"]) != device_id or not verify(
                message["device_key"], signed, message["signature"]):
            self.errors["answer signature does not verify"] += 1
        else:
            self.verified += 1

    def offers(self, devices: list[str], n: int, rng: random.Random) -> list[tuple[int, str, str,
                                                                                    str, str]]:
        """``n`` signed offers, made before the clock starts: (link, session, device, sdp, text)."""
        from services.signaling import Role, encode
        from services.signatures import offer_statement, sign

        out = []
        for i in range(n):
            link = i % len(self._links)
            _ws, key, key_text = self._links[link]
            device = rng.choice(devices)
            session = secrets.token_urlsafe(16)
            sdp = fake_sdp("recvonly")
            ts = int(time.time() * 1000)
            signature = sign(key, offer_statement(device, session, ts, key_text, sdp))
            out.append((link, session, device, sdp, encode(
                Role.VIEWER, "offer", device_id=device, session_id=session, sdp=sdp,
                viewer_key=key_text, timestamp=ts, signature=signature)))
        return out

    async def step(self, rate: float, seconds: float, devices: list[str],
                   rng: random.Random) -> dict[str, Any]:
        """Start sessions at ``rate``/s (Poisson) for ``seconds``; their round trips."""
        n = max(1, round(rate * seconds))
        plan = self.offers(devices, n, rng)
        at, times = 0.0, []
        for _ in range(n):
            at += rng.expovariate(rate)
            times.append(at)
        self.errors.clear()
        self.verify_left, self.verified = 3, 0
        rtt: list[float] = []
        lag: list[float] = []
        self.timed = []
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        first = last = 0.0
        for when, (link, session, device, sdp, text) in zip(times, plan, strict=True):
            delay = start + when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            lag.append((now - start - when) * 1000)
            first = first or now
            last = now
            self.pending[session] = (time.perf_counter(), device, sdp, rtt)
            await self._links[link][0].send_str(text)
        deadline = loop.time() + DRAIN_SECONDS
        while any(p[3] is rtt for p in self.pending.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        lost = [s for s, p in self.pending.items() if p[3] is rtt]
        for s in lost:
            del self.pending[s]
        errors = dict(self.errors)
        if lost:
            errors[f"no answer within {DRAIN_SECONDS:.0f} s"] = len(lost)
        planned = times[-1] - times[0]
        return {"rate": rate, "sent": n, "answered": len(rtt), "signatures_checked": self.verified,
                "achieved_rate": round((n - 1) / (last - first), 1) if n > 1 and last > first
                else None,
                "planned_rate": round((n - 1) / planned, 1) if n > 1 and planned > 0 else None,
                "errors": errors, "rtt_ms": [round(x, 3) for x in rtt],
                "schedule_lag_ms": summary(lag) if lag else None}

    async def close(self) -> None:
        links, self._links = self._links, []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for ws, _key, _text in links:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        for http in self._http.values():
            await http.close()
        self._http.clear()


# -- the benchmark ---------------------------------------------------------------


async def healthz(url: str) -> dict[str, Any]:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http, http.get(
                url.replace("ws://", "http://") + "/healthz",
                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body: dict[str, Any] = await resp.json()
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SystemExit(f"bench: the rendezvous does not answer /healthz ({exc!r})") from None


def run_delay_ms(pid: int) -> float:
    """Milliseconds ``pid``'s main thread has spent runnable on a run queue, waiting
    for a core (/proc schedstat); 0 if the kernel does not say."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


SLOW_MS = 20.0
"""A round trip at least this long is looked into (``slow_round_trips``)."""


def slow_round_trips(sends: list[tuple[float, float]],
                     loop: list[tuple[float, float, float, float]],
                     collections: list[tuple[float, int, float, float]],
                     wakes: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Where the slow round trips of a step were: ``sends`` (monotonic send time, ms)
    against one process's long loop iterations (start, wall, CPU, waiting for a
    core), its collections (start, generation, wall, CPU) and its late wake-ups
    (when it got a core, ms it waited for one). A round trip overlapping a long
    iteration is counted with it, and that iteration split into the process's own
    CPU, its wait for a core, and the rest. One overlapping a late wake-up of 10 ms
    or more (and no long iteration) waited for that process to get a core. For the
    server, the others had neither in them: the delay was the load generator's
    (its viewers' or cameras' processes, probed the same way) or the kernel's."""
    wakes = wakes or []
    slow = [(at, ms) for at, ms in sends if ms >= SLOW_MS]
    waited = 0
    for at, ms in slow:
        end = at + ms / 1000
        if not any(p[0] < end and p[0] + p[1] / 1000 > at for p in loop) and any(
                w >= 10 and when - w / 1000 < end and when > at for when, w in wakes):
            waited += 1
    hit: dict[float, tuple[float, float, float, float]] = {}
    overlapped = 0
    for at, ms in slow:
        end = at + ms / 1000
        over = [p for p in loop if p[0] < end and p[0] + p[1] / 1000 > at]
        if over:
            overlapped += 1
            for p in over:
                hit[p[0]] = p
    # Each slow round trip: how long this process waited for a core within it.
    waits = sorted(
        sum(w for when, w in wakes if when - w / 1000 < at + ms / 1000 and when > at)
        + sum(p[3] for p in loop if p[0] < at + ms / 1000 and p[0] + p[1] / 1000 > at)
        for at, ms in slow)
    pauses = list(hit.values())
    in_gc = sum(1 for p in pauses if any(
        p[0] <= c[0] < p[0] + p[1] / 1000 and c[2] >= 5 for c in collections))
    return {"n": len(slow), "with_a_pause": overlapped,
            # aiohttp's whole-second timers (the simulated cameras' heartbeats)
            "across_a_whole_second": sum(
                1 for at, ms in slow if math.floor(at + ms / 1000) > math.floor(at)),
            "with_waiting_for_a_core": waited,
            "waited_in_slow_ms": {"p50": round(percentile(waits, 0.5), 1) if waits else 0.0,
                                  "max": round(waits[-1], 1) if waits else 0.0},
            "late_wakes_10ms": sum(1 for _when, w in wakes if w >= 10),
            "late_wake_max_ms": round(max((w for _when, w in wakes), default=0.0), 1),
            "pauses": len(pauses), "pauses_with_a_collection": in_gc,
            "pause_wall_ms": round(sum(p[1] for p in pauses), 1),
            "pause_cpu_ms": round(sum(p[2] for p in pauses), 1),
            "pause_runq_ms": round(sum(p[3] for p in pauses), 1)}


def gc_summary(pauses: list[tuple[int, float, float]]) -> dict[str, Any]:
    """The server's collections in a window: full ones, and any that took 10 ms or more
    (wall time); the longest in the server's own CPU time too."""
    full = [ms for gen, ms, _cpu in pauses if gen == 2]
    long = [ms for _gen, ms, _cpu in pauses if ms >= 10]
    return {"full": len(full), "full_max_ms": round(max(full, default=0.0), 1),
            "over_10ms": len(long),
            "max_ms": round(max((ms for _g, ms, _c in pauses), default=0.0), 1),
            "max_cpu_ms": round(max((c for _g, _m, c in pauses), default=0.0), 1)}


class MachineLoad:
    """Busy cores of the whole machine over an interval (/proc/stat): ours and everyone's."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def cores(self) -> float:
        """Cores busy since this was made (all processes on the machine)."""
        busy, total = self._read()
        d_total = total - self._start[1]
        return (os.cpu_count() or 1) * (busy - self._start[0]) / d_total if d_total else 0.0


def listen_drops() -> int:
    """TcpExt ListenDrops: SYNs the kernel dropped at a full accept queue (any listener)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
             if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenDrops", 0))


def sockstat() -> dict[str, int]:
    """Kernel TCP sockets in use and their buffer pages (both ends of loopback: all of it)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    return {}


#: Descriptors the server keeps for itself (listening socket, logs, epoll, ...): as
#: ``services.rendezvous.FD_RESERVE``, plus the viewers the bench connects.
_SERVER_RESERVE = 64


def capacity(nofile: int, viewers: int) -> int:
    """Cameras one server process can hold under this descriptor limit, with the viewers."""
    return nofile - _SERVER_RESERVE - viewers - 16


async def run(args: argparse.Namespace) -> dict[str, Any]:
    asked = sorted(int(x) for x in args.levels.split(","))
    rates = [float(x) for x in args.rates.split(",")]
    viewers = max(args.viewers, math.ceil(2 * max(rates) / 10))  # ≤ 10 messages/s each
    nofile = raise_nofile()
    room = capacity(nofile, viewers)
    levels = [n for n in asked if n <= room]
    unreachable = [n for n in asked if n > room]
    if unreachable:
        # One process, one descriptor per connection: the server cannot hold more
        # than its RLIMIT_NOFILE, and this machine will not raise the hard limit.
        levels.append(room // 1000 * 1000 if room >= 1000 else room)
        levels = sorted(set(levels))
        print(f"scale: RLIMIT_NOFILE is {nofile} (hard): one process holds at most {room} "
              f"cameras with {viewers} viewers; {unreachable} not measured, {levels[-1]} instead",
              file=sys.stderr, flush=True)
    if not levels or levels[0] <= 0:
        raise SystemExit(f"bench: RLIMIT_NOFILE hard limit is {nofile}: no room for cameras")
    started = time.monotonic()
    result = await _measure(args, levels, rates, viewers, [], "scale")
    result["asked_levels"] = asked
    result["unreachable_levels"] = unreachable
    result["nofile"] = nofile
    result["nofile_raisable"] = _hard_limit_raisable(nofile)
    # The top level again on a server changed one way, in the same run: what the
    # change does on the same machine minute. The load generator shares the machine
    # too: a failed comparison is reported, and the main measurement is kept.
    comparisons = [
        # the collector as it was (no freeze)
        (args.compare_no_freeze, "without_freeze", "scale-nofreeze", ["--no-gc-freeze"], {},
         ("baseline_rss_kib", "levels", "steps", "shutdown_seconds", "shutdown_cameras",
          "loop_pauses_ms")),
        (args.compare_before, "before", "scale-before", [], {"PEERCAM_BENCH_BEFORE": "1"},
         ("baseline_rss_kib", "levels", "steps", "shutdown_seconds", "shutdown_cameras",
          "shutdown_closed_seconds", "shutdown_details", "loop_pauses_ms")),
        (args.compare_tick_freeze, "tick_freeze", "scale-tickfreeze", [],
         {"PEERCAM_BENCH_TICK_FREEZE": "1"},
         ("baseline_rss_kib", "levels", "steps", "loop_pauses_ms")),
    ]
    for wanted, key, name, server_args, env, keys in comparisons:
        if not wanted or args.smoke:
            continue
        try:
            other = await _measure(args, [levels[-1]], [TARGET_RATE], viewers, server_args,
                                   name, env)
        except SystemExit as exc:
            result[f"{key}_failed"] = str(exc)[:300]
        else:
            result[key] = {k: other[k] for k in keys}
    result["measure_seconds"] = round(time.monotonic() - started, 1)
    return result


def _hard_limit_raisable(nofile: int) -> bool:
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile + 1))
    except (ValueError, OSError):
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return True


async def _measure(args: argparse.Namespace, levels: list[int], rates: list[float],
                   viewers: int, server_args: list[str], name: str,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    state = Path(args.state) / name
    (state / "cameras").mkdir(parents=True, exist_ok=True)
    workers_n = max(1, min(args.workers, math.ceil(levels[-1] / args.per_address)))
    rdv = await RendezvousProcess.start(state, args.log_level, server_args, env)
    workers: list[WorkerProcess] = []
    pool: ViewerPool | None = None
    started = time.monotonic()
    try:
        await healthz(rdv.url)
        await asyncio.sleep(args.settle)
        baseline = rdv.rss_kib()
        c0, t0 = rdv.cpu(), time.monotonic()
        await asyncio.sleep(min(args.idle_seconds, 5.0))
        empty_cpu = (rdv.cpu() - c0) / (time.monotonic() - t0)
        aligned = ["--aligned-heartbeats"] if getattr(args, "aligned_heartbeats", False) else []
        workers = [await WorkerProcess.start(rdv.url, i, workers_n, args.per_address,
                                             max(1, args.concurrency // workers_n), state,
                                             aligned)
                   for i in range(workers_n)]
        devices: list[str] = []
        register_ms: list[float] = []
        rows: list[dict[str, Any]] = []
        for level in levels:
            rows.append(await _grow(rdv, workers, level, args, baseline, devices, register_ms))
            row = rows[-1]
            print(f"{name}: {level} cameras ({row['online_after_idle']} after idle), "
                  f"{row['kib_per_camera']} KiB each, idle CPU {row['idle_cpu']:.3f} of a core, "
                  f"longest loop pause {row['loop_idle']} ms, "
                  f"other load {row['other_load_cores']} cores", file=sys.stderr, flush=True)
        pool = ViewerPool(rdv.url, viewers, args.per_address)
        await pool.open()
        viewers_log = state / "viewers-loop.log"
        viewers_log.write_text("")
        loop_probe.install(viewers_log)
        gc.collect()
        gc.freeze()  # the load generator's own collections stay out of its timings
        await asyncio.sleep(args.settle)
        steps = await _signaling(rdv, workers, pool, rates, devices, args)
        rss_after = rdv.rss_kib()
        camera_side = [await w.command({"cmd": "stats"}, 60) for w in workers]
        health = await healthz(rdv.url)
        rdv.alive()
        await pool.close()
        # A restart under load: how long SIGTERM takes with every camera connected.
        held = health.get("cameras", 0)
        shutdown = await rdv.stop(timeout=60.0)
        closed_in = _closed_in(rdv.log)
        details = _shutdown_details(rdv.log)
        began = _logged_at(rdv.log, "INFO services.rendezvous: stopping: ")
        if began is not None and rdv.sigterm_at is not None:
            # From the signal to the shutdown hook (the server's log, ms resolution).
            details["began_after_seconds"] = round(began - rdv.sigterm_at, 2)
    finally:
        if pool is not None:
            await pool.close()
        for w in workers:
            await w.stop()
        await rdv.stop()
        gc.unfreeze()
    return {
        "server": "python -m camera.cli rendezvous (as shipped), own process",
        "server_args": server_args,
        "log_level": args.log_level,
        "workers": workers_n, "per_address": args.per_address, "viewers": viewers,
        "concurrency": args.concurrency, "idle_seconds": args.idle_seconds,
        "step_seconds": args.step_seconds, "sdp_bytes": len(fake_sdp("recvonly")),
        "baseline_rss_kib": baseline, "empty_idle_cpu": round(empty_cpu, 4),
        "levels": rows, "register_ms": register_ms, "register": summary(register_ms),
        "steps": steps, "rss_after_signaling_kib": rss_after,
        "camera_side": camera_side, "health_at_end": health,
        "shutdown_seconds": None if shutdown is None else round(shutdown, 2),
        "shutdown_closed_seconds": closed_in,
        "shutdown_details": details,
        "shutdown_cameras": held,
        "loop_pauses_ms": sorted(rdv.loop_pauses(0.0, math.inf), reverse=True)[:20],
        "measure_seconds": round(time.monotonic() - started, 1),
    }


def _closed_in(log: Path) -> float | None:
    """The server's own account of its shutdown: "closed N connections in S s"."""
    import re

    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            match = re.search(r"closed (\d+) connections in ([0-9.]+) s", line)
            if match:
                return float(match.group(2))
    return None


def _logged_at(log: Path, text: str) -> float | None:
    """Wall-clock time of the last log line containing ``text``."""
    import datetime

    with contextlib.suppress(OSError, ValueError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if text in line:
                return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _shutdown_details(log: Path) -> dict[str, float]:
    """The rest of the server's account of its shutdown: how late its latest batch
    was (ms), and then either how long it waited for its peers before exiting without
    unwinding (and how they stood), or the handlers unwound between batches and how
    long the rest took after."""
    import re

    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            match = re.search(r"at most (\d+) ms late\); exiting without unwinding ([0-9.]+) s "
                              r"later: (\d+) peers ended their side, (\d+) acknowledged "
                              r"everything, (\d+) did not", line)
            if match:
                return {"late_ms": float(match.group(1)),
                        "exit_wait_seconds": float(match.group(2)),
                        "peers_ended": int(match.group(3)), "acknowledged": int(match.group(4)),
                        "unacknowledged": int(match.group(5))}
            match = re.search(r"at most (\d+) ms late; (\d+) handlers unwound meanwhile\); "
                              r"the rest unwound in ([0-9.]+) s", line)
            if match:
                return {"late_ms": float(match.group(1)), "unwound_early": int(match.group(2)),
                        "unwound_after_seconds": float(match.group(3))}
    return {}


async def _grow(rdv: RendezvousProcess, workers: list[WorkerProcess], level: int,
                args: argparse.Namespace, baseline: int, devices: list[str],
                register_ms: list[float]) -> dict[str, Any]:
    """Register cameras up to ``level``, settle, then measure memory and idle CPU."""
    c0, t0, drops = rdv.cpu(), time.monotonic(), listen_drops()
    ramp_started = t0
    replies = await asyncio.gather(*(w.command({"cmd": "grow", "to": level}, 900)
                                     for w in workers))
    ramp = time.monotonic() - t0
    ramp_cpu = (rdv.cpu() - c0) / ramp
    drops = listen_drops() - drops
    rdv.alive()
    failed: collections.Counter[str] = collections.Counter()
    new_ms: list[float] = []
    for reply in replies:
        devices += reply["ids"]
        new_ms += reply["register_ms"]
        failed.update(reply["failed"])
    register_ms += new_ms
    refused = sum(r["refused"] for r in replies)
    if failed:
        why = "; ".join(f"{n}× {msg}" for msg, n in failed.most_common(3))
        raise SystemExit(f"bench: {sum(failed.values())} of {level} cameras could not register "
                         f"at the rendezvous ({why}); {refused} HTTP 429/503 refusals on the way")
    health = await healthz(rdv.url)
    if health.get("cameras") != level:
        raise SystemExit(f"bench: the rendezvous reports {health.get('cameras')} cameras "
                         f"online, expected {level}")
    await asyncio.sleep(args.settle)
    rss_settled = rdv.rss_kib()
    c0, t0 = rdv.cpu(), time.monotonic()
    w0 = sum(w.cpu() for w in workers)
    load = MachineLoad()
    await asyncio.sleep(args.idle_seconds)
    elapsed = time.monotonic() - t0
    idle_cpu = (rdv.cpu() - c0) / elapsed
    clients_cpu = (sum(w.cpu() for w in workers) - w0) / elapsed
    machine_cores = load.cores()
    gc_idle = gc_summary(rdv.gc_pauses(t0, time.monotonic()))
    rss = rdv.rss_kib()
    stats = [await w.command({"cmd": "stats"}, 60) for w in workers]
    online = (await healthz(rdv.url)).get("cameras")
    errors: collections.Counter[str] = collections.Counter()
    for st in stats:
        errors.update(st["errors"])
    return {
        "cameras": level, "ramp_seconds": round(ramp, 2),
        "registrations_per_s": round(len(new_ms) / ramp, 1), "ramp_cpu": round(ramp_cpu, 3),
        "server_cpu_ms_per_registration": round(1000 * ramp_cpu * ramp / max(1, len(new_ms)), 3),
        "register_ms": summary(new_ms) if new_ms else None, "refused_429": refused,
        "listen_drops": drops,
        "rss_kib": rss, "rss_settled_kib": rss_settled,
        "kib_per_camera": round((rss - baseline) / level, 2),
        "online_after_idle": online, "lost": sum(st["lost"] for st in stats),
        "server_gc_idle": gc_idle,
        "server_gc_ramp": gc_summary(rdv.gc_pauses(ramp_started, ramp_started + ramp)),
        "loop_idle": rdv.longest_pause(t0, time.monotonic()),
        "loop_ramp": rdv.longest_pause(ramp_started, ramp_started + ramp),
        "camera_errors": dict(errors),
        "idle_cpu": round(idle_cpu, 4), "clients_idle_cpu": round(clients_cpu, 4),
        "other_load_cores": round(max(0.0, machine_cores - idle_cpu - clients_cpu), 2),
        "clients_rss_kib": sum(w.rss_kib() for w in workers),
        "kernel_tcp": sockstat(),
    }


async def _signaling(rdv: RendezvousProcess, workers: list[WorkerProcess], pool: ViewerPool,
                     rates: list[float], devices: list[str],
                     args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    steps: list[dict[str, Any]] = []
    best_p99 = math.inf
    for rate in rates:
        c0, t0 = rdv.cpu(), time.monotonic()
        w0 = sum(w.cpu() for w in workers)
        m0 = cpu_seconds(os.getpid())
        pids = {"server": [rdv.proc.pid], "viewers": [os.getpid()],
                "cameras": [w.proc.pid for w in workers]}
        q0 = {k: sum(run_delay_ms(p) for p in v) for k, v in pids.items()}
        load = MachineLoad()
        step = await pool.step(rate, args.step_seconds, devices, rng)
        elapsed = time.monotonic() - t0
        machine_cores = load.cores()
        # Runnable but without a core, per second of the step (each process's main
        # thread): the machine's share of the delays, not the server's work.
        step["runq_ms_per_s"] = {
            k: round((sum(run_delay_ms(p) for p in v) - q0[k]) / elapsed, 1)
            for k, v in pids.items()}
        step["server_gc"] = gc_summary(rdv.gc_pauses(t0, time.monotonic()))
        step["loop"] = rdv.longest_pause(t0, time.monotonic())
        t1 = time.monotonic()
        server = loop_probe.read(rdv.probe_log, t0, t1)
        step["slow"] = slow_round_trips(pool.timed, server.iterations, server.collections,
                                        server.wakes)
        # The same for the load generator's processes: where the slow round trips
        # that the server does not explain were.
        clients = {"viewers": loop_probe.read(Path(rdv.log).parent / "viewers-loop.log",
                                              t0, t1)}
        for i, w in enumerate(workers):
            if w.loop_log is not None:
                clients[f"cameras-{i}"] = loop_probe.read(w.loop_log, t0, t1)
        step["slow_clients"] = {
            name: slow_round_trips(pool.timed, probe.iterations, probe.collections, probe.wakes)
            for name, probe in clients.items()}
        step["server_cpu"] = round((rdv.cpu() - c0) / elapsed, 3)
        step["cameras_cpu"] = round((sum(w.cpu() for w in workers) - w0) / elapsed, 3)
        step["viewers_cpu"] = round((cpu_seconds(os.getpid()) - m0) / elapsed, 3)
        step["other_load_cores"] = round(max(0.0, machine_cores - step["server_cpu"]
                                             - step["cameras_cpu"] - step["viewers_cpu"]), 2)
        step["server_rss_kib"] = rdv.rss_kib()
        rdv.alive()
        rtt = sorted(step["rtt_ms"])
        step["rtt"] = summary(rtt) if rtt else None
        p99 = percentile(rtt, 0.99) if rtt else math.inf
        best_p99 = min(best_p99, p99)
        errors = sum(step["errors"].values())
        # Poisson arrivals over a few seconds stray from the nominal rate: "behind"
        # compares what was sent with what was drawn.
        behind = bool(step["achieved_rate"] and step["planned_rate"]
                      and step["achieved_rate"] < 0.9 * step["planned_rate"])
        step["degraded"] = bool(errors) or behind or p99 > args.degrade_factor * best_p99
        steps.append(step)
        s = step["rtt"] or {}
        print(f"scale: {rate:g} starts/s: p50 {s.get('p50')} ms, p99 {s.get('p99')} ms, "
              f"{errors} errors, server CPU {step['server_cpu']}, other load "
              f"{step['other_load_cores']} cores, waiting for a core (ms/s) "
              f"{step['runq_ms_per_s']}, slow round trips {step['slow']}, "
              f"longest loop pause {step['loop']}; clients: {step['slow_clients']}",
              file=sys.stderr, flush=True)
        if step["degraded"] and (rate >= TARGET_RATE or p99 > 2000):
            break
        step["sessions_left"] = await _quiesce(rdv.url)

    return steps


async def _quiesce(url: str, timeout: float = 10.0) -> int:
    """Wait until the rendezvous holds no session (every bye arrived); how many are left."""
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(0.5)
        left = int((await healthz(url)).get("sessions", 0))
        if left == 0 or time.monotonic() > deadline:
            return left


# -- reporting ---------------------------------------------------------------------


def _at_target(result: dict[str, Any]) -> dict[str, Any] | None:
    for step in result["steps"]:
        if step["rate"] == TARGET_RATE:
            return step
    return None


def _degrades_at(result: dict[str, Any]) -> float | None:
    for step in result["steps"]:
        if step["degraded"]:
            return float(step["rate"])
    return None


def headline(result: dict[str, Any]) -> str:
    top = result["levels"][-1]
    target = _at_target(result)
    if target and target["rtt"]:
        sig = f"signaling p99 {target['rtt']['p99']} ms at {TARGET_RATE:g} starts/s"
    elif target:
        sig = f"no answer at {TARGET_RATE:g} starts/s"
    else:
        last = result["steps"][-1]
        p99 = last["rtt"]["p99"] if last["rtt"] else "n/a"
        sig = f"signaling p99 {p99} ms at {last['rate']:g} starts/s"
    degrades = _degrades_at(result)
    busy = _busiest_other_load(result)
    return (f"scale: {top['online_after_idle']} of {top['cameras']} cameras held, "
            f"{top['kib_per_camera']} KiB each, idle CPU {100 * top['idle_cpu']:.1f}% of a core; "
            f"{sig}{f'; degrades at {degrades:g}/s' if degrades else ''}"
            f"{f' (machine shared: up to {busy} cores busy elsewhere)' if busy > 0.5 else ''}")


def _busiest_other_load(result: dict[str, Any]) -> float:
    loads = [r["other_load_cores"] for r in result["levels"]]
    loads += [s["other_load_cores"] for s in result["steps"]]
    return float(max(loads, default=0.0))


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    cams = [0] + [r["cameras"] for r in result["levels"]]
    mib = [result["baseline_rss_kib"] / 1024] + [r["rss_kib"] / 1024 for r in result["levels"]]
    ax.plot(cams, mib, "o-", label="rendezvous RSS")
    ax.plot([0, cams[-1]], [mib[0], mib[0] + cams[-1] * TARGET_KIB / 1024], "--",
            color="gray", label=f"target: {TARGET_KIB:g} KiB per camera")
    for r in result["levels"]:
        ax.annotate(f"{r['kib_per_camera']} KiB/cam", (r["cameras"], r["rss_kib"] / 1024),
                    textcoords="offset points", xytext=(-30, 8), fontsize=8)
    ax.set_xlabel("registered idle cameras")
    ax.set_ylabel("RSS (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale_memory.png", dpi=100)
    plt.close(fig)

    steps = [s for s in result["steps"] if s["rtt"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rates = [s["rate"] for s in steps]
    for key, style in (("p50", "o-"), ("p99", "s-"), ("max", "^:")):
        ax.plot(rates, [s["rtt"][key] for s in steps], style, label=key)
    ax.axhline(TARGET_P99_MS, color="gray", ls="--", label=f"target p99 {TARGET_P99_MS:g} ms")
    ax.axvline(TARGET_RATE, color="gray", ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("session starts per second (open loop)")
    ax.set_ylabel("offer → answer (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale_rtt.png", dpi=100)
    plt.close(fig)
    return ["scale_memory.png", "scale_rtt.png"]


def _gc_cell(gc_stats: dict[str, Any], *, full: bool) -> str:
    if full:
        return f"{gc_stats['full']} ({gc_stats['full_max_ms']})" if gc_stats["full"] else "0"
    return f"{gc_stats['over_10ms']} ({gc_stats['max_ms']})" if gc_stats["over_10ms"] else "0"


def markdown(result: dict[str, Any]) -> list[str]:
    top = result["levels"][-1]
    lines = [
        "## Rendezvous scale",
        "",
        # What the run's author wrote down about it (stored with the result).
        *[line for note in result.get("notes", []) for line in (note, "")],
        "One rendezvous process (`camera.cli rendezvous` as shipped, logging at "
        f"{result['log_level']}) holding",
        "simulated cameras that do the real registration (P-256 keys, signed `register` on",
        "the server's nonce) and then idle on the agent's 20 s heartbeat. Memory is the",
        f"server's RSS above its empty baseline ({result['baseline_rss_kib'] / 1024:.1f} MiB), "
        "divided by the cameras;",
        f"idle CPU is sampled over {result['idle_seconds']:g} s "
        + ("(one heartbeat period)." if result["idle_seconds"] >= 20 else
           "(less than the 20 s heartbeat: pings may fall outside it).")
        + " The longest event-loop pause is",
        "the longest loop iteration (from `select()` returning to the end of its callbacks, "
        "garbage collections",
        "included) in the idle window, in wall time and, in brackets, in the loop thread's "
        "own CPU time (the difference is",
        "time the server waited for one of the shared cores). Targets: "
        f"≤ {TARGET_KIB:g} KiB per idle camera,",
        f"{TARGET_CAMERAS // 1000}k cameras in one process,",
        f"no event-loop pause over {TARGET_PAUSE_MS:g} ms, signaling p99 ≤ {TARGET_P99_MS:g} ms "
        f"at {TARGET_RATE:g} session starts/s.",
        "",
        "| cameras | held after idle | RSS MiB | KiB per camera | idle CPU (of a core) "
        "| longest loop pause idle / ramp (ms) | idle full GCs (max ms) | registrations/s "
        "| server CPU ms per registration | handshake p50 / p99 ms | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["levels"]:
        reg = r["register_ms"] or {}
        lines.append(f"| {r['cameras']} | {r['online_after_idle']} | {r['rss_kib'] / 1024:.1f} | "
                     f"{r['kib_per_camera']} | {100 * r['idle_cpu']:.1f}% | "
                     f"{_pause(r.get('loop_idle'))} / {_pause(r.get('loop_ramp'))} | "
                     f"{_gc_cell(r['server_gc_idle'], full=True)} | "
                     f"{r['registrations_per_s']} | {r['server_cpu_ms_per_registration']} | "
                     f"{reg.get('p50')} / {reg.get('p99')} | {r['other_load_cores']} |")
    refused = sum(r["refused_429"] for r in result["levels"])
    drops = sum(r["listen_drops"] for r in result["levels"])
    lines += ["", f"Handshakes ran {result['concurrency']} at a time, so their times are mostly "
                  "queueing; the server's CPU per registration is the cost. HTTP 429/503 refusals: "
                  f"{refused}; SYNs dropped at a full accept queue during the ramps: {drops}."]
    if len(result["levels"]) > 1:
        a, b = result["levels"][-2], result["levels"][-1]
        marginal = (b["rss_kib"] - a["rss_kib"]) / (b["cameras"] - a["cameras"])
        lines += [f"Marginal memory from {a['cameras']} to {b['cameras']} cameras: "
                  f"{marginal:.1f} KiB per camera. Empty server idle: "
                  f"{100 * result['empty_idle_cpu']:.1f}% of a core."]
    lines += [
        "",
        "What an idle camera costs the server (`tracemalloc` and `gc.get_objects()` in a "
        "rendezvous holding 2000",
        "registered cameras, one heartbeat period after they came, 2026-12-07): 12.2 KiB "
        "allocated per camera, down",
        "from 15.4 KiB (and 18.4 KiB before the timer wheel), 63 collector-tracked objects, "
        "down from 72. An upgraded",
        "connection now lets go of what aiohttp keeps of its HTTP request and never uses "
        "again: the parsed request",
        "headers, the HTTP parser, the queue of pipelined requests, the hour-long HTTP "
        "keep-alive timer, and the",
        "response headers sent with the upgrade (`_shed_request` in services/rendezvous.py; "
        "a test checks each is",
        "gone and the connection still serves). Left: the request's raw header tuple, which "
        "aiohttp's own frame",
        "holds (1.6 KiB), the WebSocket reader, queue and writer (about 2 KiB), the request "
        "handler with its two",
        "tasks and their coroutine frames (about 3.5 KiB), the transport and socket "
        "(0.8 KiB), and ours (the peer",
        "record, its rate limiter, the maps: about 1 KiB).",
    ]
    if result.get("unreachable_levels"):
        lines += ["", f"**Not measured: {', '.join(str(n) for n in result['unreachable_levels'])} "
                      f"cameras.** Each connection is a descriptor, and this machine's "
                      f"RLIMIT_NOFILE hard limit is {result['nofile']}"
                      + (" (raising it is refused, even as root)"
                         if not result.get("nofile_raisable", True) else "")
                      + f": one process holds at most about {top['cameras']} cameras here. "
                      "The rows above are what the process does up to that limit."]
    lines += [
        "",
        f"Signaling round trip with {top['cameras']} cameras held: a pool of "
        f"{result['viewers']} viewer WebSockets starts",
        "sessions open-loop (Poisson arrivals, "
        f"{result['step_seconds']:g} s per rate); each sends a signed offer",
        f"({result['sdp_bytes']} B SDP) to a random camera, which answers at once with a "
        "signed answer; the",
        "viewer times offer → answer and says `bye`.",
        "",
        "| starts/s | achieved | answered | p50 ms | p99 ms | max ms | errors "
        "| longest loop pause (ms) | server GC pauses ≥ 10 ms (max) | server CPU | client CPU "
        "| other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["steps"]:
        lines.append(_step_row(s))
    verdict = [_against("memory per idle camera", top["kib_per_camera"], TARGET_KIB, "KiB")
               + f" at {top['cameras']} cameras"]
    held = top["online_after_idle"] or 0
    verdict.append(f"{held} of {top['cameras']} cameras held"
                   + ("" if top["cameras"] >= TARGET_CAMERAS
                      else f" (target {TARGET_CAMERAS // 1000}k: NOT REACHED, the descriptor "
                           "limit stops it here)"))
    pauses = [r.get("loop_idle") or {} for r in result["levels"]] + [
        s.get("loop") or {} for s in result["steps"]]
    wall = max((p.get("wall_ms", 0.0) for p in pauses), default=0.0)
    cpu = max((p.get("cpu_ms") or 0.0 for p in pauses), default=0.0)
    verdict.append(_against("longest loop pause (wall time, idle or under load)", wall,
                            TARGET_PAUSE_MS, "ms"))
    if cpu:
        verdict.append(_against("its CPU-time part", cpu, TARGET_PAUSE_MS, "ms"))
    target = _at_target(result)
    if target:
        if target["rtt"] and not target["errors"]:
            verdict.append(_against(f"p99 at {TARGET_RATE:g}/s", target["rtt"]["p99"],
                                    TARGET_P99_MS, "ms"))
        else:
            verdict.append(f"p99 at {TARGET_RATE:g}/s MISSED (errors or no answers)")
    degrades = _degrades_at(result)
    end = result["health_at_end"].get("cameras")
    lines += [
        "",
        "Against the targets: " + "; ".join(verdict) + "."
        + (f" The round trip degrades at {degrades:g} starts/s." if degrades else "")
        + (f" {end} of {top['cameras']} cameras were still registered after the load."
           if end != top["cameras"] else ""),
    ]
    if result.get("shutdown_seconds") is not None:
        closed = result.get("shutdown_closed_seconds")
        details = result.get("shutdown_details") or {}
        began = details.get("began_after_seconds")
        lines.append(f"Stopping the rendezvous (SIGTERM) with {result['shutdown_cameras']} "
                     f"cameras connected took {result['shutdown_seconds']} s to exit"
                     + (f"; it began closing {began} s after the signal" if began is not None
                        else "")
                     + (f"; the last of its close frames was written {closed} s after the "
                        "first, in batches spread over `--shutdown-window`, each close "
                        "(code 1012) asking its camera to wait a random delay up to "
                        "`--reconnect-spread` before reconnecting" if closed is not None else "")
                     + (f" (the latest batch {details['late_ms']:g} ms after its plan); "
                        f"{details['unwound_early']} of the connections' handlers unwound "
                        "in the slack between batches (their transports closed a few at a "
                        "time), the rest in "
                        f"{details['unwound_after_seconds']} s after the last close frame"
                        if "unwound_early" in details else "")
                     + (f" (the latest batch {details['late_ms']:g} ms after its plan); then "
                        f"it waited {details['exit_wait_seconds']} s for its peers "
                        f"({details['peers_ended']} had ended their side, "
                        f"{details['acknowledged']} more had acknowledged everything, "
                        f"{details['unacknowledged']} had not) and exited without unwinding"
                        if "exit_wait_seconds" in details else "") + ".")
    elif "shutdown_seconds" in result:
        lines.append(f"The rendezvous did not exit within 60 s of SIGTERM with "
                     f"{result['shutdown_cameras']} cameras connected (killed).")
    before = result.get("before")
    if before:
        b = before["levels"][-1]
        lines += [
            "",
            f"Before and after the exit without unwinding, the same "
            f"{b['cameras']} cameras in the same run (before: the server unwinds every "
            "connection's handler and then the interpreter; bench/scale.py `--compare-before`):",
            "",
            "| server | RSS above empty (MiB) | KiB per camera | shutdown: closing began after "
            "SIGTERM (s) | last close frame after the first (s) | exit after SIGTERM (s) "
            "| p99 at 200/s (ms) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, res, lv, steps in (("before", before, b, before["steps"]),
                                      ("after (as committed)", result, top, result["steps"])):
            step = next((s for s in steps if s["rate"] == TARGET_RATE), None)
            rtt = (step or {}).get("rtt") or {}
            lines.append(f"| {label} | {(lv['rss_kib'] - res['baseline_rss_kib']) / 1024:.1f} | "
                         f"{lv['kib_per_camera']} | "
                         f"{(res.get('shutdown_details') or {}).get('began_after_seconds', '–')} | "
                         f"{res.get('shutdown_closed_seconds')} | "
                         f"{res.get('shutdown_seconds')} | {rtt.get('p99')} |")
    if result.get("before_failed"):
        lines += ["", "The before/after comparison in the same run failed: "
                      f"{result['before_failed'].splitlines()[0]}"]
    other = result.get("without_freeze")
    if other:
        o = other["levels"][-1]
        lines += [
            "",
            f"The same {o['cameras']} cameras on a server started with `--no-gc-freeze` (the "
            "collector as before), measured in the same run"
            + (", and on one that freezes only at its once-a-second tick (bench/scale.py "
               "`--compare-tick-freeze`: not as each batch of 256 new connections is in)"
               if result.get("tick_freeze") else "") + ":",
            "",
            "| server | KiB per camera | idle CPU | longest loop pause idle / ramp (ms) "
            "| longest collection in the ramp (ms) "
            "| idle full GCs (max ms) | p99 at 200/s (ms) | longest loop pause at 200/s (ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [("gc.freeze (default)", top, result["steps"]),
                ("--no-gc-freeze", o, other["steps"])]
        if result.get("tick_freeze"):
            rows.append(("gc.freeze at the tick only", result["tick_freeze"]["levels"][-1],
                         result["tick_freeze"]["steps"]))
        for label, lv, steps in rows:
            step = next((s for s in steps if s["rate"] == TARGET_RATE), None)
            rtt = (step or {}).get("rtt") or {}
            ramp_gc = lv.get("server_gc_ramp") or {}
            lines.append(f"| {label} | {lv['kib_per_camera']} | {100 * lv['idle_cpu']:.1f}% | "
                         f"{_pause(lv.get('loop_idle'))} / {_pause(lv.get('loop_ramp'))} | "
                         f"{ramp_gc.get('max_ms', '–')} ({ramp_gc.get('max_cpu_ms', '–')}) | "
                         f"{_gc_cell(lv['server_gc_idle'], full=True)} | {rtt.get('p99')} | "
                         f"{_pause((step or {}).get('loop'))} |")
    if result.get("without_freeze_failed"):
        lines += ["", "The comparison with `--no-gc-freeze` in the same run failed: "
                      f"{result['without_freeze_failed'].splitlines()[0]}"]
    busy = _busiest_other_load(result)
    lines += [
        "",
        "Caveats: the cameras, the viewers and the server share this machine's "
        f"{result.get('machine', {}).get('cores', '?')} cores; "
        "client CPU is the load generator's.",
    ]
    if busy > 0.5:
        lines.append(f"**Other processes kept up to {busy} cores busy during this run**: "
                     "where the server's CPU is well under a core and the round trip is "
                     "slow, the machine was the limit, not the server.")
    lines += [
        "The rendezvous admits 40 new connections per IP address in a burst, then 5/s, and "
        "at most 16",
        "upgrades in flight per address: the simulated peers come from loopback addresses "
        f"127.10.x.y / 127.20.x.y, {result['per_address']} each.",
        "RSS excludes kernel socket buffers (idle sockets hold next to none). The server's",
        "garbage collections and loop iterations are timed by probes around the unchanged "
        "CLI. The load generator freezes its own collections.",
        "",
        "![memory per camera](bench/scale_memory.png) ![signaling round trip](bench/scale_rtt.png)",
        "",
    ]
    return lines


def _against(what: str, value: float, target: float, unit: str) -> str:
    """"what 12.5 ms: met (target ≤ 20 ms)" or "...: MISSED by 3.1 ms (16%)"."""
    if value <= target:
        return f"{what} {value} {unit}: met (≤ {target:g} {unit})"
    over = value - target
    return (f"{what} {value} {unit}: MISSED by {over:.1f} {unit} "
            f"({100 * over / target:.0f}% over {target:g} {unit})")


def _pause(p: dict[str, float] | None) -> str:
    """A loop pause as "wall (CPU)" ms (a result stored before CPU time was probed: wall)."""
    if not p:
        return "–"
    return f"{p['wall_ms']} ({p['cpu_ms']})" if p.get("cpu_ms") is not None else str(
        p["wall_ms"])


def _step_row(s: dict[str, Any]) -> str:
    r = s["rtt"] or {}
    errs = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
    return (f"| {s['rate']:g} | {s['achieved_rate']} | {s['answered']}/{s['sent']} | "
            f"{r.get('p50')} | {r.get('p99')} | {r.get('max')} | {errs} | "
            f"{_pause(s.get('loop'))} | {_gc_cell(s['server_gc'], full=False)} | "
            f"{100 * s['server_cpu']:.0f}% | "
            f"{100 * (s['cameras_cpu'] + s['viewers_cpu']):.0f}% | {s['other_load_cores']} |")
