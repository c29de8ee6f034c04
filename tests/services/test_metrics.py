"""The rendezvous' Prometheus metrics, scraped from a real server and checked by promtool.

The camera's textfile is tested in tests/camera/test_metrics.py and, with a real
camera agent and viewer, in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from camera.identity import DeviceIdentity
from services.rendezvous import BadRendezvousConfig, RendezvousConfig, start_rendezvous
from services.routing import Peer, Router
from services.signaling import Role
from services.signatures import encode_public_key, register_statement, sign
from services.turn import TurnConfig, mint
from tests.conftest import scaled
from tests.prometheus import assert_lint_clean, promtool, value
from tests.services.messages import legal

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "peercam.rules.yml"
SESSION = "s" * 22


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


class Served:
    def __init__(self, port: int, server: Any) -> None:
        self.port, self.server = port, server
        self.base = f"http://127.0.0.1:{port}"


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    turn = TurnConfig("s" * 32, ["turn:127.0.0.1:3478"], 600)
    config = RendezvousConfig(
        credentials=lambda tag: [mint(turn, tag, time.time())],
        connection_burst=8, connection_rate=0.01, message_burst=5, message_rate=0.01,
        max_pending_per_ip=2, handshake_timeout=1.0,
    )
    server, runner, port = await start_rendezvous("127.0.0.1", 0, config)
    try:
        yield Served(port, server)
    finally:
        await runner.cleanup()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=scaled(5))
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def register(http: aiohttp.ClientSession, served: Served, identity: DeviceIdentity,
                   name: str | None = None) -> tuple[aiohttp.ClientWebSocketResponse,
                                                     dict[str, Any]]:
    ws = await http.ws_connect(f"{served.base}/ws/camera")
    hello = await receive(ws)
    statement = register_statement(name or f"127.0.0.1:{served.port}", hello["nonce"],
                                   identity.device_id)
    await ws.send_str(json.dumps({
        "type": "register", "device_id": identity.device_id,
        "device_key": encode_public_key(identity.private_key.public_key()),
        "signature": sign(identity.private_key, statement),
    }))
    return ws, await receive(ws)


async def test_sessions_registrations_and_errors_move_the_counters(served: Served) -> None:
    identity = DeviceIdentity.generate()
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, f"{served.base}/metrics")
        assert_lint_clean(before)
        assert value(before, "peercam_rendezvous_cameras_online") == 0
        assert value(before, "peercam_rendezvous_viewer_sessions_started_total", kind="offer") == 0

        # A registration signed for another server's name is refused and counted.
        refused_ws, refused = await register(http, served, identity, name="other.test:8080")
        assert refused["type"] == "error" and refused["code"] == "bad-signature"
        await refused_ws.close()
        camera, registered = await register(http, served, identity)
        assert registered["type"] == "registered"

        viewer = await http.ws_connect(f"{served.base}/ws/viewer")
        await receive(viewer)  # hello
        offer = {**legal(Role.VIEWER, "offer"), "device_id": identity.device_id,
                 "session_id": SESSION}
        await viewer.send_str(json.dumps(offer))
        routed = await receive(camera)
        assert routed["type"] == "offer" and routed["session_id"] == SESSION
        await camera.send_str(json.dumps({**legal(Role.CAMERA, "answer"),
                                          "session_id": SESSION}))
        assert (await receive(viewer))["type"] == "answer"
        await viewer.send_str("not json")
        assert (await receive(viewer))["code"] == "bad-message"

        during = await scrape(http, f"{served.base}/metrics")
        assert_lint_clean(during)
        assert value(during, "peercam_rendezvous_cameras_online") == 1
        assert value(during, "peercam_rendezvous_viewers_connected") == 1
        assert value(during, "peercam_rendezvous_viewer_sessions_started_total", kind="offer") == 1
        assert value(during, "peercam_rendezvous_viewer_sessions_answered_total",
                     kind="offer") == 1
        assert value(during, "peercam_rendezvous_viewer_sessions_active", kind="offer") == 1
        assert value(during, "peercam_rendezvous_viewer_sessions_active", kind="pair") == 0
        assert value(during, "peercam_rendezvous_registrations_total") == 1
        assert value(during, "peercam_rendezvous_registrations_refused_total",
                     reason="bad-signature") == 1
        assert value(during, "peercam_rendezvous_messages_received_total",
                     role="viewer", type="offer") == 1
        assert value(during, "peercam_rendezvous_messages_received_total",
                     role="camera", type="answer") == 1
        assert value(during, "peercam_rendezvous_messages_received_total",
                     role="viewer", type="invalid") == 1
        assert value(during, "peercam_rendezvous_errors_sent_total", code="bad-message") == 1
        assert value(during, "peercam_rendezvous_errors_sent_total", code="bad-signature") == 1
        # Registration and the offer each minted TURN credentials.
        assert value(during, "peercam_rendezvous_turn_credentials_issued_total") == 2

        await viewer.send_str(json.dumps({"type": "bye", "session_id": SESSION}))
        assert (await receive(camera))["type"] == "bye"
        await viewer.close()
        for _ in range(50):
            after = await scrape(http, f"{served.base}/metrics")
            if value(after, "peercam_rendezvous_viewers_connected") == 0:
                break
            await asyncio.sleep(0.05)
        assert value(after, "peercam_rendezvous_viewer_sessions_active", kind="offer") == 0
        assert value(after, "peercam_rendezvous_viewer_sessions_started_total", kind="offer") == 1
        assert value(after, "peercam_rendezvous_viewers_connected") == 0
        await camera.close()
        for _ in range(50):
            after = await scrape(http, f"{served.base}/metrics")
            if value(after, "peercam_rendezvous_cameras_online") == 0:
                break
            await asyncio.sleep(0.05)
        assert value(after, "peercam_rendezvous_cameras_online") == 0


async def test_every_limiter_counts_its_refusals(served: Served) -> None:
    # Pending connections from one address: 2 held open, the third gets 503; the
    # handshake deadline (1 s) then resets the two.
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(2)]
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    assert (await asyncio.wait_for(reader.read(64), scaled(5))).startswith(b"HTTP/1.1 503")
    writer.close()
    for held_reader, _ in held:  # reset at the deadline: end of stream
        assert await asyncio.wait_for(held_reader.read(), scaled(5)) == b""
    for _, held_writer in held:
        held_writer.close()
    async with aiohttp.ClientSession() as http:
        # Per-connection message rate: a burst of 5, then dropped.
        viewer = await http.ws_connect(f"{served.base}/ws/viewer")
        await receive(viewer)
        for _ in range(12):
            await viewer.send_str(json.dumps({"type": "bye", "session_id": SESSION}))
        await asyncio.sleep(0.3)
        # Per-IP connection rate: a burst of 8 WebSockets (one used above), then 429.
        statuses = []
        for _ in range(10):
            try:
                ws = await http.ws_connect(f"{served.base}/ws/viewer")
                await ws.close()
                statuses.append(101)
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
        assert 429 in statuses
        text = await scrape(http, f"{served.base}/metrics")
        await viewer.close()
    assert_lint_clean(text)
    assert value(text, "peercam_rendezvous_refusals_total", limiter="message_rate") == 12 - 5
    assert value(text, "peercam_rendezvous_refusals_total",
                 limiter="connection_rate") == statuses.count(429)
    assert value(text, "peercam_rendezvous_refusals_total", limiter="max_pending_per_ip") == 1
    assert value(text, "peercam_rendezvous_refusals_total", limiter="handshake_timeout") >= 2
    assert value(text, "peercam_rendezvous_refusals_total", limiter="max_connections") == 0
    assert value(text, "peercam_rendezvous_errors_sent_total", code="rate-limited") >= 1
    # The router's own refusals for the 5 byes that got through: no such session.
    assert value(text, "peercam_rendezvous_errors_sent_total", code="unknown-session") == 5
    assert value(text, "peercam_rendezvous_open_connections") >= 1


async def test_event_loop_lag_and_gc_pauses_are_observed(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(1.2)  # the probe sleeps 0.5 s between observations
        before = await scrape(http, f"{served.base}/metrics")
        time.sleep(0.6)  # blocks the loop the server runs on
        gc.collect()
        await asyncio.sleep(1.2)
        after = await scrape(http, f"{served.base}/metrics")
    assert value(before, "peercam_event_loop_lag_seconds_count") >= 1
    slow_before = (value(before, "peercam_event_loop_lag_seconds_count")
                   - value(before, "peercam_event_loop_lag_seconds_bucket", le="0.25"))
    slow_after = (value(after, "peercam_event_loop_lag_seconds_count")
                  - value(after, "peercam_event_loop_lag_seconds_bucket", le="0.25"))
    assert slow_after >= slow_before + 1  # the probe woke at least 0.25 s late once
    assert (value(after, "peercam_gc_pause_seconds_count", generation="2")
            > value(before, "peercam_gc_pause_seconds_count", generation="2"))
    assert value(after, "peercam_build_info", component="rendezvous") == 1
    assert value(after, "process_open_fds") > 0


async def test_each_server_has_its_own_registry() -> None:
    first, runner1, port1 = await start_rendezvous("127.0.0.1", 0)
    second, runner2, port2 = await start_rendezvous("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port1}/ws/viewer")
            await receive(ws)
            one = await scrape(http, f"http://127.0.0.1:{port1}/metrics")
            two = await scrape(http, f"http://127.0.0.1:{port2}/metrics")
            await ws.close()
    finally:
        await runner1.cleanup()
        await runner2.cleanup()
    assert value(one, "peercam_rendezvous_viewers_connected") == 1
    assert value(two, "peercam_rendezvous_viewers_connected") == 0
    assert first.registry is not second.registry


async def test_metrics_listen_moves_metrics_off_the_public_port() -> None:
    server, runner, port = await start_rendezvous(
        "127.0.0.1", 0, RendezvousConfig(metrics_listen=("127.0.0.1", 0)))
    try:
        assert server.metrics_port is not None and server.metrics_port != port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 404
            text = await scrape(http, f"http://127.0.0.1:{server.metrics_port}/metrics")
        assert_lint_clean(text)
        assert value(text, "peercam_rendezvous_cameras_online") == 0
        # A busy metrics address is one clear error, and the public port is released.
        busy = server.metrics_port
        with pytest.raises(BadRendezvousConfig, match=f"metrics_listen 127.0.0.1:{busy}"):
            await start_rendezvous("127.0.0.1", 0,
                                   RendezvousConfig(metrics_listen=("127.0.0.1", busy)))
    finally:
        await runner.cleanup()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{busy}/metrics")


def test_the_example_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def expected(alert: str, **labels: str) -> dict[str, Any]:
    """The alert as promtool reports it: its labels, its annotations filled in."""
    rules = yaml.safe_load(RULES.read_text())
    rule = next(r for group in rules["groups"] for r in group["rules"]
                if r.get("alert") == alert)
    annotations = {}
    for key, template in rule.get("annotations", {}).items():
        for name, label in labels.items():
            template = template.replace("{{ $labels.%s }}" % name, label)
        assert "{{" not in template, template
        annotations[key] = template
    return {"exp_labels": {**rule.get("labels", {}), **labels},
            "exp_annotations": annotations}


def test_the_example_rules_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires on its condition and not before."""
    cam = {"job": "peercam-camera", "instance": "cam1"}
    rdv = {"job": "peercam-rendezvous", "instance": "rdv"}
    cases: dict[str, Any] = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # The link goes to fault at minute 2; the rendezvous down at minute 2;
                # frames stop at minute 5.
                {"series": 'peercam_camera_rendezvous_state{job="peercam-camera",'
                           'instance="cam1",state="fault"}', "values": "0 0 1x20"},
                {"series": 'peercam_camera_rendezvous_registered{job="peercam-camera",'
                           'instance="cam1"}', "values": "1 1 0x20"},
                {"series": 'up{job="peercam-rendezvous",instance="rdv"}', "values": "1 1 0x20"},
                {"series": 'up{job="peercam-camera",instance="cam1"}', "values": "1x22"},
                {"series": 'peercam_camera_info{job="peercam-camera",instance="cam1",'
                           'device_id="D",source="testpattern",size="320x240"}',
                 "values": "1x22"},
                {"series": 'peercam_camera_frames_published_total{job="peercam-camera",'
                           'instance="cam1"}', "values": "0+1800x5 9000x16"},
                {"series": 'peercam_rendezvous_refusals_total{job="peercam-rendezvous",'
                           'instance="rdv",limiter="connection_rate"}',
                 "values": "0+600x21"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "PeercamCameraLinkFault", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "PeercamCameraLinkFault",
                 "exp_alerts": [expected("PeercamCameraLinkFault", **cam, state="fault")]},
                {"eval_time": "6m", "alertname": "PeercamCameraNotRegistered",
                 "exp_alerts": []},
                {"eval_time": "8m", "alertname": "PeercamCameraNotRegistered",
                 "exp_alerts": [expected("PeercamCameraNotRegistered", **cam)]},
                {"eval_time": "5m", "alertname": "PeercamRendezvousDown",
                 "exp_alerts": [expected("PeercamRendezvousDown", **rdv)]},
                {"eval_time": "5m", "alertname": "PeercamCameraNoFrames", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "PeercamCameraNoFrames",
                 "exp_alerts": [expected("PeercamCameraNoFrames", **cam)]},
                # The agent's metrics are there: not down.
                {"eval_time": "14m", "alertname": "PeercamCameraAgentDown", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "PeercamRendezvousManyRefusals",
                 "exp_alerts": [expected("PeercamRendezvousManyRefusals", instance="rdv",
                                         limiter="connection_rate")]},
            ],
        }],
    }
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(yaml.safe_dump(cases))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bad_metrics_listen_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from camera.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        code = main(["rendezvous", "--listen", "127.0.0.1:0",
                     "--metrics-listen", f"127.0.0.1:{busy}"])
    assert code == 2
    assert f"metrics_listen 127.0.0.1:{busy}" in capsys.readouterr().err


