"""The WHEP gateway in the NAT lab: the player and the camera behind different NATs.

Real processes in the lab's namespaces: the rendezvous, STUN and coturn on the
server host (the matrix's), a `peercam camera` behind each site, `peercam whep
serve` on the server host (paired with each camera through `peercam whep pair`
and a pairing link, as an operator would), and an aiortc WHEP player
(tests/lab/whep_player.py) behind another site. The gateway relays only the
offer and answer: the media path is the player's and the camera's own, direct
where the two NATs allow one and through TURN where they do not.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.natlab import Lab
from services.natlab.paths import direct_possible
from services.turn import TurnConfig, mint
from tests.lab.conftest import REPO_ROOT, needs_lab
from tests.lab.matrix import PEERCAM, SERVER, Matrix
from tests.services.coturn import TURNSERVER

pytestmark = [
    needs_lab,
    pytest.mark.skipif(not Path(TURNSERVER).exists(),
                       reason="needs coturn (scripts/setup --test installs it)"),
]

SITES = ("full-cone", "port-restricted", "symmetric")
GATEWAY = f"http://{SERVER}:8889"
TOKEN = "lab-token-" + "w" * 30


@pytest.fixture(scope="module")
def gateway(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("whep")
    with Matrix(lab, tmp, sites=SITES) as matrix:
        state = tmp / "whep"
        config = tmp / "whep.toml"
        config.write_text(f'listen = "{SERVER}:8889"\nstate_dir = "{state}"\n')
        for site in SITES:
            paired = lab.run("server", [*PEERCAM, "whep", "pair", matrix.pair_link(site),
                                        "--name", site, "--config", str(config)],
                             check=False, timeout=60)
            assert paired.returncode == 0, paired.stderr
        tokens = state / "tokens"
        tokens.write_text(TOKEN + "\n")
        tokens.chmod(0o600)
        serve = matrix._spawn("server", [*PEERCAM, "whep", "serve", "--config", str(config)],
                              "whep.log")
        assert serve.stdout is not None
        line = serve.stdout.readline()
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"the gateway did not start: {matrix.log('whep.log')}")
        yield matrix


def play(lab: Lab, matrix: Matrix, camera: str, player: str,
         ice_servers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    argv = [*PEERCAM[:2], "tests.lab.whep_player", f"{GATEWAY}/{camera}/whep", TOKEN, "2",
            json.dumps(ice_servers or [])]
    proc = lab.popen(player, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env=matrix.env, cwd=REPO_ROOT)
    out, err = proc.communicate(timeout=90)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"the player printed no result: {err[-2000:]}") from None
    return result


def test_player_and_camera_behind_different_nats_connect_directly(
        lab: Lab, gateway: Matrix) -> None:
    """full-cone camera, port-restricted player: a direct path exists, and is used."""
    assert direct_possible("full-cone", "port-restricted")
    result = play(lab, gateway, "full-cone", "port-restricted",
                  [{"urls": [f"stun:{SERVER}:3479"]}])
    assert result.get("error") is None, (result, gateway.log("whep.log"))
    assert result["post"] == 201 and result["delete"] == 200
    assert result["frames"] > 10
    assert "relay" not in (result["local_candidate"], result["remote_candidate"]), result


def test_a_turn_only_pair_plays_through_the_relay(lab: Lab, gateway: Matrix) -> None:
    """A symmetric camera, a port-restricted player: no direct path, only TURN. The
    camera's TURN comes from the rendezvous; the player is configured with its own
    credentials for the same coturn."""
    assert not direct_possible("symmetric", "port-restricted")
    secret = (gateway.tmp / "turn-secret").read_text().strip()
    turn = mint(TurnConfig(secret, [f"turn:{SERVER}:3478?transport=udp"]), "whep-player",
                time.time())
    result = play(lab, gateway, "symmetric", "port-restricted",
                  [{"urls": [f"stun:{SERVER}:3479"]}, turn])
    assert result.get("error") is None, (result, gateway.log("whep.log"))
    assert result["post"] == 201 and result["frames"] > 10
    assert "relay" in (result["local_candidate"], result["remote_candidate"]), result
    gateway_log = gateway.log("whep.log")
    assert secret not in gateway_log and TOKEN not in gateway_log
