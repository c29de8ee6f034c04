"""The NAT matrix: a camera behind each kind of lab NAT, a CLI viewer behind a
second NAT of each kind ("KIND-2"), so every cell, the diagonal included, is two
different NATs in two different sites.

Used by tests/lab/test_matrix.py (assertions) and scripts/nat-matrix (writes
docs/nat-matrix.md and docs/nat-matrix.png). Everything runs as real
processes inside the lab's namespaces: the rendezvous, our STUN server and
coturn on the server host (two public addresses), one `peercam camera` per
site, one `peercam view` per cell.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from camera.acl import ViewerACL
from camera.client.viewer import ViewerIdentity
from services.natlab.lab import Lab
from services.natlab.paths import direct_possible, direct_with_prediction, site_kind, v4_kind
from tests.services.coturn import TURNSERVER, make_userdb, policy_lines

SITES = ("open", "full-cone", "restricted", "port-restricted", "symmetric", "symmetric-seq",
         "ipv6", "udp-blocked")
"""The camera sites, one per kind of NAT."""


def twin(site: str) -> str:
    """The second site of ``site``'s kind, where the matrix puts its viewers."""
    return f"{site}-2"


VIEWER_SITES = tuple(twin(site) for site in SITES)
"""The viewer sites: a second, different NAT of each kind."""
SERVER = "203.0.113.1"
SERVER2 = "203.0.113.2"
RENDEZVOUS = f"ws://{SERVER}:8080"
PEERCAM = [sys.executable, "-m", "camera.cli", "--log-level", "INFO"]
TURN_PORTS = "3478, 443, 49152-65535"
"""coturn's listening ports and its relay range: on the lab's server host nothing
else uses them (the rendezvous is on 8080, STUN on 3479-3480)."""
TURN_METER = f"""table inet peercam_turn_meter {{
    counter turn_in {{ }}
    counter turn_out {{ }}
    chain input {{
        type filter hook input priority -300; policy accept;
        meta l4proto {{ udp, tcp }} th dport {{ {TURN_PORTS} }} counter name turn_in
    }}
    chain output {{
        type filter hook output priority -300; policy accept;
        meta l4proto {{ udp, tcp }} th sport {{ {TURN_PORTS} }} counter name turn_out
    }}
}}
"""
"""Counts every byte into and out of coturn on the server host (IP headers included):
what the relays cost, measured where a TURN operator pays for it. A packet relayed
from one allocation to another on the same server is counted at each hop."""
PLAIN_CONFIG = "[camera]\nport_prediction = false\ndirect_upgrade = false\nice_tcp = false\n"
"""The camera as plain ICE leaves it: no predicted candidates, no punching, no
background checks after a relay, UDP candidates only (``peercam view
--no-port-prediction --no-direct-upgrade --no-ice-tcp`` for the viewer)."""


BROWSER_SETTLE = 10.0
"""Seconds a Chromium cell that should be direct may take to move off a relay it
nominated first (its own ICE, not peercam's, decides when)."""

LATER_SECONDS = 60.0
"""How long each later session watches a cell that was relayed at its first frame."""


def trials_from_env() -> int:
    """``PEERCAM_MATRIX_TRIALS``: later sessions per relayed cell (default 1)."""
    value = int(os.environ.get("PEERCAM_MATRIX_TRIALS", "1"))
    if value < 1:
        raise ValueError(f"PEERCAM_MATRIX_TRIALS={value}: need at least 1")
    return value


def udp_blocked_cell(camera: str, viewer: str) -> bool:
    """No UDP leaves one of the two sites: only TCP (TURN over TCP, ICE-TCP) gets through."""
    return "udp-blocked" in (site_kind(camera), site_kind(viewer))


@dataclass
class Trial:
    """One later session of a cell that was relayed at its first frame."""

    seconds: float
    """How long it watched, from its first frame."""
    frames: int = 0
    first_direct: bool = False
    """Its first frame came over a direct pair this time (then ``moved_after_s`` is 0)."""
    moved_after_s: float | None = None
    """Seconds from its first frame to when the viewer saw the move off the relay."""
    direct_at_end: bool = False
    """Its pair when the viewer left was direct."""
    move_gap_ms: float | None = None
    """The longest frame gap within a second either side of the move (``peercam view
    --json``'s ``move_gap_ms``)."""
    max_gap_ms: float | None = None
    """The longest frame gap of the whole session, for comparison."""
    load1: float | None = None
    """The machine's 1-minute load average when the session ended."""
    error: str | None = None

    def direct_by(self, seconds: float) -> bool:
        """Moved to (or started on) a direct path within ``seconds`` of its first
        frame, and was still direct when it ended."""
        return (self.frames > 0 and self.direct_at_end and self.moved_after_s is not None
                and self.moved_after_s <= seconds)


