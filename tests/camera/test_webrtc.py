"""Negotiation details: H.264 only, the real profile-level-id, explicit ICE servers."""

from __future__ import annotations

import asyncio
import re

from aiortc import RTCSessionDescription

from camera.broadcaster import Broadcaster
from camera.frames import Layer
from camera.session import ViewerSession
from camera.webrtc import make_peer_connection, prefer_h264, set_profile_level_id

ANSWER = (
    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97 99\r\n"
    "a=fmtp:97 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
)


def test_profile_level_id_is_rewritten_to_what_the_encoder_emits() -> None:
    fixed = set_profile_level_id(ANSWER, "42C028")
    assert "profile-level-id=42c028" in fixed  # constrained baseline, level 4.0
    assert "profile-level-id=42001f" in fixed  # the plain-baseline line is left alone


def test_profile_level_id_is_left_alone_when_unknown_or_not_baseline() -> None:
    assert set_profile_level_id(ANSWER, None) == ANSWER
    assert set_profile_level_id(ANSWER, "64001f") == ANSWER


async def test_empty_ice_servers_never_means_google() -> None:
    pc = make_peer_connection([])
    transceiver = pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    connection = transceiver.receiver.transport.transport.iceGatherer._connection
    assert connection.stun_server is None  # aiortc's default would be Google's
    assert "typ srflx" not in pc.localDescription.sdp
    await pc.close()


async def test_camera_answers_h264_with_the_streams_profile() -> None:
    viewer = make_peer_connection([])
    transceiver = viewer.addTransceiver("video", direction="recvonly")
    prefer_h264(transceiver)
    await viewer.setLocalDescription(await viewer.createOffer())
    assert "VP8" not in viewer.localDescription.sdp

    asked: list[Layer] = []
    broadcaster = Broadcaster(asked.append)
    broadcaster.feed(Layer.HIGH).profile_level_id = "42e01e"  # as if the encoder emitted level 3.0
    closed: list[str] = []
    session = ViewerSession("x" * 20, broadcaster, [], lambda s, r: closed.append(r))
    answer = await session.answer(viewer.localDescription.sdp)
    assert re.search(r"a=rtpmap:\d+ H264/90000", answer)
    assert "VP8" not in answer
    assert "profile-level-id=42e01e" in answer
    # The IDR the viewer will start from is asked for with the answer, not at DTLS up.
    assert asked == [Layer.HIGH] and broadcaster.viewer_count == 0
    # The camera is the DTLS server: the viewer starts the handshake.
    assert "a=setup:passive" in answer and "a=setup:active" not in answer
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    assert viewer.getTransceivers()[0].receiver.transport._role == "client"
    await session.close("done")
    await viewer.close()
    await asyncio.sleep(0)
    assert closed == ["done"]
    assert broadcaster.viewer_count == 0
