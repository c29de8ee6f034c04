"""Recovery after faults, in the NAT lab: how soon video is back.

The camera sits behind a port-restricted NAT (a home router), the viewer behind
another one (``port-restricted-2``); the rendezvous, our STUN server and coturn
run on the lab's public segment (tests/lab/recovery.py, shared with the lab's
recovery tests). Every trial breaks one thing while an existing ``peercam
view`` watches, then starts a new viewer the moment the thing is repaired:

* camera link down 5 s / 30 s / 120 s (the camera's uplink: carrier, address
  and default route go), then back;
* rendezvous killed (SIGKILL), back 3 s later;
* camera process killed (SIGKILL), started again 2 s later;
* the camera's NAT forgets its mappings and hands out new ports (conntrack
  flushed, the old ports held);
* the camera moved to another site (the lab's roaming host re-plugged from the
  port-restricted LAN into the symmetric one: new address, NAT and route).

Measured per trial, on the machine-wide monotonic clock: the existing viewer's
video back (end of its frame gap minus the repair; 0 when it never stopped),
and the new viewer's first frame after the repair (a ``peercam view --wait``
started at the repair: it waits for the camera, starting a session the moment
the rendezvous says the camera registered; for a camera restart it is started
as the camera process is, for the other events once the repair is done).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, need_root, pyplot

NAME = "recovery"
HELP = "faults in the NAT lab (link flaps, restarts, NAT flush, moved camera): video back"
SMOKE = ["--runs", "1", "--events", "link5,rendezvous,camera,upgrade"]
NEEDS = ["root", "turnserver", "nft"]
# Brings up the NAT lab (one per machine): its smoke test runs with the lab tests.
USES_LAB = True

CAMERA, VIEWER = "port-restricted", "port-restricted-2"
NEW_VIEWER = ("`peercam view --wait` started at the repair (camera restarted: together with "
              "the camera process)")
OLD_NEW_VIEWER = "`peercam view` started at the repair and re-run until it showed a frame"
"""How the new viewer was measured (invocations that did not say: the older way)."""
EVENTS = ("link5", "link30", "link120", "rendezvous", "camera", "flush", "moved", "upgrade",
          "birthday", "sweep")
RANDOM = "symmetric"  # the lab NAT that picks each new flow's port at random
SEQUENTIAL, SEQUENTIAL_VIEWER = "symmetric-seq", "symmetric-seq-2"  # two that count up
TARGETS: dict[str, tuple[float | None, float | None]] = {
    # event: (existing viewer's video back, new viewer's first frame), seconds
    "link5": (2.0, 3.0),
    "link30": (3.0, 3.0),
    "link120": (5.0, 3.0),
    "rendezvous": (0.0, 3.0),
    "camera": (5.0, 3.0),
    "flush": (3.0, None),
    "moved": (5.0, 3.0),
    "upgrade": (0.1, None),
    "birthday": (0.1, None),
    "sweep": (0.1, None),
}
LABELS = {
    "link5": "camera link down 5 s",
    "link30": "camera link down 30 s",
    "link120": "camera link down 120 s",
    "rendezvous": "rendezvous restarted",
    "camera": "camera process restarted",
    "flush": "NAT mapping flushed mid-stream",
    "moved": "camera moved to another site",
    "upgrade": "relayed session moved to a direct path (longest frame gap)",
    "birthday": "camera behind a random symmetric NAT: moved off the relay by the birthday "
                "technique (longest frame gap)",
    "sweep": "camera and viewer behind two sequential symmetric NATs: moved off the relay "
             "by the sweep (longest frame gap)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=10, help="trials per event")
    p.add_argument("--long-runs", type=int, default=None,
                   help="trials for the 30 s and 120 s outages (default: --runs)")
    p.add_argument("--events", default=",".join(EVENTS), help="which events, comma-separated")
    p.add_argument("--append", action="store_true",
                   help="add these trials to the stored ones of the same events (one event "
                        "measured over several invocations); without it an event run "
                        "replaces its stored trials. Events not run are kept either way.")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    need_root("the NAT lab")
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.labttff import need_lab

    need_lab(chromium=False)
    events = [e for e in args.events.split(",") if e]
    unknown = set(events) - set(EVENTS)
    if unknown:
        raise SystemExit(f"bench: unknown event(s) {sorted(unknown)}; choose from {EVENTS}")
    loop = asyncio.get_running_loop()
    runs = {e: args.runs if e not in ("link30", "link120") or args.long_runs is None
            else args.long_runs for e in events}
    started = time.time()
    result = await loop.run_in_executor(None, _measure, events, runs,
                                        Path(args.state) / "recovery")
    if args.smoke:
        return result
    stored_path = Path(args.out) / f"{NAME}.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
    return merge(stored, result, _provenance(started, runs), append=args.append)


def _provenance(started: float, runs: dict[str, int]) -> dict[str, Any]:
    """When and on which code this invocation measured (shown beside the table)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True,
                              text=True, check=False, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "camera", "services", "bench", "tests/lab"):
        commit += "+uncommitted"
    utc = "%Y-%m-%d %H:%M"
    return {"commit": commit, "started_utc": time.strftime(utc, time.gmtime(started)),
            "ended_utc": time.strftime(utc, time.gmtime()), "runs": runs,
            "seconds": round(time.time() - started, 1),
            "new_viewer": NEW_VIEWER}


