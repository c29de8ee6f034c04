"""The Janus and relay benchmarks' arithmetic and pages: rounds, their spread, runs folded in.

(The benchmarks themselves run at smoke size in tests/bench/test_smoke.py.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import janus, relay

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "docs" / "bench"


def sweep(rnd: int, peercam_slope: float, janus_slope: float) -> list[dict[str, Any]]:
    """One round's rows: each server's CPU a straight line from its baseline."""
    rows = []
    for n in (1, 4, 8):
        for server, base, slope in (("peercam", 0.10, peercam_slope), ("janus", 0.0, janus_slope)):
            rows.append({"server": server, "viewers": n, "round": rnd, "baseline_core": base,
                         "cpu_core": round(base + slope * n, 6), "kbit_s": 2000.0,
                         "packets_s_sent": 230.0 * n})
    return rows


def test_each_round_has_its_own_ratio_and_the_spread_is_over_the_rounds() -> None:
    rounds = [janus.round_figures(sweep(0, 0.005, 0.010), 0),
              janus.round_figures(sweep(1, 0.010, 0.005), 1),
              janus.round_figures(sweep(2, 0.006, 0.006), 2)]
    assert [f["marginal_ratio"] for f in rounds] == [0.5, 2.0, 1.0]
    # Same packets for both servers: per packet the ratio is the CPU ratio again.
    assert [f["per_packet_ratio"] for f in rounds] == [0.5, 2.0, 1.0]
    assert rounds[0]["first"] == "peercam" and rounds[0]["packets_s_per_viewer"] == 230.0
    spread = janus.spread(rounds)["marginal_ratio"]
    assert spread == {"n": 3, "median": 1.0, "min": 0.5, "max": 2.0, "over_1": 1}
    assert janus.order(0) == ("peercam", "janus") and janus.order(1) == ("janus", "peercam")


def test_a_round_where_janus_costs_nothing_measurable_is_left_out_of_the_spread() -> None:
    rounds = [janus.round_figures(sweep(0, 0.005, 0.0), 0),
              janus.round_figures(sweep(1, 0.004, 0.005), 1)]
    assert rounds[0]["marginal_ratio"] is None
    assert janus.spread(rounds)["marginal_ratio"] == {
        "n": 1, "median": 0.8, "min": 0.8, "max": 0.8, "over_1": 0}


def with_rounds(result: dict[str, Any], video: str, ratios: list[float]) -> dict[str, Any]:
    """The stored result, as if measured at ``video`` with rounds of these ratios."""
    other = copy.deepcopy(result)
    other["video"] = video
    other["rows"] = [r for rnd, ratio in enumerate(ratios)
                     for r in sweep(rnd, 0.005 * ratio, 0.005)]
    other["rounds"] = [janus.round_figures([r for r in other["rows"] if r["round"] == rnd], rnd)
                       for rnd in range(len(ratios))]
    other["spread"] = janus.spread(other["rounds"])
    other["marginal_ratio"] = other["spread"]["marginal_ratio"]["median"]
    return other


def test_a_run_at_another_bitrate_is_folded_in_replacing_the_earlier_line(
        tmp_path: Path) -> None:
    stored = json.loads((STORED / "janus.json").read_text())
    main = tmp_path / "janus.json"
    earlier = {**janus.summary_of(stored), "video": "1920x1080@30 4 Mbit/s", "rounds": [],
               "spread": None, "note": "earlier"}
    main.write_text(json.dumps({**stored, "other_runs": [earlier]}))
    run = tmp_path / "other.json"
    run.write_text(json.dumps(with_rounds(stored, "1920x1080@30 4 Mbit/s", [0.9, 1.2, 0.95])))
    folded = janus.fold(main, run)
    assert [len(o["rounds"]) for o in folded["other_runs"]] == [3]  # the earlier line went
    assert json.loads(main.read_text())["other_runs"] == folded["other_runs"]
    raw = tmp_path / folded["other_runs"][0]["raw"]  # its raw samples kept beside it
    assert json.loads(raw.read_text())["rounds"] == folded["other_runs"][0]["rounds"]
    page = "\n".join(janus.markdown(folded))
    line = next(x for x in page.splitlines() if x.startswith("| 1920x1080@30 4 Mbit/s"))
    assert "**0.95** (0.9–1.2)" in line and "0.9, 1.2, 0.95" in line
    assert "(1 of 3 rounds over 1.0)" in line
    with pytest.raises(SystemExit, match="run it as the main result"):
        janus.fold(main, main)


def test_relay_videos_are_parsed_and_a_one_video_result_still_renders() -> None:
    assert relay.parse_videos("1280x720:2000000,1920x1080:4000000") == [
        (1280, 720, 2_000_000), (1920, 1080, 4_000_000)]
    with pytest.raises(SystemExit, match="1080p"):
        relay.parse_videos("1080p")
    stored = json.loads((STORED / "relay.json").read_text())
    one = {k: v for k, v in stored.items() if k != "videos"}
    videos = relay.videos_of(stored)
    assert relay.videos_of(one)[0]["setups"] == videos[0]["setups"]
    page = relay.markdown(stored)
    columns = page[next(i for i, x in enumerate(page) if x.startswith("| | "))]
    assert columns.count("|") == 2 + sum(len(v["setups"]) for v in videos)
    assert any(x.startswith("| packets/s per viewer") for x in page)


def test_a_relay_run_on_a_clip_carries_the_last_measured_latency() -> None:
    stored = json.loads((STORED / "relay.json").read_text())
    live, clip = copy.deepcopy(stored), copy.deepcopy(stored)
    for result, value in ((live, 9.5), (clip, None)):
        result.pop("earlier_latency", None)
        for v in relay.videos_of(result):
            for s in v["setups"]:
                s["figures"].update(dict.fromkeys(relay.LATENCY, value))
    assert relay.measured_latency(live) and not relay.measured_latency(clip)
    carried = relay.earlier_latency(live)
    assert carried and all(e["latency_p50_relayed_ms"] == 9.5 for e in carried)
    clip["earlier_latency"] = carried
    assert relay.earlier_latency(clip) == carried  # a second clip run keeps them
    page = relay.markdown(clip)
    assert any("the last run that did" in x for x in page)
    assert not any(x.startswith("| latency p50") for x in page)
    assert sum(1 for x in page if "| 9.5 / 9.5 | 9.5 / 9.5 | 9.5 |" in x) == len(carried)


def test_relayed_viewers_getting_less_than_direct_ones_are_called_out() -> None:
    stored = json.loads((STORED / "relay.json").read_text())
    result = {**copy.deepcopy(stored), "coturn_max_bps": 500000}
    result.pop("videos", None)
    setup = result["setups"][0]
    figures = setup["figures"]
    figures["direct_payload_kbit_s"] = 4000.0
    figures["relayed_payload_kbit_s"] = 3700.0
    assert relay.starved(result, setup) is None
    figures["relayed_payload_kbit_s"] = 2500.0
    short = relay.starved(result, setup)
    assert short is not None and short["relayed"] == 2500.0 and short["out_pps"] >= 0
    page = "\n".join(relay.markdown(result))
    assert "**Relayed viewers starved**" in page and "`max-bps=500000`" in page