@dataclass
class Cell:
    camera: str
    viewer: str
    expected_direct: bool
    frames: int = 0
    ttff_ms: float | None = None
    local_candidate: str | None = None
    remote_candidate: str | None = None
    remote_address: str | None = None
    transport: str | None = None
    """"tcp" where the first frame's pair was ICE over TCP (CLI viewers report it)."""
    settled_ms: int | None = None
    """A Chromium cell: how long after its first look its page moved off the relay it
    nominated first (None: it never was on one, or never left it)."""
    error: str | None = None
    relay_bytes: int | None = None
    """What the viewer's transport carried while its session went through the relay
    (``peercam view --json``); 0 where the first frame came directly."""
    relayed_at_end: bool | None = None
    """The session's pair when the viewer left went through the relay."""
    trials: list[Trial] = field(default_factory=list)
    """Relayed at the first frame: the later sessions (``Matrix.run_later``)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        known = {f.name for f in fields(cls)}
        cell = cls(**{k: v for k, v in data.items() if k in known and k != "trials"})
        cell.trials = [Trial(**t) for t in data.get("trials") or []]
        return cell

    @property
    def relayed(self) -> bool:
        return "relay" in (self.local_candidate, self.remote_candidate)

    def direct_share(self, seconds: float) -> float | None:
        """The share of this cell's sessions direct ``seconds`` after their first frame:
        1 where the first frame came directly, 0 without video, else the share of the
        later sessions that were; None where none of them watched that long."""
        if not self.frames:
            return 0.0
        if not self.relayed:
            return 1.0
        watched = [t for t in self.trials if t.seconds >= seconds]
        if not watched:
            return None
        return sum(1 for t in watched if t.direct_by(seconds)) / len(watched)

    def moves(self) -> list[float]:
        """Seconds to the move, over the later sessions that started relayed and moved."""
        return [t.moved_after_s for t in self.trials
                if t.moved_after_s is not None and not t.first_direct and t.direct_at_end]

    @property
    def ok(self) -> bool:
        """Video arrived, directly where a direct path exists and relayed only otherwise."""
        return self.frames > 0 and self.relayed != self.expected_direct


def coturn_config(tmp: Path, secret: str, port: int) -> Path:
    """The shipped coturn policy, deployed on the lab server (UDP and TCP on ``port``)."""
    tmp = tmp / f"coturn-{port}"
    tmp.mkdir(parents=True, exist_ok=True)
    lines = [
        *policy_lines(),
        # The lab's private LANs play the part of 10/8 and 192.168/16, which the
        # shipped policy denies. It matters: coturn 4.6.1 drops a whole allocation
        # when a relay send fails (ENETUNREACH to a peer's private host candidate),
        # and the client's next ChannelBind then gets 438, then 400.
        "denied-peer-ip=198.51.100.0-198.51.100.255",
        "denied-peer-ip=192.0.2.0-192.0.2.255",  # the LANs behind the lab's carriers
        "denied-peer-ip=100.64.0.0-100.127.255.255",  # and the carriers' inside
        f"listening-ip={SERVER}",
        f"relay-ip={SERVER}",
        f"listening-port={port}",
        f"static-auth-secret={secret}",
        "realm=peercam.lab",
        "no-tls",
        "no-dtls",
        "relay-threads=1",
        f"log-file={tmp / 'turnserver.log'}",
        "simple-log",
        "no-stdout-log",
        f"pidfile={tmp / 'turnserver.pid'}",
        f"userdb={make_userdb(tmp / 'turndb')}",
    ]
    path = tmp / "turnserver.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


class Matrix:
    """Servers and one camera per site in a running lab."""

    def __init__(self, lab: Lab, tmp: Path, sites: tuple[str, ...] = SITES,
                 ice_tcp: bool = True) -> None:
        self.lab = lab
        self.ice_tcp = ice_tcp
        """False: cameras and viewers with UDP candidates only (tests of UDP punching)."""
        self.tmp = tmp
        self.sites = sites
        self.procs: list[subprocess.Popen[Any]] = []
        self.devices: dict[str, str] = {}
        self.natcheck: dict[str, dict[str, Any]] = {}
        self.viewer_dir = tmp / "viewer"
        self.env = {**os.environ, "PEERCAM_VIEWER_DIR": str(self.viewer_dir),
                    "PYTHONUNBUFFERED": "1"}
        self.viewers_measured = False
        """``measure_viewers`` ran: the viewer knows each viewer site's NAT."""
        self.plain = False
        """The cameras and viewers run as plain ICE (``use_plain_ice``)."""
        self.cameras: dict[str, subprocess.Popen[Any]] = {}

    def __enter__(self) -> Matrix:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, where: str, argv: list[str], log: str,
               append: bool = False) -> subprocess.Popen[Any]:
        out = (self.tmp / log).open("a" if append else "w")
        proc = self.lab.popen(where, argv, stdout=subprocess.PIPE, stderr=out, text=True,
                              env=self.env)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)

        secret = secrets.token_urlsafe(24)
        secret_file = self.tmp / "turn-secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        # 3478 as usual, and 443 for sites where only TCP gets out (one process each:
        # coturn 4.6.1 opens its alternate port only for RFC 5780 on two addresses).
        for port in (3478, 443):
            self._spawn("server", [TURNSERVER, "-c", str(coturn_config(self.tmp, secret, port))],
                        f"coturn-{port}.log")
        self._spawn("server", [*PEERCAM, "stun", "--listen", "203.0.113.1,203.0.113.2",
                               "--port", "3479", "--alt-port", "3480"], "stun.log")
        rendezvous = self._spawn("server", [
            *PEERCAM, "rendezvous", "--listen", f"{SERVER}:8080",
            "--ice-server", f"stun:{SERVER}:3479",
            "--turn-url", f"turn:{SERVER}:3478?transport=udp",
            "--turn-url", f"turn:{SERVER}:443?transport=tcp",
            "--turn-secret-file", str(secret_file)], "rendezvous.log")
        assert rendezvous.stdout is not None
        if not rendezvous.stdout.readline().startswith("LISTENING"):
            raise RuntimeError(f"rendezvous did not start: {self.log('rendezvous.log')}")
        viewer = ViewerIdentity.load_or_create(self.viewer_dir, name="matrix viewer")
        for site in self.sites:
            ViewerACL(self.tmp / f"camera-{site}").add(viewer.key, viewer.name)  # paired
        self._start_cameras(self.sites)
        self.lab.run("server", ["nft", "-f", "-"], input=TURN_METER)

    def _start_cameras(self, sites: tuple[str, ...], restart: bool = False) -> None:
        started = {}
        for site in sites:
            state = self.tmp / f"camera-{site}"
            argv = [*PEERCAM, "camera", "--rendezvous", RENDEZVOUS, "--state-dir", str(state),
                    "--width", "320", "--height", "240", "--bitrate", "400000"]
            if self.plain:
                config = self.tmp / "plain-camera.toml"
                config.write_text(PLAIN_CONFIG)
                argv += ["--config", str(config)]
            elif not self.ice_tcp:
                config = self.tmp / "udp-camera.toml"
                config.write_text("[camera]\nice_tcp = false\n")
                argv += ["--config", str(config)]
            # A restart appends: the first process's NAT check stays in the log.
            started[site] = self.cameras[site] = self._spawn(site, argv, f"camera-{site}.log",
                                                             append=restart)
        for site, proc in started.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("DEVICE "):
                detail = self.log(f"camera-{site}.log")
                raise RuntimeError(f"camera at {site} did not start: {detail}")
            self.devices[site] = line.split()[1]

    def use_plain_ice(self, plain: bool = True) -> None:
        """Restart every camera (same keys, same device IDs) as plain ICE leaves a
        session, or as shipped; the viewers this matrix starts follow."""
        if plain == self.plain:
            return
        self.plain = plain
        for proc in self.cameras.values():
            proc.terminate()
        for proc in self.cameras.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [p for p in self.procs if p not in self.cameras.values()]
        self.cameras.clear()
        self._start_cameras(self.sites, restart=True)

    def viewer_argv(self, camera: str, seconds: float) -> list[str]:
        argv = [*PEERCAM, "view", self.devices[camera], "--rendezvous", RENDEZVOUS,
                "--seconds", str(seconds), "--json"]
        return argv + (["--no-port-prediction", "--no-direct-upgrade", "--no-ice-tcp"]
                       if self.plain else [] if self.ice_tcp else ["--no-ice-tcp"])

    def turn_bytes(self, reset: bool = False) -> int:
        """Bytes into plus out of coturn since the lab came up or the last reset."""
        command = ["nft", "-j", "reset" if reset else "list", "counters", "table", "inet",
                   "peercam_turn_meter"]
        listing = json.loads(self.lab.run("server", command).stdout)
        return sum(int(item["counter"]["bytes"]) for item in listing["nftables"]
                   if "counter" in item)

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text()[-2000:] if path.exists() else ""

    def _last_json(self, where: str, argv: list[str], timeout: float,
                   cell: Cell) -> dict[str, Any] | None:
        """Run ``argv`` in ``where``; its last stdout line as JSON, or None (error noted)."""
        proc = self.lab.popen(where, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=self.env, cwd=Path(__file__).resolve().parents[2])
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            cell.error = (err or out)[-500:] or "no output"
            return None
        return result

    def measure_viewers(self, sites: list[str]) -> dict[str, str | None]:
        """``peercam natcheck`` once in each viewer site, saved where the matrix's viewer
        looks (what a CLI user does once per network): its offers there then carry
        its NAT and, behind a sequential one, its predicted ports. The allocation
        each found, by site."""
        def measure(site: str) -> str | None:
            proc = self.lab.popen(site, [*PEERCAM, "natcheck", "--stun", f"{SERVER}:3479",
                                         "--stun", f"{SERVER2}:3479", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env=self.env, cwd=Path(__file__).resolve().parents[2])
            out, _ = proc.communicate(timeout=90)
            allocation: str | None = json.loads(out.strip().splitlines()[-1]).get("allocation")
            return allocation

        # All at once, as a viewer's script might: each `peercam natcheck` adds its
        # network to the saved list under a lock, and the check below fails the run
        # if one was lost anyway (a viewer behind the random NAT without its
        # measurement offers no NAT profile: the birthday technique never starts).
        with concurrent.futures.ThreadPoolExecutor(max(1, len(sites))) as pool:
            found = dict(zip(sites, pool.map(measure, sites), strict=True))
        saved = {n["public_ip"]: n["allocation"] for n in json.loads(
            (self.viewer_dir / "nat.json").read_text())["networks"]}
        lost = [site for site, allocation in found.items()
                if allocation and saved.get(self.lab.public_ip(site)) != allocation]
        if lost:
            raise RuntimeError(f"natcheck's saved measurement missing for {lost}: {saved}")
        self.viewers_measured = True
        return found

    def run_cell(self, camera: str, viewer: str, seconds: float = 2.0) -> Cell:
        cell = Cell(camera, viewer,
                    direct_with_prediction(camera, viewer, viewer_measured=self.viewers_measured))
        result = self._last_json(viewer, self.viewer_argv(camera, seconds), seconds + 60, cell)
        if result is None:
            return cell
        cell.frames = int(result.get("frames") or 0)
        cell.ttff_ms = result.get("ttff_ms")
        cell.local_candidate = result.get("local_candidate")
        cell.remote_candidate = result.get("remote_candidate")
        cell.remote_address = result.get("remote_address")
        cell.transport = result.get("transport")
        cell.error = result.get("error")
        cell.relay_bytes = result.get("relay_bytes") or 0
        cell.relayed_at_end = "relay" in (result.get("final_local_candidate"),
                                          result.get("final_remote_candidate"))
        return cell

    def run_later(self, cells: list[Cell], seconds: float = LATER_SECONDS, workers: int = 8,
                  trials: int = 1) -> None:
        """Each cell relayed at its first frame, watched again in ``trials`` sessions of
        ``seconds``: whether and when each session moved to a direct path (background
        checks, port prediction, birthday punching, ICE-TCP). A cell's sessions run one after
        the other, never two at once (behind the sequential NAT parallel flows take
        each other's predicted ports); ``workers`` cells at a time. Filled into the
        cells' ``trials``."""
        def watch(cell: Cell) -> Trial:
            argv = self.viewer_argv(cell.camera, seconds)
            probe = Cell(cell.camera, cell.viewer, cell.expected_direct)
            result = self._last_json(cell.viewer, argv, seconds + 60, probe)
            trial = Trial(seconds, load1=round(os.getloadavg()[0], 2))
            if not result or not result.get("frames"):
                trial.error = (result or {}).get("error") or probe.error or "no video"
                return trial
            trial.frames = int(result["frames"])
            trial.max_gap_ms = result.get("max_gap_ms")
            trial.move_gap_ms = result.get("move_gap_ms")
            trial.error = result.get("error")
            trial.direct_at_end = "relay" not in (result.get("final_local_candidate"),
                                                  result.get("final_remote_candidate"))
            if "relay" not in (result.get("local_candidate"), result.get("remote_candidate")):
                trial.first_direct = True
                trial.moved_after_s = 0.0  # direct from the start this time
            elif result.get("moved_after_s") is not None:
                trial.moved_after_s = float(result["moved_after_s"])
            return trial

        def run(cell: Cell) -> None:
            cell.trials = [watch(cell) for _ in range(trials)]

        later = [c for c in cells if c.frames and c.relayed]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, later))

    def compare_turn(self, pairs: list[tuple[str, str]], seconds: float,
                     workers: int = 8) -> dict[str, Any]:
        """Every pair watched for ``seconds`` as shipped, then again as plain ICE (the
        cameras restarted, the viewers with its flags), eight at a time: coturn's bytes
        for each variant (``turn_bytes``) and each session's own count. Leaves the
        cameras as shipped."""
        variants: dict[str, Any] = {}
        for name, plain in (("shipped", False), ("plain", True)):
            self.use_plain_ice(plain)
            self.turn_bytes(reset=True)
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                cells = list(pool.map(lambda pair: self.run_cell(*pair, seconds=seconds),
                                      pairs))
            variants[name] = {
                "turn_bytes": self.turn_bytes(),
                "viewer_seconds": seconds * len(pairs),
                "sessions": len(cells),
                "with_video": sum(1 for c in cells if c.frames),
                "relayed_at_first_frame": sum(1 for c in cells if c.frames and c.relayed),
                "relayed_at_end": sum(1 for c in cells if c.frames and c.relayed_at_end),
                "cells": [asdict(c) for c in cells],
            }
        self.use_plain_ice(False)
        return {"seconds": seconds, **variants}

    def run_all(self, cameras: tuple[str, ...] | None = None, workers: int = 8) -> list[Cell]:
        """Every camera (default: all) × the twin of every camera site; one batch per
        viewer site at a time keeps a camera's load small."""
        cameras = cameras or self.sites
        cells: list[Cell] = []
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for viewer in (twin(site) for site in cameras):
                if site_kind(viewer) == "symmetric-seq" and self.viewers_measured:
                    # One session at a time behind the sequential NAT, as one viewer
                    # starts them: eight at once would take each other's next ports,
                    # and the viewer's prediction is of the ports its own flows get.
                    cells += [self.run_cell(camera, viewer) for camera in cameras]
                    continue
                batch = [pool.submit(self.run_cell, camera, viewer) for camera in cameras]
                cells += [f.result() for f in batch]
        return cells

    def pair_link(self, camera: str) -> str:
        """A one-time pairing link for ``camera``, as `peercam pair` prints it over SSH."""
        result = subprocess.run(
            [*PEERCAM, "pair", "--state-dir", str(self.tmp / f"camera-{camera}"),
             "--rendezvous", RENDEZVOUS], capture_output=True, text=True, check=True,
            env=self.env)
        return next(line.split(None, 1)[1] for line in result.stdout.splitlines()
                    if line.startswith("PAIR "))

    def run_browser_cell(self, camera: str, viewer: str, seconds: float = 2.0) -> Cell:
        """Headless Chromium behind ``viewer`` pairs with and watches ``camera``."""
        # A browser's ICE-TCP only connects: to a camera that listens in the open.
        cell = Cell(camera, viewer, direct_with_prediction(camera, viewer, peercam_viewer=False))
        # Where a direct path exists Chromium may nominate the relay first and move
        # once the better pair answers: give it BROWSER_SETTLE seconds to.
        settle = BROWSER_SETTLE if cell.expected_direct else 0.0
        argv = [sys.executable, "-m", "tests.lab.browser_cell", self.pair_link(camera),
                str(seconds), str(settle)]
        result = self._last_json(viewer, argv, 90, cell)
        if result is None:
            return cell
        cell.frames = int(result.get("framesDecoded") or 0)
        cell.ttff_ms = result.get("ttffMs")
        cell.local_candidate = result.get("localCandidateType")
        cell.remote_candidate = result.get("remoteCandidateType")
        cell.remote_address = result.get("remoteAddress")
        cell.error = result.get("error") or result.get("lastError")
        cell.settled_ms = result.get("settledMs")
        return cell

    def run_natcheck(self, site: str) -> dict[str, Any]:
        # Two servers (our STUN server's two addresses): one silent server alone is
        # "no answer from it"; UDP counts as blocked only when both are silent.
        result = self.lab.run(site, [*PEERCAM, "natcheck", "--stun", f"{SERVER}:3479",
                                     "--stun", f"{SERVER2}:3479", "--json", "--no-save"],
                              check=False, timeout=60)
        stdout = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
        report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        return report

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