def merge(stored: dict[str, Any], new: dict[str, Any], provenance: dict[str, Any], *,
          append: bool) -> dict[str, Any]:
    """The stored events, with this invocation's trials replacing (or, with ``append``,
    added to) those of the events it ran; every event keeps the list of invocations
    that measured it."""
    events: dict[str, Any] = {}
    old = stored.get("events", {}) if not stored.get("smoke") else {}
    for event in EVENTS:
        if event in new["events"]:
            ran = {**provenance, "runs": provenance["runs"][event]}
            trials = new["events"][event]["trials"]
            measured = [ran]
            if append and event in old:
                trials = old[event]["trials"] + trials
                measured = old[event].get("measured", [{"commit": "unknown"}]) + measured
            events[event] = {"trials": trials, **_describe(trials), "measured": measured}
        elif event in old:
            events[event] = old[event]
    notes = {k: v for k, v in stored.get("notes", {}).items() if k not in new["events"]}
    # What the operator wrote about the machine (shared, loaded) stays with the runs.
    machine = {"machine_note": stored["machine_note"]} if "machine_note" in stored else {}
    return {**new, "events": events, "notes": notes, "seconds_taken": _lab_seconds(events),
            "runs": max((len(e["trials"]) for e in events.values()), default=0), **machine}


def _lab_seconds(events: dict[str, Any]) -> float:
    """The invocations' time together (one invocation counted once, whatever it ran; one
    that did not record its seconds counts its start to end minutes)."""
    seen: dict[tuple[str, str], float] = {}
    for data in events.values():
        for ran in data.get("measured", []):
            key = (str(ran.get("commit")), str(ran.get("started_utc")))
            if "seconds" in ran:
                seen[key] = float(ran["seconds"])
            elif ran.get("started_utc") and ran.get("ended_utc"):
                fmt = "%Y-%m-%d %H:%M"
                start = time.mktime(time.strptime(ran["started_utc"], fmt))
                seen[key] = time.mktime(time.strptime(ran["ended_utc"], fmt)) - start
    return round(sum(seen.values()), 1)


def _measure(events: list[str], runs: dict[str, int], state: Path) -> dict[str, Any]:
    from services.natlab import Lab
    from tests.lab.recovery import RecoveryLab

    state.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"events": {}, "runs": max(runs.values(), default=0)}
    sites = [CAMERA, VIEWER, RANDOM, SEQUENTIAL, SEQUENTIAL_VIEWER]
    with Lab(sites=sites, conntrack_udp_timeout=20) as lab, \
            RecoveryLab(lab, state, CAMERA) as rec:
        for event in events:
            trials = []
            for _ in range(runs[event]):
                trials.append(_trial(lab, rec, event))
                _settle(rec)
            out["events"][event] = {"trials": trials, **_describe(trials)}
            print(f"recovery {event}: {out['events'][event]['existing']} / "
                  f"{out['events'][event]['new']}", flush=True)
    return out


