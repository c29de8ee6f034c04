"""bench/labttff.py's bookkeeping: which viewer kinds run, where a trial's time went."""

from __future__ import annotations

import argparse

import pytest

from bench import labttff


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    labttff.add_arguments(p)
    return p.parse_args(list(argv))


def test_kinds_run_in_table_order_and_unknown_ones_are_refused() -> None:
    assert labttff.select_kinds(args()) == ["cli", "chromium"]
    assert labttff.select_kinds(args("--before")) == ["cli_before", "cli", "chromium"]
    assert labttff.select_kinds(args("--kinds", "chromium,chromium_before")) == [
        "chromium_before", "chromium"]
    with pytest.raises(SystemExit, match="firefox"):
        labttff.select_kinds(args("--kinds", "chromium,firefox"))


def test_a_trials_phases_come_from_its_marks_and_ice_events() -> None:
    timeline = {"offer": 40, "answer": 90, "connected": 160, "firstFrame": 175}
    created = 1_000_000.0  # the page's peer connection, ~ its clock's start (epoch ms)
    diag = {"pcs": [{"created": created, "events": [
        [created + 92, "setRemote", "answer"],
        [created + 140, "ice", "connected"],
        [created + 150, "ice", "connected"],  # the first one counts
        [created + 158, "connection", "connected"]]}]}
    assert labttff.phases({"timeline": timeline, "diag": diag}) == {
        "offer": 40, "answer": 50, "ice": 50.0, "dtls": 18.0, "frame": 15}
    # Without --diag, ICE and DTLS are one phase.
    assert labttff.phases({"timeline": timeline}) == {
        "offer": 40, "answer": 50, "ice": 70, "frame": 15}
    rows = labttff.breakdown({"cells": [{
        "camera": "a", "viewer": "b", "expected": "direct", "turn_transport": "udp",
        "chromium": {"summary": {"p50": 175.0},
                     "trials": [{"ttff_ms": 175.0, "timeline": timeline}]}}]})
    assert rows[-1] == "| direct: a → b | Chromium | 40 | 50 | 70 | — | 15 | 175.0 |"