SHARED_REPORT = "nat-matrix-shared.json"
"""Where tests/lab/test_cgnat.py leaves its cells and natchecks for ``write_report``."""


def save_shared(out: Path, cells: list[Cell], natchecks: dict[str, dict[str, Any]]) -> None:
    """The shared-NAT cells (CGNAT, two LANs) for the next ``write_report`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARED_REPORT).write_text(json.dumps(
        {"cells": [asdict(c) for c in cells], "natcheck": natchecks}, indent=1))


def load_shared(out: Path) -> tuple[list[Cell], dict[str, dict[str, Any]]]:
    path = out / SHARED_REPORT
    if not path.exists():
        return [], {}
    data = json.loads(path.read_text())
    return [Cell.from_dict(cell) for cell in data["cells"]], dict(data["natcheck"])


def _cell_text(c: Cell) -> str:
    if not c.frames:
        return "**no video**"
    mark = "R" if c.relayed else "D"
    flag = "" if c.ok else " ⚠"
    moved = ""
    if c.relayed and c.trials:
        direct = sum(1 for t in c.trials if t.direct_by(LATER_SECONDS))
        moves = c.moves()
        if len(c.trials) == 1 and moves:
            moved = f" → **D** after {moves[0]:.1f} s"
        elif len(c.trials) > 1 and direct:
            median = f", median {statistics.median(moves):.1f} s" if moves else ""
            moved = f" → **D** in {direct}/{len(c.trials)}{median}"
    over = " tcp" if c.transport == "tcp" else ""
    return f"{mark} {c.local_candidate}→{c.remote_candidate}{over} {c.ttff_ms:.0f}{flag}{moved}"


def _share(value: float, total: int) -> str:
    """``value`` of ``total`` cells, as a count (with a decimal where trials split one)."""
    count = f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.1f}"
    return f"{count}/{total} ({100 * value / max(1, total):.0f}%)"


def _later_summary(cells: list[Cell]) -> list[str]:
    """The direct share after 10 s and 60 s, if the later pass ran (each cell counted
    by the share of its later sessions that were direct)."""
    if not any(c.trials for c in cells):
        return []
    total = len(cells)
    plain = sum(1 for c in cells if direct_possible(c.camera, c.viewer))
    shares = []
    for seconds in (10, 60):
        known = [c.direct_share(seconds) for c in cells]
        direct = sum(k for k in known if k is not None)
        unknown = sum(1 for k in known if k is None)
        shares.append(f"after {seconds} s {_share(direct, total)}"
                      + (f", {unknown} not watched" if unknown else ""))
    relayed = sum(1 - (c.direct_share(60) or 0.0) for c in cells)
    udp = [c for c in cells if not udp_blocked_cell(c.camera, c.viewer)]
    udp_direct = sum(c.direct_share(60) or 0.0 for c in udp)
    udp_plain = sum(1 for c in udp if direct_possible(c.camera, c.viewer))
    udp_relayed = len(udp) - udp_direct
    return ["", "Direct share at the first frame, then in the later sessions (each cell "
            "counted by the share of its sessions that were direct): "
            + "; ".join(shares) + f". Plain ICE's rule (no prediction, no punching, no "
            f"later checks, no ICE-TCP) allows {plain}/{total} ({100 * plain / total:.0f}%); "
            f"the UDP-blocked site's {total - len(udp)} cells can be direct only over "
            "TCP (ICE-TCP), where the other side is in the open or both NATs keep a "
            "flow's port. Over the "
            f"{len(udp)} cells where both sites pass UDP: direct after 60 s "
            f"{_share(udp_direct, len(udp))}, plain ICE {_share(udp_plain, len(udp))}, so "
            f"{udp_relayed:.1f} of them on the relay against plain ICE's "
            f"{len(udp) - udp_plain} "
            f"({100 * udp_relayed / max(1, len(udp) - udp_plain):.0f}% of its "
            "relay traffic there). "
            "Sessions still on the relay after "
            f"60 s: {relayed:.1f} cells against plain ICE's {total - plain}: the relay's "
            "traffic, one viewer an hour in every cell, would be "
            f"{100 * relayed / max(1, total - plain):.0f}% of plain ICE's (cells counted; "
            "the bytes, measured against plain ICE run in the same lab, are below)."]


MOVE_GAP_TARGET_MS = 100.0
"""The move off the relay must not interrupt the video for longer than this."""
RANDOM_PORT_RESTRICTED_TARGET = 0.6
"""Share of sessions direct after 60 s where a random symmetric NAT meets a
port-restricted one."""


def trial_summary(cells: list[Cell], seconds: float = LATER_SECONDS) -> dict[str, Any]:
    """The later sessions against the targets: every cell with a sequential symmetric
    NAT on either side (UDP-blocked sites aside) direct after ``seconds`` in every
    session; where a random symmetric NAT meets a port-restricted one (the ipv6 sites'
    IPv4 is port-restricted) direct in ``RANDOM_PORT_RESTRICTED_TARGET`` of the
    sessions; the direct share over all cells, each counted by its sessions' share;
    no move off the relay with a frame gap over ``MOVE_GAP_TARGET_MS``."""
    def share(group: list[Cell]) -> float | None:
        known = [c.direct_share(seconds) for c in group]
        if not group or any(k is None for k in known):
            return None
        return sum(k for k in known if k is not None) / len(group)

    def sessions(group: list[Cell]) -> tuple[int, int]:
        """(direct, all) over the later sessions of the group's relayed cells."""
        trials = [t for c in group if c.relayed for t in c.trials]
        return sum(1 for t in trials if t.direct_by(seconds)), len(trials)

    sequential = [c for c in cells if not udp_blocked_cell(c.camera, c.viewer)
                  and "symmetric-seq" in (site_kind(c.camera), site_kind(c.viewer))]
    random_pr = [c for c in cells
                 if site_kind(c.camera) == "symmetric" and v4_kind(c.viewer) == "port-restricted"
                 or site_kind(c.viewer) == "symmetric" and v4_kind(c.camera) == "port-restricted"]
    moves = [t for c in cells for t in c.trials
             if t.moved_after_s is not None and not t.first_direct]
    gaps = [t.move_gap_ms for t in moves if t.move_gap_ms is not None]
    relayed = [c for c in cells if c.frames and c.relayed]
    seq_short = [f"{c.camera}→{c.viewer}" for c in sequential
                 if c.direct_share(seconds) != 1.0]
    random_share = share(random_pr)
    loads = [t.load1 for c in cells for t in c.trials if t.load1 is not None]
    summary: dict[str, Any] = {
        "seconds": seconds,
        "load1": {"median": statistics.median(loads), "max": max(loads)} if loads else None,
        "trials_per_cell": max((len(c.trials) for c in relayed), default=0),
        "cells": [{
            "camera": c.camera, "viewer": c.viewer, "trials": len(c.trials),
            "direct": sum(1 for t in c.trials if t.direct_by(seconds)),
            "first_direct": sum(1 for t in c.trials if t.first_direct),
            "no_video": sum(1 for t in c.trials if not t.frames),
            "median_move_s": statistics.median(c.moves()) if c.moves() else None,
            "move_gap_ms": [t.move_gap_ms for t in c.trials if t.move_gap_ms is not None],
        } for c in relayed],
        "sequential": {
            "cells": len(sequential), "sessions": sessions(sequential),
            "short": seq_short, "met": not seq_short and bool(sequential),
        },
        "random_port_restricted": {
            "cells": len(random_pr), "sessions": sessions(random_pr),
            "share": random_share,
            "met": random_share is not None and random_share >= RANDOM_PORT_RESTRICTED_TARGET,
        },
        "overall": {
            "cells": len(cells), "share": share(cells),
            "udp_cells": len([c for c in cells if not udp_blocked_cell(c.camera, c.viewer)]),
            "udp_share": share([c for c in cells
                                if not udp_blocked_cell(c.camera, c.viewer)]),
        },
        "move_gap": {
            "moves": len(moves), "measured": len(gaps),
            "median_ms": statistics.median(gaps) if gaps else None,
            "max_ms": max(gaps) if gaps else None,
            "over_target": sum(1 for g in gaps if g > MOVE_GAP_TARGET_MS),
            "met": bool(gaps) and len(gaps) == len(moves)
            and all(g <= MOVE_GAP_TARGET_MS for g in gaps),
            # The same machine's gaps without a move, for comparison: the whole-session
            # longest gap of every later session that stayed on its relay.
            "unmoved_session_max_ms": sorted(
                t.max_gap_ms for c in cells for t in c.trials
                if t.frames and t.moved_after_s is None and t.max_gap_ms is not None),
        },
    }
    return summary


