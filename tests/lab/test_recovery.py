"""Sessions heal after faults, through real kernel NATs: the camera behind one home
router (port-restricted), the viewer behind another (port-restricted-2), the
matrix's rendezvous, STUN server and coturn on the public segment.

Each test breaks one thing while a ``peercam view`` watches, and asserts that
the viewer's video came back (read from its own frame log) and that nothing
leaked on the camera: its viewer sessions and its open descriptors return to
what they were. How fast it came back is measured by ``scripts/bench
recovery`` (medians and worst of many runs), not asserted here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from services.natlab import Lab
from tests.conftest import scaled
from tests.lab.conftest import CONNTRACK_UDP_TIMEOUT, needs_lab
from tests.lab.recovery import RecoveryLab, Watch, video_back

pytestmark = needs_lab

CAMERA, VIEWER = "port-restricted", "port-restricted-2"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Two home routers of the same kind, and a symmetric NAT to move the camera to."""
    with Lab(sites=[CAMERA, VIEWER, "symmetric"],
             conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def run(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecoveryLab]:
    with RecoveryLab(lab, tmp_path_factory.mktemp("recovery"), CAMERA) as recovery:
        yield recovery


def settled(run: RecoveryLab, viewers: int, fds: int | None, timeout: float = 60) -> None:
    """The camera is back to ``viewers`` sessions and about ``fds`` descriptors: a
    session replaced behind a broken path ends by ICE consent (~30 s), not at once."""
    deadline = time.monotonic() + scaled(timeout)
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = run.camera_status()
        sessions = status["viewers"]
        assert isinstance(sessions, list)
        if len(sessions) == viewers and (fds is None or run.camera_fds() <= fds + 4):
            return
        time.sleep(1)
    raise AssertionError(f"camera not settled: {status.get('viewers')}, "
                         f"{run.camera_fds()} fds (baseline {fds})")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seconds", [5, 30, 120])
@pytest.mark.parametrize("side", ["camera", "viewer"])
def test_a_link_flap_heals(run: RecoveryLab, lab: Lab, side: str, seconds: int) -> None:
    settled(run, 0, None)
    baseline = run.camera_fds()
    watch = run.watch(VIEWER, seconds + 25)
    run.wait_playing()
    fault = lab.link_down(CAMERA if side == "camera" else VIEWER, seconds)
    up_at = fault.wait(seconds + 30)
    result = watch.finish(timeout=seconds + 60)
    assert result.get("frames", 0) > 100, result
    back = video_back(result, up_at, fault.down_at)
    assert back is not None, result
    assert back < scaled(30), (back, result)
    settled(run, 0, baseline)


@pytest.mark.timeout(300)
def test_a_rendezvous_restart_never_interrupts_video(run: RecoveryLab) -> None:
    watch = run.watch(VIEWER, 14)
    run.wait_playing()
    killed = run.kill_rendezvous()
    run.wait_playing()
    listening = run.start_rendezvous()
    result = watch.finish(timeout=60)
    assert result.get("sessions") == 1 and result.get("frames", 0) > 200, result
    assert not [g for g in result["gaps"] if g[1] - g[0] > 0.5 and g[1] >= killed], result
    # A new viewer after the restart: the camera came back to the new process.
    assert run.first_frame_after(VIEWER, listening, scaled(20)) is not None


@pytest.mark.timeout(300)
def test_a_camera_restart_heals_the_viewer(run: RecoveryLab) -> None:
    settled(run, 0, None)
    watch = run.watch(VIEWER, 16)
    run.wait_playing()
    killed = run.kill_camera()
    time.sleep(2)
    started = run.start_camera()
    result = watch.finish(timeout=60)
    assert result.get("sessions", 0) >= 2, result
    back = video_back(result, started, killed)
    assert back is not None and back < scaled(30), result
    settled(run, 0, None)


@pytest.mark.timeout(300)
def test_a_nat_that_forgets_its_mapping_heals(run: RecoveryLab, lab: Lab) -> None:
    settled(run, 0, None)
    baseline = run.camera_fds()
    watch = run.watch(VIEWER, 14)
    run.wait_playing()
    flushed = time.monotonic()
    remapped = lab.remap(CAMERA)  # the camera's next packet leaves from a new port
    assert remapped, "the camera's NAT had no flow to remap"
    result = watch.finish(timeout=60)
    back = video_back(result, flushed, flushed)
    assert back is not None and back < scaled(30), result
    assert result.get("frames", 0) > 150, json.dumps(result)
    settled(run, 0, baseline)


@pytest.mark.timeout(300)
def test_a_camera_moved_to_another_site_heals(run: RecoveryLab, lab: Lab) -> None:
    # The same camera (same key and state) on the lab's roaming host, which is
    # plugged into one home network, then into another behind a symmetric NAT.
    run.kill_camera()
    lab.roam(CAMERA)
    run.camera_site = "roam"
    try:
        run.start_camera()
        watch = run.watch(VIEWER, 16)
        run.wait_playing()
        left = lab.roam("symmetric")  # a new address, a new NAT, a new default route
        assert left == CAMERA
        moved_at = time.monotonic()
        result = watch.finish(timeout=60)
        assert result.get("sessions", 0) >= 2, result
        back = video_back(result, moved_at, moved_at)
        assert back is not None and back < scaled(30), result
        settled(run, 0, None)
    finally:
        run.kill_camera()
        run.camera_site = CAMERA
        run.start_camera()


# -- the same faults with Chromium watching (the web viewer heals on its own) ------------


def browser_back(run: RecoveryLab, watch: Watch, broken_at: float, repaired_at: float,
                 seconds: float) -> dict[str, object]:
    result = watch.finish(timeout=seconds + 90)
    assert result.get("frames", 0) > 100 and not result.get("error"), result
    back = video_back(result, repaired_at, broken_at)
    assert back is not None and back < scaled(30), (back, result)
    return result


@pytest.mark.timeout(300)
def test_chromium_heals_after_the_camera_link_was_down_30_s(run: RecoveryLab, lab: Lab) -> None:
    settled(run, 0, None)
    watch = run.browser_watch(VIEWER, 30 + 25)
    run.wait_playing()
    fault = lab.link_down(CAMERA, 30)
    up_at = fault.wait(60)
    browser_back(run, watch, fault.down_at, up_at, 55)
    settled(run, 0, None)


@pytest.mark.timeout(300)
def test_chromium_keeps_playing_through_a_rendezvous_restart(run: RecoveryLab) -> None:
    settled(run, 0, None)
    watch = run.browser_watch(VIEWER, 14)
    run.wait_playing()
    killed = run.kill_rendezvous()
    time.sleep(2)
    run.start_rendezvous()
    result = browser_back(run, watch, killed, killed, 14)
    assert result.get("reconnects") == 0, result  # the same session throughout
    settled(run, 0, None)


@pytest.mark.timeout(300)
def test_chromium_heals_after_a_camera_restart(run: RecoveryLab) -> None:
    settled(run, 0, None)
    watch = run.browser_watch(VIEWER, 16)
    run.wait_playing()
    killed = run.kill_camera()
    time.sleep(2)
    started = run.start_camera()
    result = browser_back(run, watch, killed, started, 16)
    assert (result.get("reconnects") or 0) >= 1, result  # a new session took over
    settled(run, 0, None)
