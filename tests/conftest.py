"""Shared fixtures: a real rendezvous on loopback port 0 and real camera agents.

aioice never offers 127.0.0.1 as a host candidate; tests keep every packet on
loopback by making it offer exactly 127.0.0.1 (the layer below the one under
test). Timeouts scale with PEERCAM_TEST_TIMEOUT_FACTOR for slow boards.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from camera.agent import CameraAgent
from camera.client.viewer import ViewerIdentity
from camera.config import CameraConfig, make_configured_source
from camera.identity import DeviceIdentity
from camera.sources.base import Source, VideoSettings
from camera.webrtc import restrict_host_addresses
from services.rendezvous import Rendezvous, RendezvousConfig, start_rendezvous

TIMEOUT_FACTOR = float(os.environ.get("PEERCAM_TEST_TIMEOUT_FACTOR", "1"))
SMALL_VIDEO = VideoSettings(width=320, height=240, fps=30, bitrate=400_000)


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


LAB_DIR = Path(__file__).resolve().parent / "lab"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/lab as `lab`: scripts/test runs those beside the rest."""
    for item in items:
        if LAB_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@pytest.fixture(autouse=True)
def viewer_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI viewer's key lives in the test's own directory, never in ~/.config."""
    directory = tmp_path / "viewer"
    monkeypatch.setenv("PEERCAM_VIEWER_DIR", str(directory))
    return directory


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Running cameras record themselves in the test's own directory, never in /run."""
    directory = tmp_path / "run"
    monkeypatch.setenv("PEERCAM_RUNTIME_DIR", str(directory))
    return directory


class Stack:
    def __init__(self, rendezvous: Rendezvous, url: str, tmp: Path) -> None:
        self.rendezvous = rendezvous
        self.url = url
        self.tmp = tmp
        self.agents: list[CameraAgent] = []
        # The default CLI viewer identity (PEERCAM_VIEWER_DIR): paired with every camera.
        self.viewer = ViewerIdentity.load_or_create()

    async def camera(
        self,
        video: VideoSettings = SMALL_VIDEO,
        *,
        paired: bool = True,
        agent_options: dict[str, Any] | None = None,
        source: Source | None = None,
        wait_registered: bool = True,
        **config: Any,
    ) -> CameraAgent:
        """A started agent; ``agent_options`` go to CameraAgent (led, notifier, ...)."""
        state = self.tmp / f"camera{len(self.agents)}"
        settings: dict[str, Any] = {"backoff_base": 0.1, "backoff_cap": 1.0, **config}
        cfg = CameraConfig(rendezvous=self.url, state_dir=state, video=video, **settings)
        source = source or make_configured_source(cfg)
        options = dict(agent_options or {})
        if cfg.hardware.ptz_port and "head" not in options:
            from camera.ptz import open_head

            options["head"] = open_head(cfg.hardware)
        agent = CameraAgent(cfg, source, DeviceIdentity.load_or_create(state), **options)
        if paired:
            agent.acl.add(self.viewer.key, self.viewer.name)
        self.agents.append(agent)
        await agent.start()
        import asyncio

        if wait_registered:
            await asyncio.wait_for(agent.registered.wait(), scaled(10))
        return agent

    def link(self, agent: CameraAgent) -> str:
        return f"{self.url.replace('ws://', 'http://')}/#device={agent.device_id}"


@pytest.fixture
async def stack(tmp_path: Path, viewer_dir: Path) -> AsyncIterator[Stack]:
    server, runner, port = await start_rendezvous(
        "127.0.0.1", 0, RendezvousConfig(heartbeat=2.0)
    )
    s = Stack(server, f"ws://127.0.0.1:{port}", tmp_path)
    try:
        yield s
    finally:
        for agent in s.agents:
            await agent.close()
        await runner.cleanup()


@pytest.fixture
def make_identity(tmp_path: Path) -> Callable[[str], DeviceIdentity]:
    return lambda name: DeviceIdentity.load_or_create(tmp_path / name)


def signed_offer(
    identity: ViewerIdentity,
    device_id: str,
    session_id: str,
    sdp: str,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """The fields of a correctly signed viewer offer (docs/protocol.md)."""
    import time

    from services.signatures import offer_statement, sign

    timestamp = int(time.time() * 1000) if timestamp is None else timestamp
    statement = offer_statement(device_id, session_id, timestamp, identity.key, sdp)
    return {
        "type": "offer",
        "device_id": device_id,
        "session_id": session_id,
        "sdp": sdp,
        "viewer_key": identity.key,
        "timestamp": timestamp,
        "signature": sign(identity.private_key, statement),
    }


def signed_candidate(
    identity: ViewerIdentity,
    device_id: str,
    session_id: str,
    offer_sdp: str,
    seq: int,
    line: str,
    sdp_mid: str | None = "0",
    sdp_mline_index: int | None = 0,
) -> dict[str, Any]:
    """The fields of a viewer's signed trickled candidate (docs/protocol.md); line "" ends."""
    from services.signatures import candidate_statement, sign

    if line == "":
        sdp_mid, sdp_mline_index = None, None
    statement = candidate_statement(device_id, session_id, offer_sdp, seq, line, sdp_mid,
                                    sdp_mline_index)
    fields: dict[str, Any] = {
        "type": "candidate",
        "device_id": device_id,
        "session_id": session_id,
        "seq": seq,
        "candidate": line,
        "signature": sign(identity.private_key, statement),
    }
    if sdp_mid is not None:
        fields["sdp_mid"] = sdp_mid
    if sdp_mline_index is not None:
        fields["sdp_mline_index"] = sdp_mline_index
    return fields