def _load_text(load: dict[str, float] | None) -> str:
    if load is None:
        return ""
    return (f" The machine's 1-minute load average at the sessions' ends: median "
            f"{load['median']:.1f}, highest {load['max']:.1f} (2 cores; other engineers' "
            "tests and benchmarks may share them): read the gaps against that.")


def _trials_section(cells: list[Cell], summary: dict[str, Any], when: str) -> list[str]:
    """Per relayed cell, its later sessions; then the targets."""
    n = summary["trials_per_cell"]
    seconds = summary["seconds"]
    lines = [
        "", f"## Later sessions of the relayed cells: {n} per cell", "",
        f"Run {when}. Each cell relayed at its first frame above was watched again in "
        f"{n} session{'s' if n != 1 else ''} of {seconds:.0f} s "
        "(`PEERCAM_MATRIX_TRIALS`), one after the other (never two sessions of one "
        "cell at once: behind the sequential NAT parallel flows take each other's "
        "predicted ports), eight cells at a time. \"direct after 60 s\": the session's pair "
        "when the viewer left was direct and the move came within 60 s of its first "
        "frame; \"started direct\": this session's first frame came directly already. "
        "Time to move: from the session's first frame to when the viewer saw the move "
        "(at most 0.1 s late), median over the sessions that moved. Gap at the move: the "
        "longest time between two shown frames within 1 s either side of the seen move "
        "(`peercam view --json`'s `move_gap_ms`; at the camera's 30 fps one frame is "
        "33 ms); longest gap in the session: the whole session's, for comparison (eight "
        "sessions share 2 cores here)." + _load_text(summary["load1"]), "",
        "| camera | viewer | direct after 60 s | started direct | median s to move "
        "| gap at the move ms (median / max) | longest gap in the session ms (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(c.camera, c.viewer): c for c in cells}
    for row in summary["cells"]:
        c = by[(row["camera"], row["viewer"])]
        gaps = row["move_gap_ms"]
        sessions = [t.max_gap_ms for t in c.trials if t.max_gap_ms is not None]
        median = row["median_move_s"]
        failed = f" ({row['no_video']} without video)" if row["no_video"] else ""
        lines.append(
            f"| {row['camera']} | {row['viewer']} | {row['direct']} of {row['trials']}"
            f"{failed} | {row['first_direct']} | "
            f"{'' if median is None else f'{median:.1f}'} | "
            + (f"{statistics.median(gaps):.0f} / {max(gaps):.0f}" if gaps else "")
            + f" | {f'{max(sessions):.0f}' if sessions else ''} |")
    seq, rnd = summary["sequential"], summary["random_port_restricted"]
    overall, gap = summary["overall"], summary["move_gap"]

    def pct(value: float | None) -> str:
        return "not measured" if value is None else f"{100 * value:.0f}%"

    lines += [
        "", "Against the targets (direct share after 60 s; a cell direct at its first "
        "frame counts 1, a relayed one the share of its later sessions):", "",
        f"- Direct in every cell with a sequential symmetric NAT on either side (the "
        f"UDP-blocked site's aside), every session: {'MET' if seq['met'] else 'MISSED'}"
        f" ({seq['cells']} cells; their relayed cells' sessions direct: "
        f"{seq['sessions'][0]} of {seq['sessions'][1]}"
        + (f"; short: {', '.join(seq['short'])}" if seq["short"] else "") + ").",
        f"- Random symmetric × port-restricted (the ipv6 sites' IPv4 is port-restricted), "
        f"≥ {100 * RANDOM_PORT_RESTRICTED_TARGET:.0f}%: {pct(rnd['share'])} "
        f"({'MET' if rnd['met'] else 'MISSED'}; {rnd['cells']} cells, sessions direct "
        f"{rnd['sessions'][0]} of {rnd['sessions'][1]}).",
        f"- Overall: {pct(overall['share'])} of the {overall['cells']} cells; "
        f"{pct(overall['udp_share'])} of the {overall['udp_cells']} where both sites pass "
        "UDP.",
        f"- The move never interrupts the video for more than "
        f"{MOVE_GAP_TARGET_MS:.0f} ms: {'MET' if gap['met'] else 'MISSED'} ("
        + (f"{gap['measured']} moves measured of {gap['moves']}, gap median "
           f"{gap['median_ms']:.0f} ms, longest {gap['max_ms']:.0f} ms, "
           f"{gap['over_target']} over {MOVE_GAP_TARGET_MS:.0f} ms"
           if gap["measured"] else f"no gap measured over {gap['moves']} moves")
        + ")." + _unmoved_text(gap.get("unmoved_session_max_ms") or []),
    ]
    return lines


def _unmoved_text(unmoved: list[float]) -> str:
    """What the machine did to sessions without a move, beside the gaps at the moves."""
    if not unmoved:
        return ""
    return (f" For comparison, the {len(unmoved)} later sessions that stayed on their "
            f"relay had a longest gap (over the whole session, not a 2 s window) of "
            f"{min(unmoved):.0f} to {max(unmoved):.0f} ms, median "
            f"{statistics.median(unmoved):.0f} ms: with eight sessions sharing 2 cores the "
            "matrix cannot tell a gap the move makes from one the machine makes.")


def _turn_section(turn: dict[str, Any]) -> list[str]:
    """What the relays cost, shipped against plain ICE (``Matrix.compare_turn``)."""
    seconds = turn["seconds"]
    shipped, plain = turn["shipped"], turn["plain"]

    def per_hour(variant: dict[str, Any]) -> float:
        return variant["turn_bytes"] / max(1, variant["viewer_seconds"]) * 3600 / 1e9

    ratio = shipped["turn_bytes"] / max(1, plain["turn_bytes"])
    lines = [
        "", "## What the relay carried: shipped against plain ICE, measured", "",
        f"Every cell watched again for {seconds:.0f} s, eight sessions at a time (the "
        "viewer's sequential-NAT column too, so its own predictions there meet each "
        "other's flows: that only costs the shipped variant), first as shipped, then as "
        "plain ICE in the same lab and run: the cameras restarted with `port_prediction = "
        "false` and `direct_upgrade = false`, the viewers with `--no-port-prediction "
        "--no-direct-upgrade`. \"coturn\" is every byte into and out of coturn's ports on "
        "the server host (nftables counters, IP headers included; a packet relayed between "
        "two allocations counts at each hop), so it is what a TURN operator's link carries; "
        "\"sessions\" is what the viewers' transports carried while their sessions went "
        "through the relay (DTLS and SRTP payloads, both ways, counted by each viewer).",
        "",
        "| variant | sessions with video | relayed at first frame | relayed at the end "
        "| coturn MB | sessions' relayed MB | coturn GB per viewer-hour |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, variant in (("shipped", shipped), ("plain ICE", plain)):
        carried = sum(c.get("relay_bytes") or 0 for c in variant["cells"])
        lines.append(
            f"| {name} | {variant['with_video']}/{variant['sessions']} | "
            f"{variant['relayed_at_first_frame']} | {variant['relayed_at_end']} | "
            f"{variant['turn_bytes'] / 1e6:.1f} | {carried / 1e6:.1f} | "
            f"{per_hour(variant):.3f} |")
    def udp_carried(variant: dict[str, Any]) -> int:
        return sum(c.get("relay_bytes") or 0 for c in variant["cells"]
                   if "udp-blocked" not in (site_kind(c["camera"]), site_kind(c["viewer"])))

    blocked = sum(1 for c in plain["cells"]
                  if "udp-blocked" in (site_kind(c["camera"]), site_kind(c["viewer"])))
    udp_ratio = udp_carried(shipped) / max(1, udp_carried(plain))
    lines += ["", f"Shipped against plain ICE: {100 * ratio:.0f}% of coturn's bytes "
              f"({'at least halved' if ratio <= 0.5 else 'NOT halved'}). The {blocked} "
              "cells with the UDP-blocked site relay in plain ICE (TURN over TCP); as "
              "shipped, all but the ones with a symmetric NAT are direct over TCP "
              "(ICE-TCP, simultaneous open through two NATs); they are most of plain "
              "ICE's relayed cells. Over the other cells, what the sessions "
              f"carried through the relay, shipped against plain ICE: {100 * udp_ratio:.0f}% "
              f"({udp_carried(shipped) / 1e6:.1f} against {udp_carried(plain) / 1e6:.1f} "
              f"MB). Sessions of {seconds:.0f} s overstate the shipped variant's share: its "
              "relayed bytes are the seconds before a move, which a longer session "
              "dilutes.", "",
              "Per cell, where either variant relayed (MB the session's transport carried "
              "through the relay; → D: moved to a direct path after N s):", "",
              "| camera | viewer | shipped | plain ICE |", "|---|---|---|---|"]
    by_plain = {(c["camera"], c["viewer"]): c for c in plain["cells"]}
    for c in shipped["cells"]:
        p = by_plain.get((c["camera"], c["viewer"]), {})
        if not (c.get("relay_bytes") or p.get("relay_bytes")):
            continue

        def text(cell: dict[str, Any]) -> str:
            if not cell.get("frames"):
                return "no video"
            if "relay" not in (cell.get("local_candidate"), cell.get("remote_candidate")):
                return "direct"
            moved = "" if cell.get("relayed_at_end") else " → D"
            return f"{(cell.get('relay_bytes') or 0) / 1e6:.2f}{moved}"

        lines.append(f"| {c['camera']} | {c['viewer']} | {text(c)} | {text(p)} |")
    return lines


def write_report(cells: list[Cell], lab: Lab, md: Path, png: Path,
                 natchecks: dict[str, dict[str, Any]] | None = None,
                 shared: list[Cell] | None = None,
                 turn: dict[str, Any] | None = None, when: str | None = None) -> None:
    """docs/nat-matrix.md (a table), a heatmap PNG of time to first frame and
    nat-matrix.json (the cells, their later sessions and ``trial_summary``);
    ``shared``: the cells between sites behind shared NATs, as a second table;
    ``turn``: the relay's bytes, shipped against plain ICE (``Matrix.compare_turn``);
    ``when``: when the later sessions ran (default: now)."""
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    summary = trial_summary(cells) if any(c.trials for c in cells) else None
    sites = list(dict.fromkeys(c.camera for c in cells))
    viewers = list(dict.fromkeys(c.viewer for c in cells))
    by = {(c.camera, c.viewer): c for c in cells}
    possible = [c for c in cells if c.expected_direct]
    direct = [c for c in cells if c.frames and not c.relayed]
    lines = [
        "# NAT matrix",
        "",
        "Regenerated by `scripts/nat-matrix` (root): a camera behind one NAT of each",
        "kind (rows) and a `peercam view` CLI viewer behind a *second, different* NAT",
        "of each kind (columns, \"KIND-2\": its own namespace, router, LAN and public",
        "address). So every cell measures two NATs, the diagonal included:",
        "symmetric × symmetric-2 is two symmetric NATs, not two hosts on one LAN.",
        "Real Linux NATs (nftables in network namespaces, `services/natlab`); our STUN",
        "server, coturn and the rendezvous on the lab's public segment. \"symmetric\"",
        "picks each new flow's port at random, \"symmetric-seq\" takes the next port",
        "(plain ICE treats both alike; the camera does not: behind the sequential one its "
        "answer also offers the ports its NAT will map next, and a viewer behind a NAT "
        "that filters on the remote port reaches it directly; a CLI viewer does the same "
        "once `peercam natcheck` has measured its network, and the matrix's viewer has, "
        "once in each viewer site before the cells; one that never measured stays as "
        "plain ICE has it, `tests/lab/test_punch.py`). A cell's path is the one at its "
        "first frame. Where that is the relay, the background checks (and, where one NAT "
        "allocates at random, one birthday attempt; where both allocate sequentially, one "
        "sweep of the other's next ports each) may move the session to a direct path "
        "later: each such cell is watched again in later sessions of 60 s "
        "(`PEERCAM_MATRIX_TRIALS` of them, one by default; `PEERCAM_MATRIX_TRIALS=10 "
        "scripts/nat-matrix` for ten), and a cell that moved says \"→ **D** after N s\" "
        "(one session: seconds after its first frame) or \"→ **D** in k/N, median M s\" "
        "(k of N sessions direct after 60 s; the section after the table has each "
        "cell's sessions). "
        "Cells run eight at a time, one viewer site after the other, except behind the "
        "viewer's sequential NAT: there one at a time, as one viewer starts its sessions "
        "(eight at once take each other's next ports, which the viewer predicts for its own).",
        "Each cell: pair type seen by the viewer",
        "(local → remote) and time to first frame in ms. **D** direct, **R** relayed;",
        "a cell is correct when it is direct wherever the two NATs allow a direct path",
        "and relayed only where they don't. TURN is configured in every cell; a relayed",
        "cell's first frame includes the short wait (until no direct pair can still win,",
        "at most 1 s) before the viewer nominates a relay pair (`camera/ice.py`). Cameras and",
        "viewers behind the UDP-blocked site use TURN over TCP on port 443, or ICE over",
        "TCP (RFC 6544: \"tcp\" after the pair): to a side that listens in the open, or",
        "by simultaneous open where both NATs keep a flow's port (srflx → srflx tcp; a",
        "browser viewer only connects to a camera in the open). Times come",
        "from a 2-core machine shared with other engineers' benchmarks: compare paths,",
        "not milliseconds.",
        "",
        f"Lab up {lab.up_seconds or 0:.2f} s (all sites, with probes). "
        f"Cells with video: {sum(1 for c in cells if c.frames)}/{len(cells)}; "
        f"direct where possible: {sum(1 for c in possible if not c.relayed and c.frames)}"
        f"/{len(possible)}; direct share over all cells: {len(direct)}/{len(cells)} "
        f"({100 * len(direct) / max(1, len(cells)):.0f}%).",
        *_later_summary(cells),
        "",
        "| camera \\ viewer | " + " | ".join(viewers) + " |",
        "|---|" + "---|" * len(viewers),
    ]
    for camera in sites:
        row = []
        for viewer in viewers:
            c = by.get((camera, viewer))
            row.append("" if c is None else _cell_text(c))
        lines.append(f"| **{camera}** | " + " | ".join(row) + " |")
    if summary is not None:
        lines += _trials_section(cells, summary, when)
    if natchecks:
        lines += ["", "## `peercam natcheck` at each site", "",
                  "| site | lab NAT (probed) | natcheck nat_type | mapping | filtering "
                  "| hairpinning | allocation (port deltas) |",
                  "|---|---|---|---|---|---|---|"]
        for site, report in natchecks.items():
            probed = lab.behaviour.get(site) or report.get("lab_probed")
            allocation = report.get("allocation") or ""
            deltas = report.get("port_deltas")
            if deltas:
                allocation += f" ({', '.join(str(d) for d in deltas)})"
            lines.append(f"| {site} | {tuple(probed) if probed else ''} | "
                         f"{report.get('nat_type')} | {report.get('mapping')} | "
                         f"{report.get('filtering')} | {report.get('hairpinning')} | "
                         f"{allocation} |")
    if shared:
        lines += [
            "", "## Shared NATs: carrier-grade NAT and two LANs behind one NAT", "",
            "Sites behind a NAT they share with their kind's second site "
            "(`tests/lab/test_cgnat.py`):",
            "`cgnat-sym`: a port-restricted home router behind a symmetric CGNAT "
            "(100.64.0.0/10 between them); `cgnat`: behind an endpoint-independent CGNAT "
            "without hairpinning; `cgnat-hairpin`: the same CGNAT, hairpinning; `lans`: two "
            "LANs behind one port-restricted NAT that neither routes between them nor "
            "hairpins; `lans-hairpin`: the same, hairpinning. `KIND` × `KIND-2` is two homes "
            "(or LANs) behind the same shared NAT.",
            "",
            "| camera | viewer | direct possible | path, first frame ms |",
            "|---|---|---|---|",
        ]
        for c in shared:
            lines.append(f"| {c.camera} | {c.viewer} | {'yes' if c.expected_direct else 'no'} "
                         f"| {_cell_text(c)} |")
    if turn:
        lines += _turn_section(turn)
    lines += ["", "![time to first frame per cell](nat-matrix.png)", ""]
    md.write_text("\n".join(lines))
    _heatmap(cells, sites, viewers, png)
    (md.with_suffix(".json")).write_text(json.dumps(
        {"when": when, "summary": summary, "cells": [asdict(c) for c in cells]}, indent=1))


def _heatmap(cells: list[Cell], sites: list[str], viewers: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by = {(c.camera, c.viewer): c for c in cells}
    grid = np.full((len(sites), len(viewers)), np.nan)
    for i, camera in enumerate(sites):
        for j, viewer in enumerate(viewers):
            c = by.get((camera, viewer))
            if c is not None and c.frames and c.ttff_ms is not None:
                grid[i, j] = c.ttff_ms
    fig, ax = plt.subplots(figsize=(8, 6.5))
    image = ax.imshow(grid, cmap="viridis_r")
    ax.set_xticks(range(len(viewers)), viewers, rotation=40, ha="right")
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xlabel("viewer site")
    ax.set_ylabel("camera site")
    for i, camera in enumerate(sites):
        for j, viewer in enumerate(viewers):
            c = by.get((camera, viewer))
            label = "none" if c is None or not c.frames else (
                ("R" if c.relayed else "D") + f"\n{c.ttff_ms:.0f}")
            ax.text(j, i, label, ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, label="time to first frame (ms)")
    ax.set_title("peercam NAT matrix: D direct / R relayed, first frame ms")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
