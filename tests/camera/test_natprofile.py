"""The viewer's saved NAT measurement and the predicted candidates it adds to an offer."""

from __future__ import annotations

import json
import logging
import stat
import threading
import time
from pathlib import Path

import pytest

from camera.client import natprofile
from camera.client.natprofile import MAX_AGE, PROFILE_FILE, SavedNat, with_prediction
from camera.punch import PREDICTED_FOUNDATION, NatProfile
from services.stun.discovery import NatReport

OFFER = "\r\n".join([
    "v=0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "a=candidate:1 1 udp 2130706431 192.168.1.20 40000 typ host",
    "a=candidate:2 1 udp 1694498815 203.0.113.50 50000 typ srflx raddr 192.168.1.20 rport 40000",
    "a=end-of-candidates",
    "",
])


def report(public: str | None, allocation: str | None, step: int | None) -> NatReport:
    return NatReport(
        server=("203.0.113.1", 3479), local_address=("192.168.1.20", 40000),
        mapped_address=(public, 50000) if public else None, other_address=None,
        mapping="address-and-port-dependent", filtering="address-and-port-dependent",
        hairpinning=False, nat_type="symmetric", allocation=allocation,
        mapped_ports=(50000, 50001, 50002), allocation_step=step)


def predicted_ports(sdp: str) -> list[int]:
    return [int(line.split()[5]) for line in sdp.split("\r\n")
            if line.startswith(f"a=candidate:{PREDICTED_FOUNDATION}")]


def test_a_saved_sequential_nat_adds_the_next_ports_on_its_own_network(tmp_path: Path) -> None:
    saved = natprofile.save(tmp_path, report("203.0.113.50", "sequential", 1), 1000.0)
    assert saved == SavedNat("203.0.113.50", "sequential", 1, 1000.0)
    mode = stat.S_IMODE((tmp_path / PROFILE_FILE).stat().st_mode)
    assert mode == 0o600
    loaded = natprofile.load(tmp_path, 1000.0 + 60)
    assert loaded == (saved,)
    sdp = with_prediction(OFFER, loaded)
    assert predicted_ports(sdp) == [50001 + k for k in range(8)]
    # Everything the offer had is still there, in order; the predictions follow the srflx.
    assert [line for line in sdp.split("\r\n") if not line.startswith(
        f"a=candidate:{PREDICTED_FOUNDATION}")] == OFFER.split("\r\n")
    assert all(" 203.0.113.50 " in line for line in sdp.split("\r\n")
               if line.startswith(f"a=candidate:{PREDICTED_FOUNDATION}"))


def test_no_prediction_elsewhere_for_other_allocators_or_when_stale(tmp_path: Path) -> None:
    other_network = SavedNat("198.51.100.7", "sequential", 1, 0.0)
    assert with_prediction(OFFER, (other_network,)) == OFFER
    assert with_prediction(OFFER, (SavedNat("203.0.113.50", "random", None, 0.0),)) == OFFER
    assert with_prediction(OFFER, ()) == OFFER
    natprofile.save(tmp_path, report("203.0.113.50", "sequential", 2), 1000.0)
    assert natprofile.load(tmp_path, 1000.0 + MAX_AGE + 1) == ()
    assert natprofile.load(tmp_path, 1000.0 - 10) == ()  # from the future: a clock jumped
    assert natprofile.save(tmp_path / "x", report(None, None, None), 1.0) is None
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", [
    "not json", "[]", json.dumps({"networks": {}}), json.dumps({"networks": [1]}),
    json.dumps({"networks": [{"public_ip": "1.2.3.4"}]}),
    *(json.dumps({"networks": [entry]}) for entry in (
        {"public_ip": "1.2.3.4", "allocation": 7, "step": 1, "measured_at": 1},
        {"public_ip": "1.2.3.4", "allocation": "sequential", "step": "1", "measured_at": 1},
        {"public_ip": "1.2.3.4", "allocation": "sequential", "step": 1,
         "measured_at": "NaN"})),
])
def test_a_broken_file_is_reported_and_ignored(
        tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / PROFILE_FILE).write_text(content)
    with caplog.at_level(logging.WARNING):
        assert natprofile.load(tmp_path, 2.0) == ()
    assert "run peercam natcheck again" in caplog.text
    assert natprofile.load(tmp_path / "missing", 2.0) == ()


def test_a_step_the_planner_refuses_leaves_the_offer_alone() -> None:
    assert with_prediction(OFFER, (SavedNat("203.0.113.50", "sequential", 99999, 0.0),)) \
        == OFFER


def test_each_network_keeps_its_own_measurement(tmp_path: Path) -> None:
    natprofile.save(tmp_path, report("203.0.113.50", "sequential", 1), 1000.0)
    natprofile.save(tmp_path, report("198.51.100.7", "random", None), 1001.0)
    natprofile.save(tmp_path, report("203.0.113.50", "sequential", 2), 1002.0)  # again
    saved = natprofile.load(tmp_path, 1003.0)
    assert [(n.public_ip, n.step) for n in saved] == [("203.0.113.50", 2),
                                                      ("198.51.100.7", None)]
    assert natprofile.measured_here(OFFER, saved) == saved[0]
    for k in range(natprofile.MAX_NETWORKS + 3):
        natprofile.save(tmp_path, report(f"192.0.2.{k}", None, None), 2000.0 + k)
    assert len(natprofile.load(tmp_path, 2100.0)) == natprofile.MAX_NETWORKS


def test_natchecks_saving_at_once_keep_every_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow card: each write takes 50 ms, so eight saves overlap unless they queue.
    slow_write = natprofile.write_private

    def write_private(path: Path, data: bytes) -> None:
        time.sleep(0.05)
        slow_write(path, data)

    monkeypatch.setattr(natprofile, "write_private", write_private)
    start = threading.Barrier(8)

    def measure(k: int) -> None:
        start.wait()
        natprofile.save(tmp_path, report(f"192.0.2.{k}", "random", None), 1000.0)

    threads = [threading.Thread(target=measure, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(n.public_ip for n in natprofile.load(tmp_path, 1010.0)) == \
        sorted(f"192.0.2.{k}" for k in range(8))


def test_the_profile_said_in_the_offer_is_only_the_one_measured_here() -> None:
    random_here = SavedNat("203.0.113.50", "random", None, 0.0)
    elsewhere = SavedNat("198.51.100.7", "random", None, 0.0)
    assert natprofile.profile_here(OFFER, (elsewhere, random_here)) == NatProfile(True, "random")
    assert natprofile.profile_here(OFFER, (SavedNat("203.0.113.50", None, None, 0.0),)) \
        == NatProfile(False)
    assert natprofile.profile_here(OFFER, (elsewhere,)) is None
    assert natprofile.profile_here(OFFER, ()) is None
