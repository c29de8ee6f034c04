"""Time to first frame through the NAT lab: a direct (srflx) cell and relayed (TURN) cells.

The servers are the NAT matrix's (tests/lab/matrix.py): coturn on the lab's
public segment (3478 UDP/TCP, 443 TCP), our STUN server and the rendezvous. One
bench camera (``python -m bench _camera --any-address``) sits behind one site;
the viewers run behind other sites, inside the lab's namespaces, so every
packet crosses real kernel NATs. Default cells, all with the camera behind a
port-restricted cone NAT (the usual home router):

* direct: viewer behind a second port-restricted NAT (``port-restricted-2``):
  both sides hole-punch, srflx to srflx;
* relayed (UDP): viewer behind a symmetric NAT: no direct path, coturn relays;
* relayed (TCP): viewer where UDP is blocked: TURN over TCP on port 443.

Each trial records the pair the viewer selected (local → remote candidate
type), so every number is labelled with the path it really took. The CLI
viewer's clock starts at its peer connection (after pairing and the TURN
credentials). Chromium, per trial in a fresh profile: the visit that pairs from
the link (recorded as ``pairing_ttff_ms``, clock from after pairing), then the
page already paired in a new tab, the trial's figure: its clock starts when the
page starts its connection (see bench/ttff.py).

``--kinds chromium_before,chromium --rounds N`` compares today's camera with the one
before (restarted with ``CAMERA_BEFORE``; the page is the same) in the same lab, the
variants alternating ABBA over N rounds, so a machine whose load drifts weighs on both alike.

``python -m bench.labttff cli|chromium LINK TRIALS GAP`` is the viewer side,
run inside a lab namespace: one JSON line per trial.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common import CHROMIUM, ROOT, Missing, need_executable, need_root, pyplot, summary

NAME = "labttff"
HELP = "first frame through the NAT lab: direct (srflx) and relayed (TURN), CLI and Chromium"
SMOKE = ["--trials", "1", "--width", "320", "--height", "240"]
NEEDS = ["root", "turnserver", "nft", "chromium"]
# Brings up the NAT lab (one per machine): its smoke test runs with the lab tests.
USES_LAB = True

CAMERA_SITE = "port-restricted"
CELLS = ("port-restricted:port-restricted-2", "port-restricted:symmetric",
         "port-restricted:udp-blocked")
KINDS = {"cli_before": "CLI before", "cli": "CLI", "chromium_before": "Chromium, before",
         "chromium": "Chromium"}
"""Viewer kinds, in table order; ``cli_before`` (see :func:`cli_trials`) only with
``--before`` or ``--kinds``, ``chromium_before`` (the camera restarted with
:data:`CAMERA_BEFORE`) only with ``--kinds``."""
CAMERA_BEFORE = ["--join-asks-again"]
"""``chromium_before``'s camera: a viewer whose connection comes up before the IDR its
offer asked for asks for a second one (camera.broadcaster.JOIN_TAKES_ASKED_IDR)."""
BEFORE_IS = ("the camera asking for a second IDR when the connection comes up before "
             "the one the offer asked for (`--join-asks-again`)")
"""What ``chromium_before`` was in a run (stored with its results, shown on the page)."""
BEFORE_IS_E22BAE9 = (
    "the page as of `e22bae9` and the camera without rules 5 and 6 of `camera/ice.py` "
    "(`--ice-before`: a trickled candidate checked at a later 20 ms pacing tick, the answer "
    "sent as soon as it is made)")
"""``chromium_before`` in runs that did not store what it was (before ``BEFORE_IS``)."""
TARGET_DIRECT_MS = 150.0
TARGET_RELAYED_MS = 400.0
TARGET_DIRECT_P95_MS = 250.0
"""Chromium on the direct path: the p95 goal beside the p50 one."""
DIAG_ENV = "PEERCAM_LABTTFF_DIAG"
"""Set (by ``--diag``): Chromium trials also record :data:`DIAG_SCRIPT`'s findings."""
DIAG_SCRIPT = """(() => {
  // Every peer connection the page makes: its ICE events and, polled every 10 ms
  // for 5 s, when each candidate pair first sent a check, got an answer, was
  // checked by the peer, changed state, was nominated. Times: ms since epoch.
  const Base = window.RTCPeerConnection;
  const now = () => Math.round((performance.timeOrigin + performance.now()) * 10) / 10;
  window.__pcdiag = [];
  window.RTCPeerConnection = class extends Base {
    constructor(...args) {
      super(...args);
      const rec = { created: now(), events: [], pairs: {}, candidates: {} };
      window.__pcdiag.push(rec);
      const ev = (what, detail) => rec.events.push([now(), what, detail]);
      this.addEventListener("icecandidate",
        (e) => ev("candidate", e.candidate ? e.candidate.candidate : null));
      this.addEventListener("icegatheringstatechange",
        () => ev("gathering", this.iceGatheringState));
      this.addEventListener("iceconnectionstatechange", () => ev("ice", this.iceConnectionState));
      this.addEventListener("connectionstatechange", () => ev("connection", this.connectionState));
      const origSRD = this.setRemoteDescription.bind(this);
      this.setRemoteDescription = (d) => { ev("setRemote", d && d.type); return origSRD(d); };
      const origSLD = this.setLocalDescription.bind(this);
      this.setLocalDescription = (d) => { ev("setLocal", d && d.type); return origSLD(d); };
      const origAdd = this.addIceCandidate.bind(this);
      this.addIceCandidate = (c) => { ev("addRemote", c && c.candidate); return origAdd(c); };
      const poll = setInterval(async () => {
        if (this.connectionState === "closed" || now() - rec.created > 5000) {
          clearInterval(poll);
          return;
        }
        let stats;
        try { stats = await this.getStats(); } catch (_) { return; }
        const t = now();
        stats.forEach((r) => {
          if (r.type === "local-candidate" || r.type === "remote-candidate") {
            const side = r.type === "local-candidate" ? "L" : "R";
            rec.candidates[r.id] =
              `${side} ${r.candidateType} ${r.protocol} ${r.address}:${r.port}`;
          }
        });
        stats.forEach((r) => {
          if (r.type !== "candidate-pair") return;
          const p = rec.pairs[r.id] || (rec.pairs[r.id] = {
            local: rec.candidates[r.localCandidateId], remote: rec.candidates[r.remoteCandidateId],
            seen: t, states: [] });
          const last = p.states[p.states.length - 1];
          if (!last || last[1] !== r.state) p.states.push([t, r.state]);
          if (r.requestsSent > 0 && !p.firstSent) p.firstSent = t;
          if (r.responsesReceived > 0 && !p.firstResponse) p.firstResponse = t;
          if (r.requestsReceived > 0 && !p.firstRequestIn) p.firstRequestIn = t;
          if (r.nominated && !p.nominated) p.nominated = t;
          p.requestsSent = r.requestsSent;
          p.requestsReceived = r.requestsReceived;
          p.responsesReceived = r.responsesReceived;
        });
      }, 10);
    }
  };
})();"""
WAIT_FOR_FRAME = """new Promise((resolve) => {
  const t = setInterval(() => {
    if (window.peercam && window.peercam.ttffMs > 0) { clearInterval(t); resolve(); }
  }, 20);
})"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=20,
                   help="per cell, viewer kind and round")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of every viewer kind, alternating ABBA (same-run comparisons "
                        "on a machine whose load drifts)")
    p.add_argument("--cells", default=",".join(CELLS),
                   help="CAMERA_SITE:VIEWER_SITE,… (one camera site for all cells)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--gap", type=float, default=1.0,
                   help="seconds between trials (the camera's keyframe limiter is 2/s)")
    p.add_argument("--no-chromium", action="store_true", help="CLI viewer only")
    p.add_argument("--kinds", default=None,
                   help="viewer kinds to run, comma-separated, from: " + ", ".join(KINDS)
                        + " (default: cli and chromium; cli_before with --before)")
    p.add_argument("--diag", action="store_true",
                   help="record where each Chromium trial's time goes: the page's ICE events "
                        "and candidate-pair stats (polled), the camera's ICE debug log")
    p.add_argument("--before", action="store_true",
                   help="also run the CLI viewer as it was before its fast UDP-blocked "
                        "test and max-bundle offers (in the same run, for comparison)")


# -- the lab with servers and one camera, shared with bench/relay.py ----------------


def need_lab(chromium: bool) -> None:
    """Fail loudly, before anything starts, if the lab cannot run here."""
    need_root("the NAT lab")
    sys.path.insert(0, str(ROOT))
    from tests.services.coturn import TURNSERVER

    need_executable(TURNSERVER, "apt install coturn; scripts/setup --test installs it")
    need_executable("nft", "apt install nftables; scripts/setup --test installs it")
    if chromium:
        need_executable(CHROMIUM, "scripts/setup --test installs it")
        with contextlib.suppress(ImportError):
            import playwright  # noqa: F401

            return
        raise Missing("playwright", "scripts/setup --test installs it")


def path_of(local: str | None, remote: str | None) -> str:
    """``direct``, ``relay`` or ``none`` (no pair was reported)."""
    if local is None and remote is None:
        return "none"
    return "relay" if "relay" in (local, remote) else "direct"


def expected_direct(camera: str, viewer: str) -> bool:
    """Does a direct path exist between these two lab sites (tests/lab/matrix.py)?"""
    from services.natlab.paths import direct_possible

    kind_a, kind_b = camera.removesuffix("-2"), viewer.removesuffix("-2")
    if camera != viewer and kind_a == kind_b and kind_a != "ipv6":
        # Two LANs behind NATs of one kind (not the same LAN): hole punching
        # works unless the kind is symmetric or blocks UDP.
        return kind_a not in ("symmetric", "udp-blocked")
    return direct_possible(camera, viewer)


class LabRun:
    """The NAT lab up, the matrix's servers on its public segment, one bench camera.

    ``async with LabRun(...) as run:``; leaving it stops the camera and the
    servers and brings the lab down, on errors and on SIGTERM too.
    """

    def __init__(self, camera_site: str, viewer_sites: list[str], state: Path, *,
                 width: int, height: int, bitrate: int,
                 camera_args: list[str] | None = None) -> None:
        self.camera_site = camera_site
        self.sites = list(dict.fromkeys([camera_site, *viewer_sites]))
        self.state = state
        self.width, self.height, self.bitrate = width, height, bitrate
        self.camera_args = list(camera_args or [])
        """More arguments for the camera (``bench _camera``): a variant's settings."""
        self.lab: Any = None
        self.matrix: Any = None
        self.camera: subprocess.Popen[str] | None = None
        self.device_id = ""
        self.pair_secret = ""
        self.lab_up_s = 0.0
        self.terminated = False
        self.camera_extra: list[str] = []
        """Arguments added by the last :meth:`restart_camera` (a variant in the same lab)."""
        self._logs: set[str] = set()

    @property
    def rendezvous(self) -> str:
        from tests.lab.matrix import RENDEZVOUS

        return RENDEZVOUS

    def link(self, pair: bool = False) -> str:
        base = self.rendezvous.replace("ws://", "http://")
        link = f"{base}/#device={self.device_id}"
        return f"{link}&pair={self.pair_secret}" if pair else link

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = self.matrix.env
        return env

    async def __aenter__(self) -> LabRun:
        from services.natlab import Lab
        from tests.lab.matrix import Matrix

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is not None:  # SIGTERM: unwind through __aexit__, bring the lab down
            loop.add_signal_handler(signal.SIGTERM, self._terminate, task)
        self.state.mkdir(parents=True, exist_ok=True)
        self.lab = Lab(sites=self.sites)
        try:
            await loop.run_in_executor(None, self.lab.up)
            self.lab_up_s = self.lab.up_seconds or 0.0
            self.matrix = Matrix(self.lab, self.state, sites=())
            await loop.run_in_executor(None, self.matrix.start)
            await self._start_camera()
        except BaseException:
            await self.close()
            if self.terminated:
                raise SystemExit("bench: stopped by SIGTERM; the lab is down") from None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        if self.terminated:
            raise SystemExit("bench: stopped by SIGTERM; the lab is down; nothing was measured")

    def _terminate(self, task: asyncio.Task[Any]) -> None:
        self.terminated = True
        task.cancel()

    async def restart_camera(self, extra: list[str], log: str) -> None:
        """Stop the camera and start it again with ``extra`` arguments (same identity,
        a new pairing secret), its stderr to ``log``: a variant in the same lab."""
        await self._stop_camera()
        await self._start_camera(extra, log)

    async def _stop_camera(self) -> None:
        if self.camera is not None and self.camera.poll() is None:
            if self.camera.stdin:
                with contextlib.suppress(OSError):
                    self.camera.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.get_running_loop().run_in_executor(None, self.camera.wait, 10)
            if self.camera.poll() is None:
                self.camera.kill()
                await asyncio.get_running_loop().run_in_executor(None, self.camera.wait, 10)

    async def _start_camera(self, extra: list[str] | None = None,
                            log_name: str = "camera.log") -> None:
        self.camera_extra = list(extra or [])
        log = (self.state / log_name).open("a" if log_name in self._logs else "w")
        self._logs.add(log_name)
        self.camera = self.lab.popen(
            self.camera_site,
            [sys.executable, "-m", "bench", "_camera", "--any-address",
             "--rendezvous", self.rendezvous, "--state-dir", str(self.state / "camera"),
             "--width", str(self.width), "--height", str(self.height),
             "--bitrate", str(self.bitrate), *self.camera_args, *self.camera_extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=self.env)
        assert self.camera.stdout is not None
        loop = asyncio.get_running_loop()
        lines = []
        for _ in range(2):
            try:
                line = await asyncio.wait_for(
                    loop.run_in_executor(None, self.camera.stdout.readline), 60)
            except TimeoutError:
                line = ""
            lines.append(line)
            if not line.startswith(("DEVICE ", "PAIR ")):
                raise SystemExit(f"bench: the lab camera at {self.camera_site} did not start: "
                                 f"{self.log(log_name)}")
        self.device_id = lines[0].split()[1]
        self.pair_secret = lines[1].split()[1]

    def log(self, name: str) -> str:
        path = self.state / name
        return path.read_text()[-1500:] if path.exists() else "(no log)"

    @property
    def camera_pid(self) -> int:
        assert self.camera is not None
        return self.camera.pid

    async def json_lines(self, site: str, argv: list[str], timeout: float,
                         log: str) -> list[dict[str, Any]]:
        """Run ``argv`` behind ``site``; every JSON line it printed (stderr to ``log``)."""
        with (self.state / log).open("w") as err:
            proc = self.lab.popen(site, argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                  cwd=ROOT, env=self.env)
            loop = asyncio.get_running_loop()
            try:
                out, _ = await asyncio.wait_for(
                    loop.run_in_executor(None, proc.communicate), timeout)
            except TimeoutError:
                proc.kill()
                out, _ = await loop.run_in_executor(None, proc.communicate)
        rows = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
        return rows

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        await self._stop_camera()
        if self.matrix is not None:
            await loop.run_in_executor(None, self.matrix.stop)
        if self.lab is not None:
            await loop.run_in_executor(None, self.lab.down)


# -- the benchmark ----------------------------------------------------------------


def parse_cells(text: str) -> list[tuple[str, str]]:
    cells = []
    for item in text.split(","):
        camera, sep, viewer = item.strip().partition(":")
        if not sep or not camera or not viewer:
            raise SystemExit(f"bench: --cells wants CAMERA:VIEWER items, not {item!r}")
        cells.append((camera, viewer))
    if len({c for c, _ in cells}) != 1:
        raise SystemExit("bench: every --cells item must name the same camera site")
    return cells


def select_kinds(args: argparse.Namespace) -> list[str]:
    """The viewer kinds to run, in table order."""
    if args.kinds:
        wanted = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in KINDS]
        if unknown or not wanted:
            raise SystemExit(f"bench: --kinds wants items of {', '.join(KINDS)}, "
                             f"not {args.kinds!r}")
        return [k for k in KINDS if k in wanted]
    kinds = ["cli"] if args.no_chromium else ["cli", "chromium"]
    if args.before:
        kinds.insert(0, "cli_before")
    return kinds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = select_kinds(args)
    need_lab(chromium=any(k.startswith("chromium") for k in kinds))
    if args.diag:
        os.environ[DIAG_ENV] = "1"
        os.environ.setdefault("PEERCAM_BENCH_DEBUG", "aioice.ice,camera.session,camera.agent")
    cells = parse_cells(args.cells)
    camera_site = cells[0][0]
    timeout = 60 + args.trials * (args.gap + 25)
    out: list[dict[str, Any]] = []
    async with LabRun(camera_site, [v for _, v in cells], Path(args.state) / NAME,
                      width=args.width, height=args.height, bitrate=args.bitrate) as lab:
        for camera, viewer in cells:
            cell: dict[str, Any] = {
                "camera": camera, "viewer": viewer,
                "expected": "direct" if expected_direct(camera, viewer) else "relay",
                "turn_transport": "tcp" if viewer.startswith("udp-blocked") else "udp",
            }
            raw: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            for round_ in range(args.rounds):
                # ABBA: each variant as often first as second, one camera restart per switch.
                for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
                    want = CAMERA_BEFORE if kind == "chromium_before" else []
                    if want != lab.camera_extra:
                        await lab.restart_camera(
                            want, "camera-before.log" if want else "camera.log")
                    trials = await lab.json_lines(
                        viewer,
                        [sys.executable, "-m", "bench.labttff", kind, lab.link(pair=True),
                         str(args.trials), str(args.gap)],
                        timeout, f"{kind}-{viewer}.log")
                    if not trials:
                        raise SystemExit(f"bench: the {kind} viewer behind {viewer} reported "
                                         f"nothing: {lab.log(f'{kind}-{viewer}.log')}")
                    raw[kind] += [{**t, "round": round_} for t in trials]
            for kind in kinds:
                cell[kind] = describe(raw[kind], cell["expected"])
                print(json.dumps({"cell": f"{camera}→{viewer}", "viewer": kind,
                                  **cell[kind]["summary"]}), flush=True)
            out.append(cell)
        lab_up = lab.lab_up_s
    from camera.ice import DEFAULT_GRACE

    return {"video": f"{args.width}x{args.height}@30 {args.bitrate / 1e6:g} Mbit/s",
            "trials": args.trials * args.rounds, "rounds": args.rounds,
            "lab_up_s": round(lab_up, 2), "cells": out,
            "relay_grace_s": DEFAULT_GRACE, "before_is": BEFORE_IS,
            "targets_ms": {"direct": TARGET_DIRECT_MS, "relay": TARGET_RELAYED_MS}}


