"""Real rendezvous, real camera agent, real aiortc viewers, all on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import av
import pytest

from camera.client.viewer import view
from camera.sources.x264 import EncodedPicture, X264Encoder
from services.signaling import Role
from tests.conftest import Stack, scaled, signed_offer


async def test_several_viewers_at_once_each_decode_full_rate(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every libx264 encode of the viewers' (high) layer in this process, timed (the
    # layer below the source); the low layer's encoder is the one other size.
    encodes: list[float] = []
    encode = X264Encoder.encode

    def counted(self: X264Encoder, frame: av.VideoFrame,
                force_idr: bool = False) -> list[EncodedPicture]:
        if self.settings.width == 320:
            encodes.append(time.perf_counter())
        return encode(self, frame, force_idr)

    monkeypatch.setattr(X264Encoder, "encode", counted)
    viewers = 3
    camera = await stack.camera()
    link = stack.link(camera)
    results = await asyncio.gather(*(view(link, seconds=4) for _ in range(viewers)))
    for stats in results:
        summary = stats.as_dict()
        # Full rate (30) less a busy machine; one encode split three ways would give 10.
        assert summary["fps"] >= 20, summary
        assert summary["frames"] >= 90, summary
        assert summary["local_candidate"] == "host" and summary["remote_candidate"] == "host"
        assert (summary["width"], summary["height"]) == (320, 240)
        # The burnt-in capture time came back through encode, RTP and decode.
        assert summary["latency_ms_p50"] is not None and 0 <= summary["latency_ms_p50"] < 1000
        # One encode for every viewer: while this viewer decoded its frames, the
        # process encoded about as many pictures as it decoded, not one per viewer
        # for each (that would be ~3x as many).
        assert stats.first_frame_at is not None and stats.last_frame_at is not None
        during = sum(stats.first_frame_at <= t <= stats.last_frame_at for t in encodes)
        assert during < 1.5 * stats.frames, (during, summary)
        assert len(encodes) >= stats.frames  # the counter sees the encoder that fed it
    # Together the viewers decoded ~3x what was encoded meanwhile: one stream, fanned out.
    first = min(s.first_frame_at for s in results if s.first_frame_at is not None)
    last = max(s.last_frame_at for s in results if s.last_frame_at is not None)
    encoded = sum(first <= t <= last for t in encodes)
    assert sum(s.frames for s in results) > (viewers - 1) * encoded, encoded
    assert camera.broadcaster.keyframe_requests >= 3  # each join asked for an IDR


async def test_viewer_joining_mid_stream_gets_video(stack: Stack) -> None:
    camera = await stack.camera(video=stack_video(gop_seconds=20))
    first = asyncio.ensure_future(view(stack.link(camera), seconds=5))
    await asyncio.sleep(scaled(2))
    late = await view(stack.link(camera), seconds=2)
    assert late.frames >= 40
    assert late.ttff_ms is not None and late.ttff_ms < 5000
    assert (await first).frames >= 120
    # With a 20 s GOP, only the join's IDR request can explain the late viewer's picture.
    assert camera.broadcaster.keyframes_published >= 2


def stack_video(**changes: float) -> object:
    from dataclasses import replace

    from tests.conftest import SMALL_VIDEO

    return replace(SMALL_VIDEO, **changes)


async def test_vanished_viewer_is_cleaned_up(stack: Stack) -> None:
    camera = await stack.camera()
    task = asyncio.ensure_future(view(stack.link(camera), seconds=30))
    for _ in range(100):
        if camera.sessions and all(s.connected.is_set() for s in camera.sessions.values()):
            break
        await asyncio.sleep(0.1)
    assert len(camera.sessions) == 1
    assert camera.broadcaster.viewer_count == 1
    task.cancel()  # the viewer disappears: no bye, its socket just goes away
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(int(scaled(100))):
        if not camera.sessions and camera.broadcaster.viewer_count == 0:
            break
        await asyncio.sleep(0.1)
    assert camera.sessions == {}
    assert camera.broadcaster.viewer_count == 0
    assert stack.rendezvous.router.stats()["sessions"] == 0


async def test_record_writes_a_playable_mp4_without_transcoding(
    stack: Stack, tmp_path: Path
) -> None:
    camera = await stack.camera()
    out = tmp_path / "clip.mp4"
    stats = await view(stack.link(camera), seconds=2, record=out)
    assert stats.recorded_frames >= 40
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = sum(1 for _ in container.decode(stream))
    assert decoded >= 40


async def test_offline_camera_and_bad_messages_leave_server_serving(stack: Stack) -> None:
    camera = await stack.camera()
    async with aiohttp.ClientSession() as http, http.ws_connect(stack.url + "/ws/viewer") as ws:
        assert (await ws.receive_json())["type"] == "hello"
        for junk in ["{", "[]", '{"type":"register","device_id":"x"}', "x" * 70_000]:
            await ws.send_str(junk)
            reply = await ws.receive_json()
            assert reply["type"] == "error" and reply["code"] in ("bad-message", "too-large")
        offline = "0000-0000-0000-0000-0000-0000-000"
        await ws.send_str(json.dumps({"type": "prepare", "device_id": offline,
                                      "session_id": "k" * 20}))
        assert (await ws.receive_json())["code"] == "unavailable"
    # Still serving real viewers afterwards.
    assert (await view(stack.link(camera), seconds=1)).frames > 10


async def test_camera_refuses_an_offer_without_h264(stack: Stack) -> None:
    camera = await stack.camera()
    vp8_only = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n"
        "a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\n"
        "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 "
        + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    )
    async with aiohttp.ClientSession() as http, http.ws_connect(stack.url + "/ws/viewer") as ws:
        await ws.receive_json()
        await ws.send_str(json.dumps(
            signed_offer(stack.viewer, camera.device_id, "v" * 20, vp8_only)))
        reply = await asyncio.wait_for(ws.receive_json(), scaled(10))
        assert reply["type"] == "bye" and "cannot answer" in reply["reason"]
    assert camera.sessions == {}
    assert (await view(stack.link(camera), seconds=1)).frames > 10


async def test_pli_from_a_real_viewer_makes_the_source_send_an_idr(stack: Stack) -> None:
    from aiortc import RTCSessionDescription

    from camera.webrtc import make_peer_connection, prefer_h264
    from services.signaling import parse

    camera = await stack.camera(video=stack_video(gop_seconds=30))
    async with aiohttp.ClientSession() as http, http.ws_connect(stack.url + "/ws/viewer") as ws:
        parse(await ws.receive_str(), Role.SERVER)
        pc = make_peer_connection([])
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send_str(json.dumps(signed_offer(
            stack.viewer, camera.device_id, "p" * 20, pc.localDescription.sdp)))
        answer = parse(await ws.receive_str(timeout=scaled(10)), Role.SERVER)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        receiver = transceiver.receiver
        for _ in range(100):
            if receiver._RTCRtpReceiver__active_ssrc:  # media is flowing
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # past the join IDR and the rate-limit window
        before = camera.broadcaster.keyframes_published
        requests = camera.broadcaster.keyframe_requests_sent
        ssrc = next(iter(receiver._RTCRtpReceiver__active_ssrc))
        await receiver._send_rtcp_pli(ssrc)  # a real RTCP PLI over SRTCP
        for _ in range(40):
            if camera.broadcaster.keyframes_published > before:
                break
            await asyncio.sleep(0.05)
        await pc.close()
    assert camera.broadcaster.keyframe_requests_sent == requests + 1
    # With a 30 s GOP, only the PLI can explain this IDR.
    assert camera.broadcaster.keyframes_published == before + 1


async def test_camera_reregisters_after_the_rendezvous_restarts(tmp_path: Path) -> None:
    from services.rendezvous import RendezvousConfig, start_rendezvous

    _server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig())
    stack = Stack(_server, f"ws://127.0.0.1:{port}", tmp_path)
    try:
        camera = await stack.camera()
        await runner.cleanup()  # the server goes away
        for _ in range(50):
            if not camera.registered.is_set():
                break
            await asyncio.sleep(0.1)
        assert not camera.registered.is_set()
        server2, runner = (await start_rendezvous("127.0.0.1", port))[:2]
        await asyncio.wait_for(camera.registered.wait(), scaled(10))
        assert camera.reconnects >= 1
        assert server2.router.stats()["cameras"] == 1
        assert (await view(stack.link(camera), seconds=1)).frames > 10
    finally:
        for agent in stack.agents:
            await agent.close()
        await runner.cleanup()


async def test_viewers_over_the_limit_are_refused_politely(stack: Stack) -> None:
    from camera.client.viewer import ViewError

    camera = await stack.camera(max_viewers=1)
    first = asyncio.ensure_future(view(stack.link(camera), seconds=3))
    for _ in range(100):
        if camera.sessions:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ViewError, match="too many viewers"):
        await view(stack.link(camera), seconds=1)
    assert (await first).frames > 40


async def test_healthz_and_viewer_page_are_served(stack: Stack) -> None:
    camera = await stack.camera()
    base = stack.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/healthz") as response:
            assert response.status == 200
            health = await response.json()
        assert health["status"] == "ok" and health["cameras"] == 1
        async with http.get(base + "/") as response:
            page = await response.text()
            assert response.headers["Content-Type"].startswith("text/html")
        assert "playsinline" in page and "viewer.js" in page
        async with http.get(base + "/viewer.js") as response:
            assert "window.peercam" in await response.text()
        async with http.get(base + "/../etc/passwd") as response:
            assert response.status == 404
    assert camera.registered.is_set()


async def test_two_devices_with_one_key_newer_wins_older_backs_off(stack: Stack) -> None:
    from camera.agent import CameraAgent
    from camera.config import CameraConfig, make_configured_source
    from camera.identity import DeviceIdentity
    from tests.conftest import SMALL_VIDEO

    first = await stack.camera(backoff_cap=3.0)
    # A cloned SD card: the same key in a second device.
    cfg = CameraConfig(rendezvous=stack.url, state_dir=first.config.state_dir,
                       video=SMALL_VIDEO, backoff_base=0.1, backoff_cap=3.0)
    clone = CameraAgent(cfg, make_configured_source(cfg),
                        DeviceIdentity.load_or_create(cfg.state_dir))
    stack.agents.append(clone)
    await clone.start()
    async with asyncio.timeout(scaled(10)):
        await clone.registered.wait()
    await asyncio.sleep(1.5)
    # The newer one won; the older was told, backs off fully instead of retaking at once.
    assert first.replaced == 1
    assert stack.rendezvous.router.cameras[clone.device_id] is not None
    assert clone.registered.is_set() and not first.registered.is_set()
    assert clone.replaced == 0


async def test_a_network_change_has_every_session_look_for_a_direct_path_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The camera's network changed: each live session is asked to search again (a
    relayed one starts its background checks over; this one, on loopback host
    candidates, is direct already and has nothing to search)."""
    from camera import agent as agent_module
    from camera.netwatch import NetworkView

    camera = await stack.camera()
    task = asyncio.ensure_future(view(stack.link(camera), seconds=8))
    for _ in range(int(scaled(100))):
        if camera.sessions and all(s.connected.is_set() for s in camera.sessions.values()):
            break
        await asyncio.sleep(0.1)
    (session,) = camera.sessions.values()
    asked: list[tuple[object, bool]] = []
    real = agent_module.search_direct_again

    def spy(pc: object) -> bool:
        searched = real(pc)  # type: ignore[arg-type]
        asked.append((pc, searched))
        return searched

    monkeypatch.setattr(agent_module, "search_direct_again", spy)
    before = NetworkView(frozenset({(2, "192.0.2.1", 4)}), frozenset({"192.0.2.2"}))
    after = NetworkView(frozenset({(2, "192.0.2.9", 4)}), frozenset({"192.0.2.2"}))
    camera._network_changed("default route changed", before, after)
    assert asked == [(session.pc, False)]
    result = await task
    assert result.frames > 100  # the session went on untouched
    # Direct from the first frame to the end: nothing moved.
    assert (result.final_local_candidate, result.final_remote_candidate) == (
        result.local_candidate, result.remote_candidate) == ("host", "host")
    assert result.moved_after_s is None
