"""``peercam whep pair|list|serve`` as real processes, against a real rendezvous and camera."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.camera.whep_helpers import player
from tests.conftest import Stack, scaled

ROOT = Path(__file__).resolve().parents[2]


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", *args, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PEERCAM_ICE_ADDRESSES": "127.0.0.1"})
    out, err = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pair_list_and_serve(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera(paired=False)
    state = tmp_path / "whep"
    config = tmp_path / "whep.toml"
    config.write_text(f'state_dir = "{state}"\nlisten = "127.0.0.1:0"\n')

    link = agent.pairing_link(agent.open_pairing())
    code, out, err = await run("whep", "pair", link, "--name", "porch", "--config", str(config))
    assert code == 0, err
    assert "porch" in out and agent.device_id in out
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "viewer" / "viewer_key.pem").stat().st_mode & 0o777 == 0o600
    assert [v.name for v in agent.acl.viewers()] == ["peercam WHEP gateway"]  # its own key

    code, out, err = await run("whep", "list", "--json", "--config", str(config))
    assert code == 0, err
    listed = json.loads(out)
    assert [(c["name"], c["device"], c["source"]) for c in listed["cameras"]] == [
        ("porch", agent.device_id, "paired")]

    code, _out, err = await run("whep", "pair", stack.link(agent), "--config", str(config))
    assert code == 2 and "not a pairing link" in err

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", "whep", "serve", "--config", str(config),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), scaled(30))).decode()
        assert line.startswith("LISTENING "), line
        url = "http://" + line.split()[1]
        tokens = state / "tokens"
        assert tokens.stat().st_mode & 0o777 == 0o600
        token = tokens.read_text().split()[0]
        async with player(token) as p:
            response = await p.play(f"{url}/porch/whep")
            assert response.status == 201, await response.text()
            await p.wait_frames(5, scaled(15))
            assert (await p.delete(f"{url}/porch/whep")).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err_bytes = await asyncio.wait_for(proc.communicate(), scaled(20))
    assert proc.returncode == 0, err_bytes.decode()[-2000:]
    assert token not in err_bytes.decode()  # the first run says where, never what


async def test_a_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "whep.toml"
    config.write_text('[cameras.front]\ndevice = "nope"\nrendezvous = "ws://x"\n')
    code, _out, err = await run("whep", "list", "--config", str(config))
    assert code == 2 and "device = 'nope'" in err
    config.write_text('max_sessions = 0\n')
    code, _out, err = await run("whep", "serve", "--config", str(config))
    assert code == 2 and "max_sessions 0" in err


def test_every_gateway_setting_is_documented_and_loads(tmp_path: Path) -> None:
    """docs/operations.md's example config names every setting, and loads as written."""
    import dataclasses

    from camera.client.whep_config import GatewayConfig, load_config

    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc[doc.index("## WHEP gateway"):doc.index("## Metrics and alerts")]
    missing = [f.name for f in dataclasses.fields(GatewayConfig)
               if f.name != "cameras" and f"{f.name} =" not in section]
    assert missing == []
    example = section[section.index("```toml") + 7:]
    example = example[:example.index("```")]
    example = "\n".join(line.lstrip("# ") if line.startswith("# ") and " = " in line else line
                        for line in example.splitlines())
    from camera.identity import DeviceIdentity

    device = DeviceIdentity.load_or_create(tmp_path / "camera").device_id
    path = tmp_path / "whep.toml"
    path.write_text(example.replace("XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXC", device))
    config = load_config(path)
    assert config.cameras[0].name == "front" and config.ice_servers is not None
    assert config.cors_origins == ("https://ha.example:8123",)