def _settle(rec: Any, timeout: float = 5.0) -> None:
    """A moment for the last trial's sessions to end (one replaced behind a broken path
    ends within 30 s without RTCP, in the background: it costs the camera next to
    nothing and does not change what is measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not rec.camera_status()["viewers"]:
                return
        except (ValueError, KeyError, IndexError):
            pass
        time.sleep(1)


def _trial(lab: Any, rec: Any, event: str) -> dict[str, Any]:
    from tests.lab.recovery import block_direct, unblock_direct, video_back

    if event == "moved":  # the same camera, on the roaming host in the first home
        rec.kill_camera()
        lab.roam(CAMERA)
        rec.camera_site = "roam"
        rec.start_camera()
    if event == "upgrade":  # the NATs let nothing direct through until the session runs
        block_direct(lab, CAMERA, VIEWER)
    if event == "birthday":  # the camera behind the NAT that allocates ports at random
        rec.kill_camera()
        rec.camera_site = RANDOM
        rec.start_camera()
        _learned(rec, "allocation: random")
    viewer = VIEWER
    if event == "sweep":  # both behind NATs that allocate sequentially; the viewer measured
        rec.kill_camera()
        rec.camera_site = SEQUENTIAL
        rec.start_camera()
        _natcheck(lab, rec, SEQUENTIAL_VIEWER)
        _learned(rec, "allocation: sequential")
        viewer = SEQUENTIAL_VIEWER
    watch = rec.watch(viewer, 600)
    rec.wait_playing()
    broken = time.monotonic()
    repaired = broken
    upgraded: float | None = None
    if event.startswith("link"):
        fault = lab.link_down(CAMERA, float(event.removeprefix("link")))
        repaired = fault.wait(200)
    elif event == "rendezvous":
        broken = rec.kill_rendezvous()
        time.sleep(3)
        repaired = rec.start_rendezvous()
    elif event == "camera":
        broken = rec.kill_camera()
        time.sleep(2)
        # The new viewer is opened as the camera starts (its own start-up overlaps).
        early = rec.watch(VIEWER, 0.5, wait=55)
        repaired = rec.start_camera()
    elif event == "flush":
        lab.remap(rec.camera_site)
    elif event == "moved":
        lab.roam("symmetric")  # plugged in elsewhere: new address, NAT and route
        broken = repaired = time.monotonic()
    elif event in ("upgrade", "birthday", "sweep"):
        relayed = _relayed(rec)
        if event == "upgrade":
            unblock_direct(lab, CAMERA, VIEWER)
        broken = repaired = time.monotonic()
        while relayed and time.monotonic() < repaired + 70:
            time.sleep(0.2)
            relayed = _relayed(rec)
        upgraded = None if relayed else time.monotonic() - repaired
    if event == "camera":
        clock = early.finish(timeout=60).get("first_frame_clock")
        new = None if clock is None else float(clock) - repaired
    else:
        new = (rec.first_frame_after(VIEWER, repaired, 60) if TARGETS[event][1] is not None
               else None)
    time.sleep(max(0.0, repaired + 8 - time.monotonic()))  # the existing one settles too
    watch.proc.send_signal(2)  # SIGINT: it prints its stats
    result = watch.finish(timeout=30)
    if event == "rendezvous":
        gaps = [g[1] - g[0] for g in result.get("gaps", []) if g[1] >= broken]
        existing: float | None = max(gaps, default=0.0)
    elif event in ("upgrade", "birthday", "sweep"):
        # The viewer's longest pause between frames over the whole session, the
        # move included (its gaps list only holds pauses over 0.25 s).
        existing = None if upgraded is None else (result.get("max_gap_ms") or 0.0) / 1000
    started_relayed: bool | None = None
    if event == "sweep":
        # The sweep is over within about a second of ICE completing, often before the
        # camera's status is first read: the viewer's own record says where its first
        # frame came from and when (after it) the media moved.
        started_relayed = "relay" in (result.get("local_candidate"),
                                      result.get("remote_candidate"))
        moved = result.get("moved_after_s")
        upgraded = float(moved) if started_relayed and moved is not None else None
        existing = (result.get("max_gap_ms") or 0.0) / 1000
    else:
        existing = video_back(result, repaired, broken)
    if event in ("moved", "birthday", "sweep"):
        rec.kill_camera()
        rec.camera_site = CAMERA
        rec.start_camera()
    # For a rendezvous restart, where any pause fell (seconds from the server listening
    # again; the new viewer starts then) and what the machine and the viewer's receiver
    # were doing: what a pause can be attributed to.
    context: dict[str, Any] = {}
    if event == "rendezvous":
        context = {"gaps_from_repair_s": [[round(a - repaired, 3), round(b - repaired, 3)]
                                          for a, b in result.get("gaps", []) if b >= broken],
                   "load1": round(os.getloadavg()[0], 2),
                   "playout": result.get("playout")}
    return {"existing_s": None if existing is None else round(existing, 3),
            "new_s": None if new is None else round(new, 3),
            **context,
            **({"upgraded_after_s": None if upgraded is None else round(upgraded, 2)}
               if event in ("upgrade", "birthday", "sweep") else {}),
            **({"started_relayed": started_relayed} if started_relayed is not None else {}),
            "sessions": result.get("sessions"), "last_cause": result.get("last_cause")}


def _natcheck(lab: Any, rec: Any, site: str) -> None:
    """``peercam natcheck`` in the viewer's ``site``: it saves the allocation the
    viewer's offers there then say (``symmetric sequential STEP WINDOW``)."""
    from tests.lab.matrix import PEERCAM

    proc = lab.popen(site, [*PEERCAM, "natcheck", "--stun", "203.0.113.1:3479", "--json"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rec.env)
    out, err = proc.communicate(timeout=90)
    if proc.returncode != 0:
        raise RuntimeError(f"natcheck in {site} failed: {err.strip()[-300:]}")


def _learned(rec: Any, text: str, timeout: float = 30.0) -> None:
    """Wait until the camera's NAT check says ``text`` (it punches only once it knows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = (rec.camera_status().get("nat") or {}).get("summary") or ""
        if text in summary:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the camera's NAT check did not say {text!r} within {timeout:.0f} s")


def _relayed(rec: Any) -> bool:
    """Whether the camera's one viewer session goes through the relay."""
    viewers = rec.camera_status()["viewers"]
    return bool(viewers) and bool(viewers[0].get("relayed"))


def _describe(trials: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, Any]:
        values = [t[key] for t in trials if t[key] is not None]
        missing = sum(t[key] is None for t in trials)
        if not values:
            return {"n": 0, "failed": missing}
        return {"n": len(values), "median": round(statistics.median(values), 2),
                "worst": round(max(values), 2), "failed": missing}

    described = {"existing": stats("existing_s"), "new": stats("new_s")}
    if any("upgraded_after_s" in t for t in trials):
        described["upgraded"] = stats("upgraded_after_s")
    return described


def _cell(stats: dict[str, Any]) -> str:
    if not stats.get("n"):
        return "– " if not stats.get("failed") else f"never ({stats['failed']} runs)"
    text = f"{stats['median']} / {stats['worst']} s"
    if stats.get("failed"):
        text += f" ({stats['failed']} runs never)"
    return text


def _target(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    if value == 0.0 and kind == "existing":
        return "never interrupted"
    return f"≤ {value:g} s"


def _new_cell(event: str, stats: dict[str, Any]) -> str:
    return "–" if TARGETS[event][1] is None else _cell(stats)


def headline(result: dict[str, Any]) -> str:
    parts = []
    for event, data in result["events"].items():
        parts.append(f"{event} {_cell(data['existing'])} (new {_new_cell(event, data['new'])})")
    return "recovery: " + "; ".join(parts)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    events = list(result["events"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, event in enumerate(events):
        trials = result["events"][event]["trials"]
        existing = [t["existing_s"] for t in trials if t["existing_s"] is not None]
        new = [t["new_s"] for t in trials if t["new_s"] is not None]
        ax.scatter([i - 0.12] * len(existing), existing, color="#4477aa", s=14,
                   label="existing viewer" if i == 0 else None)
        ax.scatter([i + 0.12] * len(new), new, color="#cc6677", s=14,
                   label="new viewer" if i == 0 else None)
        target = TARGETS[event][0]
        if target:
            ax.hlines(target, i - 0.3, i + 0.05, color="#4477aa", linestyle="--")
    ax.set_xticks(range(len(events)), [LABELS[e].replace("camera ", "") for e in events],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("seconds after the repair")
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "recovery.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


BREAKDOWN = [
    "Where a restart's seconds go (from the camera's and the rendezvous' logs in the lab, "
    "and the same run on loopback): the camera process needs about 0.6-0.8 s for its "
    "imports and config and 0.15 s more to start its source and link, and is registered "
    "0.9-1.0 s after it was started. It then answers at once: an offer waits for the "
    "camera's NAT check only until one STUN answer shows that UDP gets out (before, it "
    "waited for the whole RFC 5780 run, about 4 s behind a filtering NAT, cut off after "
    "3 s by the next 1 s tick: that was 3-4 s of the old 4.3 s). A `peercam view` "
    "process needs 1.2-1.4 s "
    "for its imports on this shared machine before it can offer; offer to first frame "
    "is 0.1-0.4 s. A viewer that finds the camera offline sends `watch` and offers the "
    "moment the rendezvous says `online` (before, it retried on a timer, or a new "
    "process was started). After a rendezvous restart the camera's next attempt comes "
    "within 1 s (jittered: the short cap after a working registration drops and while "
    "the server refuses).",
]


def _missed_lines(result: dict[str, Any]) -> list[str]:
    """Each target the worst trial missed, and by how much; the stored notes on why."""
    lines = []
    for event, data in result["events"].items():
        for kind, target in zip(("existing", "new"), TARGETS[event], strict=True):
            stats = data[kind]
            if target is None:
                continue
            what = "existing viewer" if kind == "existing" else "new viewer"
            if stats.get("failed"):
                lines.append(f"- {LABELS[event]}, {what}: {stats['failed']} of "
                             f"{len(data['trials'])} trials never got video back")
            if stats.get("n") and stats["worst"] > target:
                share = sum(t[f"{kind}_s"] is not None and t[f"{kind}_s"] > target
                            for t in data["trials"])
                lines.append(f"- {LABELS[event]}, {what}: worst {stats['worst']} s against "
                             f"{_target(target, kind)} (by {stats['worst'] - target:.2f} s; "
                             f"{share} of {len(data['trials'])} trials over, median "
                             f"{stats['median']} s)")
    notes = result.get("notes", {})
    out = ["Targets missed:", "", *lines] if lines else ["No target missed.", ""]
    if lines:
        out.append("")
    for event, note in notes.items():
        if event in result["events"]:
            missed = any(line.startswith(f"- {LABELS[event]},") for line in lines)
            out += [f"{'Why' if missed else 'About'} ({LABELS[event]}): {note}", ""]
    return out


def _measured_lines(result: dict[str, Any]) -> list[str]:
    """One line per invocation: which events, how many trials, when, on which commit."""
    lines = []
    for event, data in result["events"].items():
        for ran in data.get("measured", []):
            when = ran.get("started_utc", "?")
            if ran.get("ended_utc"):
                when += f"–{ran['ended_utc'][-5:]} UTC"
            lines.append(f"- {LABELS[event]}: {ran.get('runs', '?')} trials, measured {when} "
                         f"at commit `{ran.get('commit', 'unknown')}`; new viewer: "
                         f"{ran.get('new_viewer', OLD_NEW_VIEWER)}")
    if lines:
        machine = result.get("machine_note")
        lines.insert(0, f"Measured on ({machine}):" if machine else "Measured on:")
        lines.insert(1, "")
    return lines


_OPENED = (
    "Relayed session moved to a direct path: the two NATs drop each other's UDP "
    "while the viewer starts (so ICE selects coturn's relay), then let it through; "
    "the session moved to the direct pair {moved} after that "
    "({failed} of {trials} stayed relayed), by the "
    "background checks at 1, 2, 4, 8, 15, 30 and 60 s after ICE completed "
    "(`camera/ice.py`). Its \"existing viewer\" figure is the viewer's longest pause "
    "between two frames over the whole session, the move included (target 100 ms).")
_BIRTHDAY = (
    "Birthday technique: the camera behind the NAT that picks each new flow's port at "
    "random, the viewer behind a port-restricted one: plain ICE has no direct path, so "
    "the session starts on coturn's relay. With the first background round the camera "
    "opens 256 sockets towards the viewer's public address and the viewer probes 2,048 "
    "random ports of the camera's; the session moved to the direct pair {moved} after "
    "its first frame ({failed} of {trials} stayed relayed). "
    "Its \"existing viewer\" figure is the viewer's longest pause between two frames "
    "over the whole session, the move included (target 100 ms).")
_SWEEP = (
    "Sequential sweep: the camera and the viewer behind two different NATs that each "
    "give a new flow the next port (the viewer ran `peercam natcheck` there once, so its "
    "offers say so): both sides' predictions are right, but each side's own checks "
    "moved its NAT's counter on, so plain ICE's checks and the predicted candidates usually "
    "miss and the session starts on coturn's relay. With the first background round each "
    "side sweeps "
    "the other's next 128 ports, in orders that cross. {started} of {trials} sessions "
    "started on the relay (the viewer's first frame came through it); they moved to the "
    "direct pair {moved} after that first frame ({failed} stayed relayed). "
    "Its \"existing viewer\" figure is the viewer's longest pause between two frames "
    "over the whole session, the move included (target 100 ms).")


def _upgrade_lines(result: dict[str, Any]) -> list[str]:
    """How soon a relayed session moved to a direct path: one that opened under it
    ("upgrade"), and the birthday technique's ("birthday")."""
    lines: list[str] = []
    for event, text in (("upgrade", _OPENED), ("birthday", _BIRTHDAY), ("sweep", _SWEEP)):
        data = result["events"].get(event)
        if not data or "upgraded" not in data:
            continue
        up = data["upgraded"]
        moved = (f"median {up['median']} s, worst {up['worst']} s" if up.get("n")
                 else "never")
        started = sum(1 for t in data["trials"] if t.get("started_relayed", True))
        failed = up.get("failed", 0) - (len(data["trials"]) - started)
        lines += [text.format(moved=moved, failed=failed, trials=len(data["trials"]),
                              started=started), ""]
    return lines


LAB_TESTS = (
    "The NAT-lab tests (`tests/lab/test_recovery.py`, in CI) break each of these with a "
    "CLI viewer and headless Chromium (the web viewer) watching at once, link flaps of "
    "5, 30 and 120 s on the camera's and on the viewer's side included, and assert that "
    "both viewers' video came back and the camera's sessions, descriptors and asyncio "
    "tasks returned to their baseline (a restarted camera: its sessions); the times above "
    "are the CLI viewer's, from this benchmark.")


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Recovery after faults (NAT lab)",
        "",
        "The camera behind a port-restricted NAT, the viewer (`peercam view`) behind "
        "another; rendezvous, STUN and coturn on the lab's public segment; 320x240 at "
        "400 kbit/s. Trials per event as counted in the table (n); median / worst, seconds "
        "after "
        "the repair (the link back, the process listening or started, the NAT flushed, "
        "the camera plugged in elsewhere). \"Existing viewer\": its frame log's gap "
        "across the fault (0: no gap); \"new viewer\": its first frame, the viewer as "
        "listed under the table for each invocation. Real kernel NATs; no added delay or "
        "loss.",
        "",
        "| event | n | existing viewer: target | measured | new viewer: target | measured |",
        "|---|---|---|---|---|---|",
    ]
    for event, data in result["events"].items():
        existing_target, new_target = TARGETS[event]
        lines.append(f"| {LABELS[event]} | {len(data['trials'])} | "
                     f"{_target(existing_target, 'existing')} | "
                     f"{_cell(data['existing'])} | {_target(new_target, 'new')} | "
                     f"{_new_cell(event, data['new'])} |")
    lines += ["", *_upgrade_lines(result), *_missed_lines(result), *_measured_lines(result),
              "", *BREAKDOWN, "", LAB_TESTS, "", "![recovery](bench/recovery.png)", ""]
    return lines
