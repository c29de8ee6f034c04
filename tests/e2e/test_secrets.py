"""No secret reaches the logs, even at DEBUG, across a full pair-and-watch session
with TURN credentials; every key file is 0600."""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from camera.acl import ACL_FILE
from camera.client.viewer import VIEWER_KEY_FILE, ViewerIdentity, view
from camera.identity import KEY_FILE
from services.rendezvous import RendezvousConfig, start_rendezvous
from services.turn import TurnConfig, mint
from tests.conftest import Stack
from tests.services.coturn import TURNSERVER, run_coturn


def private_numbers(key: object) -> list[str]:
    """The private scalar in the forms a careless log line could show it."""
    value = key.private_numbers().private_value  # type: ignore[attr-defined]
    raw = value.to_bytes(32, "big")
    return [str(value), f"{value:064x}", base64.b64encode(raw).decode()[:40],
            base64.urlsafe_b64encode(raw).decode()[:40]]


@pytest.mark.skipif(not os.access(TURNSERVER, os.X_OK),
                    reason="needs coturn (scripts/setup --test installs it)")
async def test_no_secret_in_debug_logs_and_key_files_are_0600(
    tmp_path: Path, viewer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, aiortc, aioice, aiohttp
    with run_coturn(tmp_path / "coturn", ipv6=False) as coturn:
        turn = TurnConfig(coturn.secret, [f"turn:127.0.0.1:{coturn.server[1]}"], ttl=600)
        issued: list[str] = []

        def credentials(tag: str) -> list[dict[str, object]]:
            server = mint(turn, tag, time.time())
            issued.append(str(server["credential"]))
            return [server]

        server, runner, port = await start_rendezvous(
            "127.0.0.1", 0, RendezvousConfig(credentials=credentials))
        stack = Stack(server, f"ws://127.0.0.1:{port}", tmp_path)
        try:
            camera = await stack.camera(paired=False)
            secret = camera.open_pairing(ttl=60)
            link = stack.link(camera) + f"&pair={secret}"
            stats = await view(link, seconds=1)
            assert stats.frames > 10, stats
            viewer = ViewerIdentity.load_or_create()
            state = camera.config.state_dir
        finally:
            for agent in stack.agents:
                await agent.close()
            await runner.cleanup()

    assert issued, "the session did not use minted TURN credentials"
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert len(text) > 1000  # DEBUG really captured the session
    secrets_ = [secret, coturn.secret, *issued,
                *private_numbers(camera.identity.private_key),
                *private_numbers(viewer.private_key)]
    for n, value in enumerate(secrets_):
        assert value not in text, f"secret #{n} is in the logs"

    for path in (state / KEY_FILE, state / ACL_FILE, viewer_dir / VIEWER_KEY_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