def describe(trials: list[dict[str, Any]], expected: str) -> dict[str, Any]:
    """Raw trials, the pair types seen, and p50/p95 over the trials with video."""
    for t in trials:
        t["path"] = path_of(t.get("local"), t.get("remote"))
    ok = [t["ttff_ms"] for t in trials if t.get("ttff_ms") is not None]
    pairs: dict[str, int] = {}
    for t in trials:
        key = f"{t.get('local')}→{t.get('remote')}"
        pairs[key] = pairs.get(key, 0) + 1
    waits = [t["relay_wait_ms"] for t in trials if t.get("relay_wait_ms") is not None]
    return {
        "trials": trials,
        "pairs": pairs,
        "relay_wait_ms_p50": round(statistics.median(waits), 1) if waits else None,
        "on_expected_path": sum(1 for t in trials if t["path"] == expected),
        "failed": sum(1 for t in trials if t.get("ttff_ms") is None),
        "pairing_p50": (round(statistics.median(pairing), 1)
                        if (pairing := [t["pairing_ttff_ms"] for t in trials
                                        if t.get("pairing_ttff_ms") is not None]) else None),
        "summary": summary(ok) if ok else {"n": 0},
    }


def _label(cell: dict[str, Any]) -> str:
    how = "direct" if cell["expected"] == "direct" else f"relayed ({cell['turn_transport']})"
    return f"{how}: {cell['camera']} → {cell['viewer']}"


