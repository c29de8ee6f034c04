"""The WHEP gateway with a real rendezvous, a real camera agent and an aiortc player."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import aiohttp
import pytest

from camera.client.whep_config import CameraEntry
from camera.identity import DeviceIdentity
from tests.camera.whep_helpers import OTHER_TOKEN, TOKEN, player, running_gateway
from tests.conftest import Stack, scaled
from tests.prometheus import assert_lint_clean, value


async def metric(url: str, name: str, **labels: str) -> float:
    """A sample of the gateway's /metrics (0 for a labelled series not yet there)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    try:
        return value(text, name, **labels)
    except AssertionError:
        if labels:
            return 0.0
        raise


async def test_whep_player_watches_through_the_gateway(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path) as gw, player() as p:
        response = await p.play(gw.endpoint())
        assert response.status == 201, await response.text()
        assert response.headers["Content-Type"] == "application/sdp"
        assert p.location is not None and p.location.startswith("/front/whep/")
        assert p.etag and p.etag.startswith('"')
        # The rendezvous' ICE servers (its STUN-only hello list) are handed on as Link headers.
        await p.wait_frames(10, scaled(15))
        assert p.stamps, "frames decoded but none carried the test pattern's stamp"
        assert p.sizes == {(320, 240)}
        # The camera sees a session of the gateway's key, not of the player.
        assert any(s.viewer_key == gw.identity.key for s in agent.sessions.values())
        assert await metric(gw.url, "peercam_whep_sessions_started_total") == 1
        assert await metric(gw.url, "peercam_whep_sessions_active") == 1

        deleted = await p.delete(gw.endpoint())
        assert deleted.status == 200
        again = await p.delete(gw.endpoint())  # idempotent-safe
        assert again.status == 200 and "already ended" in await again.text()
        assert await metric(gw.url, "peercam_whep_sessions_active") == 0
        assert await metric(gw.url, "peercam_whep_http_requests_total", status="201") == 1


async def test_trickled_candidates_are_signed_and_forwarded(stack: Stack,
                                                            tmp_path: Path) -> None:
    """The offer goes without candidates; they come by PATCH, as browser players send them."""
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path) as gw, player() as p:
        response = await p.play(gw.endpoint(), trickle=True)
        assert response.status == 201, await response.text()
        assert "a=candidate:" not in p.offer_sdp
        await p.wait_frames(5, scaled(15))
        session = next(iter(agent.sessions.values()))
        assert session.trickled >= 1  # the camera applied signed candidates
        # A second PATCH with the same candidates adds nothing (each seq once).
        await p.pc.close()


async def test_a_camera_that_ends_the_session_frees_its_place(stack: Stack,
                                                               tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, max_sessions=1) as gw:
        async with player() as p:
            assert (await p.play(gw.endpoint())).status == 201
            await p.wait_frames(3, scaled(15))
            async with player() as q:
                busy = await q.play(gw.endpoint())
                assert busy.status == 503
                assert "gateway busy" in await busy.text()
                assert busy.headers.get("Retry-After")
            # The player goes away without DELETE: the camera notices (DTLS close) and
            # says bye; the gateway frees the place.
            await p.pc.close()
            async with asyncio.timeout(scaled(15)):
                while await metric(gw.url, "peercam_whep_sessions_active") != 0:
                    await asyncio.sleep(0.1)
            assert (await p.delete(gw.endpoint())).status == 200
        async with player() as r:
            assert (await r.play(gw.endpoint())).status == 201
            await r.wait_frames(3, scaled(15))
        assert await metric(gw.url, "peercam_whep_sessions_failed_total",
                            reason="gateway-full") == 1


async def test_offline_unpaired_and_busy_cameras_say_which(stack: Stack, tmp_path: Path,
                                                           make_identity: object) -> None:
    agent = await stack.camera(max_viewers=1)
    ghost = DeviceIdentity.load_or_create(tmp_path / "ghost").device_id
    extra = (CameraEntry("ghost", ghost, stack.url),)
    async with running_gateway(stack.url, agent, tmp_path, extra_cameras=extra) as gw:
        async with player() as p:
            offline = await p.play(gw.endpoint("ghost"))
            assert offline.status == 503
            assert "offline" in await offline.text()
        async with player() as p, player() as q:
            assert (await p.play(gw.endpoint())).status == 201
            busy = await q.play(gw.endpoint())
            assert busy.status == 503
            text = await busy.text()
            assert "busy" in text and "too many viewers" in text
        assert await metric(gw.url, "peercam_whep_sessions_failed_total", reason="busy") == 1
        assert await metric(gw.url, "peercam_whep_sessions_failed_total", reason="offline") == 1
    unpaired_agent = await stack.camera()
    async with running_gateway(stack.url, unpaired_agent, tmp_path / "u", paired=False) as gw:
        async with player() as p:
            refused = await p.play(gw.endpoint())
            assert refused.status == 502
            text = await refused.text()
            assert "refused this gateway" in text and "peercam whep pair" in text


