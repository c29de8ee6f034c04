"""Trickle ICE from the viewer, end to end: real rendezvous, real camera, real aiortc.

The viewer's offer carries no candidate; the camera can learn the viewer's
address from the signed ``candidate`` messages only (or, failing that, as a
peer-reflexive address from the viewer's own checks: the control case).
"""

from __future__ import annotations

from tests.conftest import Stack
from tests.e2e.trickle import watch_trickled


async def test_the_camera_applies_trickled_candidates_and_video_flows(stack: Stack) -> None:
    camera = await stack.camera()
    seen = await watch_trickled(stack, camera)
    assert seen.frames >= 15
    assert "a=candidate" not in seen.offer_sdp
    assert seen.camera_trickled == len(seen.candidates) + 1  # + end-of-candidates
    # The camera paired with the viewer's host candidate as trickled, by its type:
    # not a peer-reflexive address learned from the viewer's checks.
    local, remote, address = seen.camera_pair
    assert (local, remote) == ("host", "host"), seen.camera_pair
    assert any(f" {address} " in line for line in seen.candidates)
    assert camera.refusals == 0 and seen.errors == []


async def test_without_the_trickle_the_camera_only_learns_a_peer_reflexive_address(
    stack: Stack,
) -> None:
    # The control for the test above: the same stripped offer, nothing trickled.
    camera = await stack.camera()
    seen = await watch_trickled(stack, camera, trickle=False)
    assert seen.frames >= 15
    assert seen.camera_trickled == 0
    assert seen.camera_pair[1] == "prflx", seen.camera_pair