def headline(result: dict[str, Any]) -> str:
    parts = []
    for cell in result["cells"]:
        figures = []
        for kind in KINDS:
            if kind in cell:
                s = cell[kind]["summary"]
                figures.append(f"{KINDS[kind]} p50 "
                               f"{s.get('p50', 'n/a')} ms")
                off = len(cell[kind]["trials"]) - cell[kind]["on_expected_path"]
                if off:
                    figures[-1] += f" (⚠ {off} off-path)"
        parts.append(f"{_label(cell)} " + ", ".join(figures))
    return "labttff: " + "; ".join(parts) + (
        f" (targets p50 ≤ {TARGET_DIRECT_MS:.0f} direct, ≤ {TARGET_RELAYED_MS:.0f} relayed)")


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    data, labels = [], []
    for cell in result["cells"]:
        for kind in KINDS:
            ms = [t["ttff_ms"] for t in cell.get(kind, {}).get("trials", [])
                  if t.get("ttff_ms") is not None]
            if ms:
                data.append(ms)
                labels.append(f"{KINDS[kind]}\n"
                              f"{cell['viewer']} ({cell['expected']})")
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.7 * len(data)))
    ax.boxplot(data, tick_labels=labels, orientation="horizontal")
    for x, name in ((TARGET_DIRECT_MS, "direct target"), (TARGET_RELAYED_MS, "relayed target")):
        ax.axvline(x, linestyle="--", color="grey", linewidth=1)
        ax.text(x, len(data) + 0.45, name, fontsize=7, ha="center")
    ax.set_xlabel(f"time to first frame (ms), NAT lab, camera behind "
                  f"{result['cells'][0]['camera']}")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "labttff.png", dpi=100)
    plt.close(fig)
    return ["labttff.png"]