async def test_another_clients_session_cannot_be_touched(stack: Stack,
                                                         tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path) as gw, player() as p:
        assert (await p.play(gw.endpoint())).status == 201
        await p.wait_frames(3, scaled(15))
        other_delete = await p.delete(gw.endpoint(), token=OTHER_TOKEN)
        assert other_delete.status == 404
        other_patch = await p.patch(gw.endpoint(), "a=end-of-candidates\r\n", token=OTHER_TOKEN)
        assert other_patch.status == 404
        frames = p.frames
        await p.wait_frames(frames + 5, scaled(10))  # still playing
        assert await metric(gw.url, "peercam_whep_sessions_active") == 1
        assert (await p.delete(gw.endpoint())).status == 200


async def test_the_token_is_never_logged(stack: Stack, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path) as gw, player() as p:
        assert (await p.play(gw.endpoint())).status == 201
        async with aiohttp.ClientSession() as http:
            await http.post(gw.endpoint(), data=b"v=0", headers={
                "Authorization": f"Bearer {TOKEN}x", "Content-Type": "application/sdp"})
        await p.delete(gw.endpoint())
    assert TOKEN not in caplog.text


async def test_metrics_are_lint_clean_and_ice_override_goes_to_the_player(
        stack: Stack, tmp_path: Path) -> None:
    """The gateway's own ICE list replaces the rendezvous' and reaches the player as Link."""
    agent = await stack.camera()
    override = [{"urls": ["stun:127.0.0.1:3478"]},
                {"urls": ["turn:127.0.0.1:3478?transport=udp"], "username": "u",
                 "credential": "c"}]
    async with running_gateway(stack.url, agent, tmp_path, ice_servers=override) as gw, \
            player() as p:
        response = await p.play(gw.endpoint())
        assert response.status == 201
        links = response.headers.getall("Link")
        assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
        assert any(link.startswith("<turn:127.0.0.1:3478?transport=udp>") and
                   'username="u"' in link for link in links)
        await p.wait_frames(3, scaled(15))
        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as m:
            assert_lint_clean(await m.text())


ANSWER_LIKE = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
               "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\na=mid:0\r\na=recvonly\r\n"
               "a=rtpmap:96 H264/90000\r\n")
VP8_ONLY = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:actpass\r\na=mid:0\r\na=recvonly\r\n"
            "a=rtpmap:96 VP8/90000\r\n")
AUDIO_ONLY = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
              "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\na=mid:0\r\n"
              "a=rtpmap:111 opus/48000/2\r\n")


