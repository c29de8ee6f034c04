"""An aiortc viewer that trickles like the web page does (docs/protocol.md, candidate).

aiortc gathers before setLocalDescription returns, so the CLI viewer's offers
carry every candidate and ``a=end-of-candidates``. This one strips both from the
offer it signs and sends its candidates afterwards as signed ``candidate``
messages, so the camera can only learn them from the trickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from camera.agent import CameraAgent
from camera.client.viewer import ViewerIdentity, check_answer
from camera.webrtc import make_peer_connection, prefer_h264, selected_pair
from services.signaling import Message, Role, parse
from tests.conftest import Stack, scaled, signed_candidate, signed_offer


def without_candidates(sdp: str) -> str:
    """The offer as a trickling browser sends it: no candidates, no end-of-candidates."""
    return "".join(line for line in sdp.splitlines(keepends=True)
                   if not line.startswith(("a=candidate:", "a=end-of-candidates")))


@dataclass
class Trickled:
    """What one trickled viewing saw."""

    session_id: str
    offer_sdp: str
    candidates: list[str]
    """The candidate lines this viewer gathered (none of them in the offer)."""
    frames: int = 0
    camera_pair: tuple[str | None, str | None, str | None] = (None, None, None)
    """The camera's nominated pair: its local type, remote type, remote address."""
    camera_trickled: int = 0
    """Candidate messages the camera's session took (end-of-candidates included)."""
    camera_remote: list[tuple[str, int]] = field(default_factory=list)
    """The remote candidates the camera's ICE agent (aioice) holds: (address, port)."""
    errors: list[dict[str, Any]] = field(default_factory=list)


async def _reply(ws: aiohttp.ClientWebSocketResponse, session_id: str, wanted: str,
                 errors: list[dict[str, Any]]) -> Message:
    async with asyncio.timeout(scaled(15)):
        while True:
            message = parse(await ws.receive_str(), Role.SERVER)
            if message.type == "error":
                errors.append(dict(message.fields))
                continue
            if message.get("session_id") != session_id:
                continue
            if message.type == wanted:
                return message
            raise AssertionError(f"expected {wanted}, got {message.type}: {dict(message.fields)}")


async def watch_trickled(
    stack: Stack,
    camera: CameraAgent,
    *,
    trickle: bool = True,
    extra_lines: tuple[str, ...] = (),
    frames: int = 15,
    identity: ViewerIdentity | None = None,
) -> Trickled:
    """Offer without candidates, trickle them (unless ``trickle`` is False), watch video.

    ``extra_lines`` are trickled too, signed like the real ones. The viewer
    applies the camera's answer only once the camera's session has taken every
    trickled message, so the camera knows the viewer's address from the trickle
    before the viewer's first connectivity check can teach it (as prflx).
    """
    identity = identity or stack.viewer
    session_id = secrets.token_urlsafe(18)
    pc = make_peer_connection([])
    enough = asyncio.Event()
    count = 0
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: Any) -> None:
        nonlocal count
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                count += 1
                if count >= frames:
                    enough.set()

    @pc.on("track")
    def on_track(track: Any) -> None:
        tasks.append(asyncio.create_task(consume(track)))

    prefer_h264(pc.addTransceiver("video", direction="recvonly"))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{stack.url}/ws/viewer"
        ) as ws:
            assert parse(await ws.receive_str(), Role.SERVER).type == "hello"
            await pc.setLocalDescription(await pc.createOffer())
            full = pc.localDescription.sdp
            lines = [line[2:] for line in full.splitlines() if line.startswith("a=candidate:")]
            assert lines, "aiortc gathered no candidate"
            offer_sdp = without_candidates(full)
            result = Trickled(session_id, offer_sdp, lines)
            await ws.send_str(json.dumps(
                signed_offer(identity, camera.device_id, session_id, offer_sdp)))
            sent = [*lines, *extra_lines, ""] if trickle else []
            for seq, line in enumerate(sent):
                await ws.send_str(json.dumps(signed_candidate(
                    identity, camera.device_id, session_id, offer_sdp, seq, line)))
            answer = await _reply(ws, session_id, "answer", result.errors)
            check_answer(camera.device_id, session_id, offer_sdp, answer)
            session = camera.sessions[session_id]
            async with asyncio.timeout(scaled(10)):
                while session.trickled < len(sent):
                    await asyncio.sleep(0.02)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            async with asyncio.timeout(scaled(20)):
                await enough.wait()
            result.frames = count
            result.camera_pair = selected_pair(session.pc)
            result.camera_trickled = session.trickled
            ice = session.pc.getTransceivers()[0].receiver.transport.transport
            result.camera_remote = [(c.ip, c.port) for c in ice.getRemoteCandidates()]
            await ws.send_str(json.dumps({"type": "bye", "session_id": session_id}))
            return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pc.close()