PHASES = (
    ("offer", "start → offer sent"),
    ("answer", "offer → answer"),
    ("ice", "answer → ICE connected"),
    ("dtls", "ICE → DTLS done"),
    ("frame", "connected → first frame"),
)
"""The paired page's phases, from its timeline marks and (``--diag``) its ICE events."""


def phases(trial: dict[str, Any]) -> dict[str, float]:
    """One Chromium trial's time by phase (ms); without ``--diag`` ICE and DTLS are one."""
    t = trial.get("timeline") or {}
    out: dict[str, float] = {}
    if "offer" in t:
        out["offer"] = t["offer"]
    if "offer" in t and "answer" in t:
        out["answer"] = t["answer"] - t["offer"]
    events = {}
    pcs = (trial.get("diag") or {}).get("pcs") or []
    for at, what, detail in (pcs[-1]["events"] if pcs else []):
        events.setdefault(f"{what}:{detail}", at)
    ice, dtls = events.get("ice:connected"), events.get("connection:connected")
    if "answer" in t and pcs and ice is not None and dtls is not None:
        # The page's clock starts ~1 ms before it makes its peer connection.
        out["ice"] = round(ice - pcs[-1]["created"] - t["answer"], 1)
        out["dtls"] = round(dtls - ice, 1)
    elif "answer" in t and "connected" in t:
        out["ice"] = t["connected"] - t["answer"]
    if "connected" in t and "firstFrame" in t:
        out["frame"] = max(0, t["firstFrame"] - t["connected"])
    return out