async def raw_request(url: str, data: bytes) -> bytes:
    """Send raw bytes to the gateway (headers no HTTP client would send); its reply."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(scaled(10)):
            return await reader.read(4096)
    finally:
        writer.close()


async def test_hostile_input_gets_clear_statuses_and_the_gateway_keeps_serving(
        stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, burst=200.0, rate=100.0) as gw, \
            aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        sdp = {**auth, "Content-Type": "application/sdp"}
        endpoint = gw.endpoint()

        async def status(method: str, url: str, **kwargs: object) -> tuple[int, str]:
            async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
                return response.status, await response.text()

        cases: list[tuple[str, str, dict[str, object], int, str]] = [
            ("POST", endpoint, {"data": b"v=0"}, 401, "missing bearer token"),
            ("POST", endpoint, {"data": b"v=0", "headers": {"Authorization": "Bearer nope"}},
             401, "bad bearer token"),
            ("POST", endpoint, {"data": b"v=0", "headers": {"Authorization": "Basic eDp5"}},
             401, "missing bearer token"),
            ("POST", gw.endpoint("nowhere"), {"data": b"v=0", "headers": sdp}, 404,
             "no camera 'nowhere'"),
            ("POST", endpoint, {"data": b"v=0", "headers": {**auth,
                                                            "Content-Type": "text/plain"}},
             415, "application/sdp"),
            ("POST", endpoint, {"data": b"x" * (64 * 1024), "headers": sdp}, 413, "limit"),
            ("POST", endpoint, {"data": b"hello", "headers": sdp}, 400, "v=0"),
            ("POST", endpoint, {"data": b"", "headers": sdp}, 400, "empty body"),
            ("POST", endpoint, {"data": b"v=0\xff\xfe", "headers": sdp}, 400, "UTF-8"),
            ("POST", endpoint, {"data": b"v=0\r\ns=-\r\n", "headers": sdp}, 400, "no m="),
            ("POST", endpoint, {"data": ANSWER_LIKE.encode(), "headers": sdp}, 400,
             "not an offer"),
            ("POST", endpoint, {"data": VP8_ONLY.encode(), "headers": sdp}, 400, "H.264"),
            ("POST", endpoint, {"data": AUDIO_ONLY.encode(), "headers": sdp}, 400, "H.264"),
            ("GET", endpoint, {"headers": auth}, 405, "not allowed"),
            ("PUT", f"{endpoint}/" + "A" * 32, {"headers": auth}, 405, "not allowed"),
            ("DELETE", f"{endpoint}/" + "A" * 32, {"headers": auth}, 404, "no such session"),
            ("PATCH", f"{endpoint}/" + "A" * 32,
             {"headers": {**auth, "Content-Type": "application/trickle-ice-sdpfrag"},
              "data": b"a=end-of-candidates\r\n"}, 404, "no such session"),
            ("GET", f"{gw.url}/front/../../etc/passwd", {"headers": auth}, 404, "not found"),
            ("GET", f"{gw.url}/%ED%A0%80/whep", {"headers": auth}, 404, "not found"),
            ("POST", f"{gw.url}/%00/whep", {"headers": sdp, "data": b"v=0"}, 404, "not found"),
            ("POST", f"{gw.url}/" + "a" * 5000 + "/whep", {"headers": sdp}, 404, "not found"),
            ("GET", f"{gw.url}/front/snapshot.jpg?token=wrong", {}, 401, "bad bearer"),
        ]
        for method, url, kwargs, expected, words in cases:
            got, text = await status(method, url, **kwargs)
            assert got == expected and words in text, (method, url[:80], got, text[:200])

        # Headers no client library sends: a lone surrogate's bytes, latin-1, NULs.
        garbage = [
            b"POST /front/whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xed\xa0\x80\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0",
            b"POST /front/whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd"
            b"\r\nContent-Length: 0\r\n\r\n",
            b"POST /\xed\xa0\x80/whep HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /front/snapshot.jpg?token=%ED%A0%80 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /front/whep HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/sdp\r\n\r\n",
            b"\x00\x01\x02 garbage\r\n\r\n",
        ]
        for data in garbage:
            reply = await raw_request(gw.url, data)
            # 4xx from the gateway, or from aiohttp's parser before it (HTTP/1.0 400).
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), (data[:60], reply[:200])

        # A session of this token, touched with a wrong If-Match and an ICE restart.
        async with player() as p:
            assert (await p.play(endpoint)).status == 201
            resource = p.resource(endpoint)
            frag = {**auth, "Content-Type": "application/trickle-ice-sdpfrag"}
            got, text = await status("PATCH", resource, data=b"a=end-of-candidates\r\n",
                                     headers={**frag, "If-Match": '"other"'})
            assert got == 412, text
            got, text = await status("PATCH", resource, data=b"a=ice-ufrag:zzzz\r\n",
                                     headers={**frag, "If-Match": "*"})
            assert got == 422 and "ICE restart" in text
            got, text = await status("PATCH", resource, data=b"\x00garbage",
                                     headers=frag)
            assert got == 400, text
            # ... and the gateway still serves: the same player plays on.
            await p.wait_frames(5, scaled(15))
            assert (await p.delete(endpoint)).status == 200
        async with player() as q:
            assert (await q.play(endpoint)).status == 201
            await q.wait_frames(3, scaled(15))
        assert await metric(gw.url, "peercam_whep_http_requests_total", status="401") >= 3


async def test_clients_are_rate_limited(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, rate=1.0, burst=3.0) as gw, \
            aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(6):
            async with http.post(gw.endpoint(), data=b"v=0") as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
        assert statuses[:3] == [401, 401, 401] and 429 in statuses[3:]
        # /metrics is not limited (a scraper shares the address with nobody harmful).
        async with http.get(f"{gw.url}/metrics") as response:
            assert response.status == 200


async def test_cors_preflight_for_allowed_origins_only(stack: Stack, tmp_path: Path) -> None:
    agent = await stack.camera()
    origin = "http://player.example:8123"
    async with running_gateway(stack.url, agent, tmp_path, cors_origins=(origin,)) as gw, \
            aiohttp.ClientSession() as http:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization, content-type"}
        async with http.options(gw.endpoint(), headers=headers) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
            assert response.headers["Accept-Post"] == "application/sdp"
        async with http.options(gw.endpoint(), headers={**headers,
                                                        "Origin": "http://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.post(gw.endpoint(), data=b"v=0",
                             headers={"Origin": origin}) as response:
            assert response.status == 401  # errors carry CORS too, so the page can read why
            assert response.headers["Access-Control-Allow-Origin"] == origin


async def test_many_sessions_share_one_prepared_ice_list(stack: Stack, tmp_path: Path) -> None:
    """The rendezvous allows a connection 10 credential requests in a burst; every player
    shares the gateway's one connection, so a prepared list is reused."""
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path, rate=100.0, burst=100.0) as gw:
        for _ in range(14):
            async with player() as p:
                response = await p.play(gw.endpoint())
                assert response.status == 201, await response.text()
                assert (await p.delete(gw.endpoint())).status == 200
        assert gw.gateway.started == 14


async def test_the_token_may_come_in_the_query(stack: Stack, tmp_path: Path) -> None:
    """For clients that cannot set a header (go2rtc's WHEP source): ``?token=``."""
    agent = await stack.camera()
    async with running_gateway(stack.url, agent, tmp_path) as gw, player(token="") as p:
        response = await p.play(f"{gw.endpoint()}?token={TOKEN}")
        assert response.status == 201, await response.text()
        await p.wait_frames(3, scaled(15))
        assert (await p.delete(f"{gw.endpoint()}?token={TOKEN}")).status == 401
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{p.resource(gw.endpoint())}?token={TOKEN}") as deleted:
                assert deleted.status == 200