def test_the_router_counts_without_any_io() -> None:
    """The counters are the router's own plain numbers: no socket, no registry."""
    identity, other = DeviceIdentity.generate(), DeviceIdentity.generate()
    router = Router(server_names=["rdv.test:8080"], register_timeout=30.0)

    def registration(peer: Peer, key_of: DeviceIdentity = identity) -> str:
        statement = register_statement("rdv.test:8080", peer.nonce, identity.device_id)
        return json.dumps({
            "type": "register", "device_id": identity.device_id,
            "device_key": encode_public_key(key_of.private_key.public_key()),
            "signature": sign(identity.private_key, statement)})

    mismatched, camera, idle = Peer(Role.CAMERA), Peer(Role.CAMERA), Peer(Role.CAMERA)
    for peer in (mismatched, camera, idle):
        router.connected(peer, 0.0)
    router.received(mismatched, registration(mismatched, other), 1.0)
    router.disconnected(mismatched)  # the adapter closes it, as the router asked
    router.received(camera, registration(camera), 1.0)
    router.received(camera, registration(camera), 2.0)  # the same nonce again
    viewer = Peer(Role.VIEWER)
    router.connected(viewer, 0.0)
    pair = {**legal(Role.VIEWER, "pair"), "device_id": identity.device_id,
            "session_id": SESSION}
    router.received(viewer, json.dumps(pair), 3.0)
    router.expire(100.0)  # idle never registered; the pairing was never answered
    counters = router.counters
    assert counters.registrations == 1
    assert counters.registrations_refused == {"key-mismatch": 1, "replayed": 1, "timeout": 1}
    assert counters.sessions_started == {"pair": 1}
    assert counters.sessions_answered == {}
    assert counters.received[("camera", "register")] == 3
    assert counters.received[("viewer", "pair")] == 1
    assert counters.errors == {"bad-signature": 2, "timeout": 2}
