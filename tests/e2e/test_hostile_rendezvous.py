"""A compromised rendezvous can deny service; it cannot watch, impersonate or add a viewer.

Each test runs the real camera agent and the real CLI viewer through a
rendezvous double that tampers with what it routes, checks the right party
refuses, and that a legitimate session still works afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from camera.agent import CameraAgent
from camera.client.viewer import ForgedAnswer, ViewerIdentity, ViewError, view
from camera.identity import DeviceIdentity
from services.rendezvous import Rendezvous, start_rendezvous
from services.routing import Peer
from services.signaling import Role
from tests.conftest import Stack, scaled, signed_candidate, signed_offer
from tests.e2e.trickle import watch_trickled

Tamper = Callable[[Peer, dict[str, Any]], list[dict[str, Any]]]


class HostileRendezvous(Rendezvous):
    """The real server with a hook on everything it sends."""

    tamper: Tamper | None = None
    sent_to_camera: list[dict[str, Any]]

    async def _send(self, peer: Peer, text: str) -> None:
        message = json.loads(text)
        if peer.role is Role.CAMERA:
            self.sent_to_camera.append(message)
        out = [message] if self.tamper is None else self.tamper(peer, message)
        for item in out:
            await super()._send(peer, json.dumps(item))

    def camera_peer(self, device_id: str) -> Peer:
        return self.router.cameras[device_id]


@pytest.fixture
async def hostile(tmp_path: Path, viewer_dir: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Stack, Any]]:
    import services.rendezvous as module

    monkeypatch.setattr(module, "Rendezvous", HostileRendezvous)
    server, runner, port = await start_rendezvous("127.0.0.1", 0)
    assert isinstance(server, HostileRendezvous)
    server.sent_to_camera = []
    stack = Stack(server, f"ws://127.0.0.1:{port}", tmp_path)
    try:
        yield stack, server
    finally:
        for agent in stack.agents:
            await agent.close()
        await runner.cleanup()


async def legit_session_works(stack: Stack, camera: CameraAgent) -> None:
    stats = await view(stack.link(camera), seconds=1)
    assert stats.frames > 10


async def inject(server: HostileRendezvous, camera: CameraAgent, message: dict[str, Any]) -> dict:
    """Send ``message`` to the camera as the server; return the camera's bye for it."""
    byes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    original = server.router.received

    def spy(peer: Peer, data: str | bytes, now: float) -> list[Any]:
        obj = json.loads(data)
        if obj.get("session_id") == message["session_id"]:
            byes.put_nowait(obj)
        return original(peer, data, now)

    server.router.received = spy  # type: ignore[method-assign]
    try:
        await server._send(server.camera_peer(camera.device_id), json.dumps(message))
        async with asyncio.timeout(scaled(5)):
            return await byes.get()
    finally:
        server.router.received = original  # type: ignore[method-assign]


def as_forwarded(offer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in offer.items() if k != "device_id"}
    out["ice_servers"] = []
    return out


async def test_unsigned_offer_is_refused_by_the_camera(hostile: tuple[Stack, Any]) -> None:
    stack, server = hostile
    camera = await stack.camera()
    offer = as_forwarded(signed_offer(stack.viewer, camera.device_id, "u" * 20, "v=0\r\n"))
    for field in ("signature", "viewer_key", "timestamp"):
        del offer[field]
    reply = await inject(server, camera, offer)
    assert reply["type"] == "bye" and reply["reason"].startswith("not authorized")
    assert camera.sessions == {} and camera.refusals == 1
    await legit_session_works(stack, camera)


async def test_offer_signed_by_a_key_not_in_the_acl_is_refused(
    hostile: tuple[Stack, Any], tmp_path: Path
) -> None:
    stack, server = hostile
    camera = await stack.camera()
    stranger = ViewerIdentity.load_or_create(tmp_path / "stranger")  # the server's own key
    offer = as_forwarded(signed_offer(stranger, camera.device_id, "w" * 20, "v=0\r\n"))
    reply = await inject(server, camera, offer)
    assert "not paired" in reply["reason"]
    assert camera.sessions == {}
    with pytest.raises(ViewError, match="not authorized"):
        await view(stack.link(camera), seconds=1, identity=stranger)
    await legit_session_works(stack, camera)


async def test_replayed_offer_is_refused(hostile: tuple[Stack, Any]) -> None:
    stack, server = hostile
    camera = await stack.camera()
    await legit_session_works(stack, camera)  # the server records a real, signed offer
    recorded = next(m for m in server.sent_to_camera if m["type"] == "offer")
    async with asyncio.timeout(scaled(5)):  # the first session ends by its DTLS close
        while camera.sessions:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and its bye has gone out
    reply = await inject(server, camera, recorded)
    assert reply["type"] == "bye" and "replayed" in reply["reason"]
    assert camera.sessions == {}
    await legit_session_works(stack, camera)


async def test_offer_readdressed_to_another_camera_is_refused(hostile: tuple[Stack, Any]) -> None:
    stack, server = hostile
    first = await stack.camera()
    second = await stack.camera()  # the same viewer is paired with both
    # The viewer signs an offer for the first camera; the server delivers it to the second.
    offer = as_forwarded(signed_offer(stack.viewer, first.device_id, "x" * 20, "v=0\r\n"))
    reply = await inject(server, second, offer)
    assert "signature does not verify" in reply["reason"]
    assert second.sessions == {}
    await legit_session_works(stack, second)


