"""A real gateway in front of a real camera, and a WHEP player made of aiortc.

Shared by the gateway's tests (tests/camera), the browser players' tests and
the NAT lab's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from camera.agent import CameraAgent
from camera.client.receiver import stamp_region
from camera.client.viewer import ViewerIdentity
from camera.client.whep import Gateway
from camera.client.whep_config import CameraEntry, GatewayConfig
from camera.stamp import read as read_stamp
from camera.webrtc import prefer_h264

TOKEN = "test-token-" + "a" * 24
OTHER_TOKEN = "other-token-" + "b" * 24


@dataclass
class Running:
    gateway: Gateway
    url: str
    agent: CameraAgent
    identity: ViewerIdentity

    def endpoint(self, camera: str = "front") -> str:
        return f"{self.url}/{camera}/whep"


@contextlib.asynccontextmanager
async def running_gateway(
    rendezvous_url: str,
    agent: CameraAgent,
    tmp: Path,
    *,
    paired: bool = True,
    extra_cameras: tuple[CameraEntry, ...] = (),
    host: str = "127.0.0.1",
    **settings: Any,
) -> AsyncIterator[Running]:
    """A started gateway serving ``agent`` as camera ``front`` (its key paired with it)."""
    identity = ViewerIdentity.load_or_create(tmp / "whep-key", "peercam WHEP gateway")
    if paired:
        agent.acl.add(identity.key, identity.name)
    config = GatewayConfig(
        listen=(host, 0), state_dir=tmp / "whep-state",
        cameras=(CameraEntry("front", agent.device_id, rendezvous_url),) + extra_cameras,
        **settings)
    gateway = Gateway(config, [TOKEN, OTHER_TOKEN], identity)
    port = await gateway.start(host, 0)
    try:
        yield Running(gateway, f"http://{host}:{port}", agent, identity)
    finally:
        await gateway.close()


def strip_candidates(sdp: str) -> tuple[str, list[str]]:
    """An offer without its candidate lines (to trickle them), and those lines."""
    lines = sdp.split("\r\n")
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines
            if not line.startswith("a=candidate:") and line != "a=end-of-candidates"]
    return "\r\n".join(kept), candidates


@dataclass
class Player:
    """A WHEP player built on aiortc: POST, (PATCH), frames, DELETE."""

    pc: RTCPeerConnection
    http: aiohttp.ClientSession
    token: str = TOKEN
    location: str | None = None
    etag: str | None = None
    offer_sdp: str = ""
    frames: int = 0
    stamps: list[int] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    framed: asyncio.Event = field(default_factory=asyncio.Event)
    consumer: asyncio.Task[None] | None = None

    async def play(self, endpoint: str, *, trickle: bool = False) -> aiohttp.ClientResponse:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            self.consumer = asyncio.ensure_future(self._consume(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        trickled: list[str] = []
        if trickle:
            sdp, trickled = strip_candidates(sdp)
        self.offer_sdp = sdp
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = await self.http.post(endpoint, data=sdp.encode(), headers=headers)
        if response.status != 201:
            return response
        answer = await response.text()
        self.location = response.headers["Location"]
        self.etag = response.headers.get("ETag")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        if trickle:
            ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
            mid = re.search(r"a=mid:(\S+)", sdp)
            assert ufrag and mid
            fragment = (f"a=ice-ufrag:{ufrag.group(1)}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\n"
                        f"a=mid:{mid.group(1)}\r\n"
                        + "".join(f"a={c}\r\n" for c in trickled) + "a=end-of-candidates\r\n")
            patched = await self.patch(endpoint, fragment)
            assert patched.status == 204, await patched.text()
        return response

    def resource(self, endpoint: str) -> str:
        assert self.location is not None
        return str(aiohttp.client.URL(endpoint).join(aiohttp.client.URL(self.location)))

    async def patch(self, endpoint: str, fragment: str,
                    token: str | None = None) -> aiohttp.ClientResponse:
        return await self.http.patch(self.resource(endpoint), data=fragment.encode(), headers={
            "Content-Type": "application/trickle-ice-sdpfrag",
            "Authorization": f"Bearer {token or self.token}"})

    async def delete(self, endpoint: str, token: str | None = None) -> aiohttp.ClientResponse:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.delete(self.resource(endpoint), headers=headers)

    async def _consume(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames += 1
            self.sizes.add((frame.width, frame.height))
            stamp = read_stamp(stamp_region(frame))
            if stamp is not None:
                self.stamps.append(stamp[0])
            self.framed.set()

    async def wait_frames(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.frames < count:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.consumer is not None:
            self.consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.consumer
        await self.pc.close()


@contextlib.asynccontextmanager
async def player(token: str = TOKEN) -> AsyncIterator[Player]:
    async with aiohttp.ClientSession() as http:
        p = Player(RTCPeerConnection(RTCConfiguration(iceServers=[])), http, token)
        try:
            yield p
        finally:
            await p.close()