def breakdown(result: dict[str, Any]) -> list[str]:
    """Where the paired page's time goes, per cell and Chromium kind (p50 of each phase)."""
    rows = []
    for cell in result["cells"]:
        for kind in ("chromium_before", "chromium"):
            trials = [t for t in cell.get(kind, {}).get("trials", [])
                      if t.get("ttff_ms") is not None]
            split = [phases(t) for t in trials]
            if not split:
                continue
            p50 = [statistics.median(v) if (v := [x[k] for x in split if k in x]) else None
                   for k, _ in PHASES]
            rows.append(f"| {_label(cell)} | {KINDS[kind]} | " + " | ".join(
                "—" if v is None else f"{v:.0f}" for v in p50)
                + f" | {cell[kind]['summary']['p50']} |")
    if not rows:
        return []
    return ["", "Where the paired page's time goes (p50 of each phase over the trials, ms; "
            "the phases' p50s need not add up to the total's):", "",
            "| cell | viewer | " + " | ".join(name for _, name in PHASES) + " | total p50 |",
            "|---|---|" + "---|" * (len(PHASES) + 1), *rows]


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "## First frame through the NAT lab",
        "",
        f"A bench camera ({result['video']}) behind one lab NAT, viewers behind others,",
        "real kernel NATs in network namespaces, coturn, our STUN server and the",
        "rendezvous on the lab's public segment (`tests/lab/matrix.py`). Each trial records",
        "the pair the viewer selected (local → remote); a trial counts as on its path when",
        "that pair is relayed exactly where no direct path exists. Targets: p50 ≤ "
        f"{TARGET_DIRECT_MS:.0f} ms direct, ≤ {TARGET_RELAYED_MS:.0f} ms relayed.",
        "",
        "| cell | viewer | trials | on path | pairs seen | p50 ms | p95 ms | min | max "
        "| target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"]:
        target = TARGET_DIRECT_MS if cell["expected"] == "direct" else TARGET_RELAYED_MS
        for kind, label in KINDS.items():
            if kind not in cell:
                continue
            c = cell[kind]
            s = c["summary"]
            pairs = ", ".join(f"{k} ×{v}" for k, v in c["pairs"].items())
            met = "—" if not s.get("n") else ("yes" if s["p50"] <= target else "no")
            lines.append(
                f"| {_label(cell)} | {label} | {len(c['trials'])} | "
                f"{c['on_expected_path']}/{len(c['trials'])} | {pairs} | {s.get('p50', '—')} "
                f"| {s.get('p95', '—')} | {s.get('min', '—')} | {s.get('max', '—')} | {met} |")
    paired_rows = any("pairing_ttff_ms" in t for cell in result["cells"]
                      for t in cell.get("chromium", {}).get("trials", []))
    for cell, kind in ((cell, kind) for cell in result["cells"]
                       for kind in ("chromium_before", "chromium")):
        c = cell.get(kind)
        if not paired_rows or not c or not c["summary"].get("n"):
            continue
        s = c["summary"]
        line = (f"{KINDS[kind]}, {_label(cell)}: the paired page p50 {s['p50']} ms, "
                f"p95 {s['p95']} ms")
        if cell["expected"] == "direct":
            misses = []
            if s["p50"] > TARGET_DIRECT_MS:
                misses.append(f"p50 by {round(s['p50'] - TARGET_DIRECT_MS, 1)} ms")
            if s["p95"] > TARGET_DIRECT_P95_MS:
                misses.append(f"p95 by {round(s['p95'] - TARGET_DIRECT_P95_MS, 1)} ms")
            line += (f" against ≤ {TARGET_DIRECT_MS:.0f} / ≤ {TARGET_DIRECT_P95_MS:.0f} ms: "
                     + ("met" if not misses else "MISSED, " + " and ".join(misses)))
        if c.get("pairing_p50") is not None:
            line += (f"; the pairing visit before it (clock from after pairing) p50 "
                     f"{c['pairing_p50']} ms")
        lines += ["", line + "."]
    lines += breakdown(result)
    compared = [c for c in result["cells"]
                if c.get("chromium_before", {}).get("summary", {}).get("n")
                and c.get("chromium", {}).get("summary", {}).get("n")]
    if compared:
        ratios = "; ".join(
            f"{_label(c)}: p50 {c['chromium_before']['summary']['p50']} → "
            f"{c['chromium']['summary']['p50']} ms, p95 "
            f"{c['chromium_before']['summary']['p95']} → {c['chromium']['summary']['p95']} ms"
            for c in compared)
        rounds = result.get("rounds") or 1
        lines += ["", "\"Chromium, before\" is " + result.get("before_is", BEFORE_IS_E22BAE9)
                  + ", in the same lab and run as today's"
                  + (f", the two alternating in {rounds} rounds (ABBA)" if rounds > 1 else "")
                  + ". Before → now: " + ratios + "."]
    lines += [line for note in result.get("notes", []) for line in ("", note)]
    waits = [f"{_label(c)}: {c['cli']['relay_wait_ms_p50']} ms" for c in result["cells"]
             if c.get("cli", {}).get("relay_wait_ms_p50") is not None]
    if waits:
        lines += ["", "How long the CLI viewer's relay pair waited, after it answered, for a "
                  "direct pair that could still win (p50): " + "; ".join(waits) + "."]
    before = [c for c in result["cells"] if c.get("cli_before", {}).get("summary", {}).get("n")
              and c.get("cli", {}).get("summary", {}).get("n")]
    if before:
        ratios = "; ".join(
            f"{_label(c)}: {c['cli_before']['summary']['p50']} → {c['cli']['summary']['p50']} ms"
            for c in before)
        lines += ["", "\"CLI before\" is the CLI viewer as it was before two changes, run in "
                  "the same lab, one viewer process after the other: it learnt that UDP is "
                  "blocked only from 0.75 s of silence from the STUN server (now: the TURN "
                  "server's TCP port answers a STUN Binding while UDP, asked twice, has not "
                  "answered; `camera/client/udpcheck.py`), and its offers had one transport "
                  "per m-line (two gatherings, two TURN allocations, the second one deleted, a "
                  "round trip to the TURN server, when the answer bundles the media, before "
                  "the checks start; now max-bundle). p50 before → now: " + ratios + ". The "
                  "machine (2 cores) is shared with other engineers' builds and benchmarks: "
                  "compare rows of one run, not runs."]
    lines += [
        "",
        "The lab's links have no propagation delay: these figures are what the",
        "software costs (from a site that blocks UDP, the test that finds it out;",
        "candidate gathering including the TURN allocation, checks,",
        "the relay grace, DTLS, the first IDR), not what a long path adds. The CLI",
        "viewer nominates (it controls ICE) and takes a relay pair only once no direct",
        f"pair can still win, at most {result['relay_grace_s']} s after the relay pair "
        "answered",
        "(`camera/ice.py`); Chromium applies its own nomination. Relayed (tcp) is TURN",
        "over TCP on port 443 from a site that blocks UDP. Each Chromium trial is a",
        *(["fresh profile that pairs first, then opens the page again, already paired: that",
           "second visit is the trial's figure, timed from the page starting its connection."]
          if paired_rows else
          ["fresh profile that pairs first (untimed; the clock starts after pairing)."]),
        "",
        "![first frame through the NAT lab](bench/labttff.png)",
        "",
    ]
    return lines


