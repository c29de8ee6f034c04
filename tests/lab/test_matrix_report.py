"""The NAT matrix's later-session aggregation and report (``trial_summary``,
``write_report``) on made-up cells: no lab is started."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.natlab.lab import Lab
from tests.lab.matrix import Cell, Trial, trial_summary, write_report


def direct_cell(camera: str, viewer: str) -> Cell:
    return Cell(camera, viewer, True, frames=60, ttff_ms=200.0, local_candidate="host",
                remote_candidate="srflx")


def relayed_cell(camera: str, viewer: str, trials: list[Trial]) -> Cell:
    return Cell(camera, viewer, False, frames=60, ttff_ms=400.0, local_candidate="relay",
                remote_candidate="srflx", trials=trials)


def moved(after: float, gap: float) -> Trial:
    return Trial(60.0, frames=1800, moved_after_s=after, direct_at_end=True,
                 move_gap_ms=gap, max_gap_ms=max(gap, 90.0), load1=2.0 + after / 100)


def stayed() -> Trial:
    return Trial(60.0, frames=1800, max_gap_ms=80.0)


def started_direct() -> Trial:
    return Trial(60.0, frames=1800, first_direct=True, moved_after_s=0.0, direct_at_end=True,
                 max_gap_ms=70.0)


def cells() -> list[Cell]:
    return [
        direct_cell("open", "open-2"),
        # Sequential symmetric on the camera's side: 9 of 10 direct, one stayed relayed.
        relayed_cell("symmetric-seq", "symmetric-2", [moved(2.0 + i, 40.0) for i in range(9)]
                     + [stayed()]),
        # Random symmetric × port-restricted: 6 of 10 (one of them direct from its start).
        relayed_cell("symmetric", "port-restricted-2",
                     [moved(3.0, 50.0)] * 4 + [moved(70.0, 30.0)] + [started_direct()]
                     + [moved(4.0, 150.0)] + [stayed()] * 3),
        # Its ipv6 twin (the ipv6 site's IPv4 is port-restricted): 8 of 10.
        relayed_cell("ipv6", "symmetric-2", [moved(5.0, 60.0)] * 8 + [stayed()] * 2),
        # UDP blocked: one session, which could only stay relayed.
        relayed_cell("udp-blocked", "open-2", [stayed()]),
    ]


def test_the_summary_counts_sessions_per_cell_and_against_the_targets() -> None:
    summary = trial_summary(cells())
    assert summary["trials_per_cell"] == 10
    rows = {(r["camera"], r["viewer"]): r for r in summary["cells"]}
    assert ("open", "open-2") not in rows  # direct at its first frame: no later sessions
    seq = rows[("symmetric-seq", "symmetric-2")]
    assert (seq["direct"], seq["trials"]) == (9, 10)
    assert seq["median_move_s"] == 6.0  # of 2..10 s
    rnd = rows[("symmetric", "port-restricted-2")]
    # A move after 70 s is not direct after 60 s; the one that started direct is.
    assert (rnd["direct"], rnd["first_direct"]) == (6, 1)
    assert rnd["median_move_s"] == 3.0  # the moves from a relay: 3 ×4, 4, 70
    assert summary["sequential"] == {"cells": 1, "sessions": (9, 10),
                                     "short": ["symmetric-seq→symmetric-2"], "met": False}
    # Each cell by its share: (0.6 + 0.8) / 2.
    assert summary["random_port_restricted"]["share"] == pytest.approx(0.7)
    assert summary["random_port_restricted"]["met"] is True
    assert summary["random_port_restricted"]["sessions"] == (14, 20)
    # 1 + 0.9 + 0.6 + 0.8 + 0 over 5 cells; over the 4 that pass UDP.
    assert summary["overall"]["share"] == pytest.approx(3.3 / 5)
    assert summary["overall"]["udp_share"] == pytest.approx(3.3 / 4)
    gap = summary["move_gap"]
    # Every move from a relay, the late one included; the session that started direct
    # did not move.
    assert (gap["moves"], gap["measured"], gap["over_target"]) == (23, 23, 1)
    assert (gap["max_ms"], gap["met"]) == (150.0, False)


def test_only_a_random_symmetric_nat_counts_against_a_port_restricted_one() -> None:
    summary = trial_summary([
        relayed_cell("port-restricted", "symmetric-2", [moved(3.0, 40.0)] * 10),
        # The sequential one is the other target's: its sessions are not counted here.
        relayed_cell("symmetric-seq", "port-restricted-2", [stayed()] * 10),
        relayed_cell("port-restricted", "symmetric-seq-2", [stayed()] * 10),
    ])
    assert summary["random_port_restricted"]["cells"] == 1
    assert summary["random_port_restricted"]["share"] == 1.0
    assert summary["sequential"]["sessions"] == (0, 20)


def test_the_targets_met_when_every_session_is_direct_in_time() -> None:
    good = [relayed_cell("symmetric-seq", "port-restricted-2", [moved(1.0, 40.0)] * 10),
            relayed_cell("symmetric", "ipv6-2", [moved(3.0, 66.0)] * 6 + [stayed()] * 4)]
    summary = trial_summary(good)
    assert summary["sequential"]["met"] and summary["random_port_restricted"]["met"]
    assert summary["move_gap"]["met"]
    # A move whose gap the viewer did not report cannot count as meeting the target.
    good[0].trials[0].move_gap_ms = None
    assert not trial_summary(good)["move_gap"]["met"]


def test_the_report_shows_k_of_n_and_the_targets(tmp_path: Path) -> None:
    lab = cast(Lab, SimpleNamespace(up_seconds=1.0, behaviour={}))
    md, png = tmp_path / "nat-matrix.md", tmp_path / "nat-matrix.png"
    write_report(cells(), lab, md, png, when="2026-12-07 18:00–18:30 UTC")
    text = md.read_text()
    assert "## Later sessions of the relayed cells: 10 per cell" in text
    assert "Run 2026-12-07 18:00–18:30 UTC" in text
    assert "| symmetric-seq | symmetric-2 | 9 of 10 | 0 | 6.0 | 40 / 40 | 90 |" in text
    assert "| udp-blocked | open-2 | 0 of 1 | 0 |" in text
    assert "→ **D** in 6/10, median 3.0 s" in text  # the matrix's own cell
    assert "≥ 60%: 70% (MET" in text
    assert "every session: MISSED" in text
    assert "more than 100 ms: MISSED (23 moves measured of 23" in text
    assert "the 7 later sessions that stayed on their relay had a longest gap" in text
    assert "of 80 to 80 ms, median 80 ms" in text
    # The existing summary, each cell counted by its share: 1 + .9 + .6 + .8 of 5.
    assert "after 60 s 3.3/5 (66%)" in text
    # The load the sessions ran under (the made-up moves' ends: 2.02 to 2.7).
    assert "median 2.0, highest 2.7" in text
    data: dict[str, Any] = json.loads(md.with_suffix(".json").read_text())
    assert data["when"] == "2026-12-07 18:00–18:30 UTC"
    assert data["summary"]["random_port_restricted"]["sessions"] == [14, 20]
    back = [Cell.from_dict(c) for c in data["cells"]]
    assert back[1].trials[0] == moved(2.0, 40.0)
    assert png.exists()