async def test_answer_with_a_rewritten_fingerprint_is_refused_by_the_viewer(
    hostile: tuple[Stack, Any]
) -> None:
    stack, server = hostile
    camera = await stack.camera()

    def swap_fingerprint(peer: Peer, message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["type"] == "answer":
            # The server's own DTLS certificate, to sit in the middle of the media.
            message["sdp"] = re.sub(r"a=fingerprint:sha-256 \S+",
                                    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
                                    message["sdp"])
        return [message]

    server.tamper = swap_fingerprint
    with pytest.raises(ForgedAnswer, match="signature does not verify"):
        await view(stack.link(camera), seconds=1)
    server.tamper = None
    await legit_session_works(stack, camera)


async def test_impostor_accepted_by_a_hostile_server_cannot_answer_for_the_id(
    hostile: tuple[Stack, Any], tmp_path: Path
) -> None:
    stack, server = hostile
    victim = await stack.camera()
    victim_peer = server.router.cameras[victim.device_id]
    # The hostile server lets a camera with another key register under the victim's ID.
    server.router._register = _accept_anything(server.router)  # type: ignore[method-assign]
    fake = DeviceIdentity(DeviceIdentity.generate().private_key, victim.device_id)
    impostor = await _camera_with_identity(stack, fake)
    assert server.router.cameras[victim.device_id] is not victim_peer  # offers go to it now
    with pytest.raises(ForgedAnswer, match="not this camera's"):
        await view(stack.link(victim), seconds=1)
    assert impostor.device_id == victim.device_id


def _accept_anything(router: Any) -> Any:
    from services.signaling import Role as R
    from services.signaling import encode

    def register(peer: Peer, message: Any, now: float) -> list[Any]:
        from services.routing import Send

        peer.device_id = message["device_id"]
        router.cameras[peer.device_id] = peer
        return [Send(peer, encode(R.SERVER, "registered", device_id=peer.device_id,
                                  ice_servers=[]))]

    return register


async def _camera_with_identity(stack: Stack, identity: DeviceIdentity) -> CameraAgent:
    from camera.config import CameraConfig, make_configured_source
    from tests.conftest import SMALL_VIDEO

    state = stack.tmp / "impostor"
    cfg = CameraConfig(rendezvous=stack.url, state_dir=state, video=SMALL_VIDEO)
    agent = CameraAgent(cfg, make_configured_source(cfg), identity)
    agent.acl.add(stack.viewer.key, stack.viewer.name)  # it would happily serve this viewer
    stack.agents.append(agent)
    await agent.start()
    async with asyncio.timeout(scaled(10)):
        await agent.registered.wait()
    return agent


async def test_candidates_the_viewer_did_not_sign_never_reach_the_cameras_ice(
    hostile: tuple[Stack, Any], tmp_path: Path
) -> None:
    """The server knows the offer's ICE ufrag/pwd: a candidate of its own would let it
    relay the media (encrypted, but in the path). The camera takes only candidates the
    session's viewer signed for this session and this offer."""
    stack, server = hostile
    camera = await stack.camera()
    stranger = ViewerIdentity.load_or_create(tmp_path / "server-key")
    # The server's relay: where a camera that believed its candidate would send checks.
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind(("127.0.0.1", 0))
    trap.setblocking(False)
    trap_port = trap.getsockname()[1]
    line = f"candidate:9 1 udp 2130706431 127.0.0.1 {trap_port} typ host"

    def inject(peer: Peer, message: dict[str, Any]) -> list[dict[str, Any]]:
        out = [message]
        if peer.role is Role.CAMERA and message["type"] == "offer":
            session_id, sdp = message["session_id"], message["sdp"]
            forged = [
                # Signed by the server's own key (seq 0: it must not use up the viewer's).
                signed_candidate(stranger, camera.device_id, session_id, sdp, 0, line),
                # The viewer's genuine signature, recorded for another session ...
                signed_candidate(stack.viewer, camera.device_id, "z" * 20, sdp, 1, line),
                # ... or for another offer under this session ID.
                signed_candidate(stack.viewer, camera.device_id, session_id, sdp + "a=x\r\n",
                                 2, line),
            ]
            for fields in forged:
                del fields["device_id"]  # as the server forwards a candidate
                fields["session_id"] = session_id
            out += forged
        return out

    try:
        server.tamper = inject
        seen = await watch_trickled(stack, camera)
        assert seen.frames >= 15  # the viewer's own candidates were taken, all of them
        assert seen.camera_trickled == len(seen.candidates) + 1
        assert camera.refusals == 3
        assert ("127.0.0.1", trap_port) not in seen.camera_remote
        with pytest.raises(BlockingIOError):
            trap.recv(2048)  # not one connectivity check went to the server's address
        # The control: the same candidate signed by the viewer does reach the camera's ICE.
        server.tamper = None
        control = await watch_trickled(stack, camera, extra_lines=(line,))
        assert ("127.0.0.1", trap_port) in control.camera_remote
    finally:
        trap.close()


async def test_a_forged_bye_does_not_interrupt_a_playing_session(
    hostile: tuple[Stack, Any]
) -> None:
    """Byes are unsigned: the viewer takes one as advice, and the media plane says
    the session is alive, so it goes on (no new session, no gap)."""
    stack, server = hostile
    camera = await stack.camera()
    watching = asyncio.ensure_future(view(stack.link(camera), seconds=scaled(5)))
    async with asyncio.timeout(scaled(10)):
        while not any(s.connected.is_set() for s in camera.sessions.values()):
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    (session,) = server.router.sessions.values()
    for reason in ("camera went offline", "not authorized: this viewer was revoked"):
        await server._send(session.viewer, json.dumps(
            {"type": "bye", "session_id": session.session_id, "reason": reason}))
        await asyncio.sleep(1.0)
    stats = await asyncio.wait_for(watching, scaled(20))
    assert stats.sessions == 1 and stats.last_cause is None
    assert stats.max_gap_ms is not None and stats.max_gap_ms < 500
    assert stats.frames > 100