# -- the viewer side, inside a lab namespace ------------------------------------------


def strip_pair(link: str) -> str:
    url = urllib.parse.urlsplit(link)
    params = urllib.parse.parse_qs(url.fragment)
    params.pop("pair", None)
    return urllib.parse.urlunsplit(url._replace(fragment=urllib.parse.urlencode(
        {k: v[0] for k, v in params.items()})))


class RelayWait(logging.Handler):
    """How long the viewer's relay pair waited for a direct one (camera/compat/ice.py logs
    it, as ``camera.ice``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ms: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("ICE: nominating relay pair") and len(record.args or ()) > 1:
            self.ms = float(record.args[1])  # type: ignore[index]


async def cli_trials(link: str, trials: int, gap: float,
                     before: bool = False) -> AsyncIterator[dict[str, Any]]:
    from camera.client import viewer
    from camera.client.viewer import ViewError, view

    if before:
        # The comparison variant, the CLI viewer as it was: UDP blocked only after
        # 0.75 s of silence from the STUN server (camera.webrtc.udp_blocked), and
        # offers with one transport per m-line (aiortc's balanced bundle policy).
        from camera.webrtc import make_peer_connection, udp_blocked

        def balanced(servers: list[dict[str, Any]], *, max_bundle: bool = False) -> Any:
            return make_peer_connection(servers)

        viewer.udp_blocked = udp_blocked
        viewer.make_peer_connection = balanced

    wait = RelayWait()
    ice_log = logging.getLogger("camera.ice")
    ice_log.addHandler(wait)
    ice_log.setLevel(logging.INFO)
    await view(link, seconds=0.2)  # pair this key and warm up, untimed
    for _ in range(trials):
        await asyncio.sleep(gap)
        wait.ms = None
        try:
            stats = await view(strip_pair(link), seconds=0.3)
        except (ViewError, OSError, TimeoutError) as exc:
            yield {"ttff_ms": None, "error": str(exc)}
            continue
        yield {"ttff_ms": None if stats.ttff_ms is None else round(stats.ttff_ms, 1),
               "local": stats.local_candidate, "remote": stats.remote_candidate,
               "remote_address": stats.remote_address, "frames": stats.frames,
               "relay_wait_ms": None if wait.ms is None else round(wait.ms, 1)}


async def chromium_trials(link: str, trials: int, gap: float) -> AsyncIterator[dict[str, Any]]:
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT))
    from tests.browser.conftest import CHROMIUM_ARGS

    origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(link))
    # The lab serves plain http on a "public" address: let the page have WebCrypto.
    argv = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
    diag = bool(os.environ.get(DIAG_ENV))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=argv)
        try:
            for _ in range(trials):
                await asyncio.sleep(gap)
                # Fresh; waits use eval. No service worker (its clock starts after the
                # page loaded either way).
                context = await browser.new_context(bypass_csp=True, service_workers="block")
                if diag:
                    await context.add_init_script(DIAG_SCRIPT)
                try:
                    # The visit that pairs from the link (timed from after pairing), then
                    # the page already paired in a new tab (timed from its connection's
                    # start): the second is the trial's figure and path.
                    pairing: float | None = None
                    for target in (link, strip_pair(link)):
                        page = await context.new_page()
                        await page.goto(target)
                        try:
                            await asyncio.wait_for(page.evaluate(WAIT_FOR_FRAME), 30)
                        except Exception as exc:  # report what the page knew
                            state = await page.evaluate("({...window.peercam})")
                            yield {"ttff_ms": None,
                                   "error": (str(exc) or type(exc).__name__).splitlines()[0],
                                   "local": state.get("localCandidateType"),
                                   "remote": state.get("remoteCandidateType")}
                            break
                        if target == link:
                            pairing = float(await page.evaluate("window.peercam.ttffMs"))
                            await page.close()  # its bye frees the session
                            await asyncio.sleep(gap)
                            continue
                        # The pair types arrive with the next stats poll after the first frame.
                        with contextlib.suppress(Exception):
                            await page.wait_for_function(
                                "window.peercam.localCandidateType !== null", timeout=3_000)
                        p = await page.evaluate("({...window.peercam})")
                        extra: dict[str, Any] = {}
                        if diag:
                            extra["diag"] = await page.evaluate(
                                "({origin: performance.timeOrigin, pcs: window.__pcdiag, "
                                "at: performance.timeOrigin + performance.now()})")
                        yield {**extra, "ttff_ms": float(p["ttffMs"]), "pairing_ttff_ms": pairing,
                               "local": p.get("localCandidateType"),
                               "remote": p.get("remoteCandidateType"),
                               "remote_address": p.get("remoteAddress"),
                               "timeline": p.get("timeline")}
                finally:
                    await context.close()
        finally:
            await browser.close()


async def _viewer_main(kind: str, link: str, trials: int, gap: float) -> None:
    started = time.monotonic()
    source = (chromium_trials(link, trials, gap) if kind.startswith("chromium")
              else cli_trials(link, trials, gap, before=kind == "cli_before"))
    async for row in source:
        print(json.dumps({**row, "at_s": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if len(sys.argv) != 5 or sys.argv[1] not in KINDS:
        sys.exit("usage: python -m bench.labttff " + "|".join(KINDS) + " LINK TRIALS GAP")
    asyncio.run(_viewer_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
