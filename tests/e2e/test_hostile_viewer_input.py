"""The CLI viewer never dies on what a hostile rendezvous sends it.

A rendezvous double (a real aiohttp WebSocket server speaking just enough of
the protocol) puts an arbitrary JSON value (lone surrogates, NUL, 64 KiB
strings, deep nesting, wrong types) in one field of one server message (hello,
prepared, answer, paired, bye, error, candidate), or adds an unknown field,
then hangs up. Whatever it sends, :func:`camera.client.viewer.view` ends with a
:class:`ViewError` (which ``peercam view`` turns into one line and an exit
status), never another exception.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camera.cli import exits
from camera.client.viewer import ViewerIdentity, ViewError, view
from camera.identity import DeviceIdentity
from services.signatures import encode_public_key

DEVICE = DeviceIdentity.generate()
DEVICE_KEY = encode_public_key(DEVICE.private_key.public_key())
TYPES = ["hello", "prepared", "answer", "paired", "bye", "error", "candidate"]


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


SPECIAL = st.sampled_from([
    "\ud800", "\udfff", "a\x00b", "\x00", "x" * 65536, "\u202e\u0000\ud83d", deep(200),
    {"a": deep(50)}, [], {}, -1, 2**70, 1e308, float("inf"), True, None,
    [{"urls": ["stun:\ud800"]}], [{"urls": "turn:\x00"}], [{"urls": ["stun:" + "h" * 300]}],
    [{"urls": ["turn:127.0.0.1:9"], "username": "\ud800", "credential": 5}],
])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
HOSTILE = SPECIAL | JSON


def base(kind: str, session_id: str) -> dict[str, Any]:
    """A well-formed message of ``kind`` (signatures not valid: the server cannot sign)."""
    return {
        "hello": {"type": "hello", "server": "double", "nonce": "n" * 22, "ice_servers": []},
        "prepared": {"type": "prepared", "session_id": session_id, "ice_servers": []},
        "answer": {"type": "answer", "session_id": session_id, "sdp": "v=0\r\n",
                   "device_key": DEVICE_KEY, "signature": "A" * 86},
        "paired": {"type": "paired", "session_id": session_id, "device_key": DEVICE_KEY,
                   "signature": "A" * 86},
        "bye": {"type": "bye", "session_id": session_id, "reason": "not authorized"},
        "error": {"type": "error", "session_id": session_id, "code": "unavailable",
                  "message": "camera offline"},
        "candidate": {"type": "candidate", "session_id": session_id, "seq": 0,
                      "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                      "sdp_mid": "0", "signature": "A" * 86},
    }[kind]


class Double:
    """Answers each client message in order; the chosen one is made hostile, then it hangs up."""

    def __init__(self) -> None:
        self.kind = "hello"
        self.field = "type"
        self.value: Any = None
        self.raw: str | None = None

    def hostile(self, session_id: str) -> str:
        if self.raw is not None:
            return self.raw
        message = base(self.kind, session_id)
        message[self.field] = self.value
        return json.dumps(message)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.kind == "hello":
            await ws.send_str(self.hostile(""))
            await ws.close()
            return ws
        await ws.send_str(json.dumps(base("hello", "")))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            sent = json.loads(msg.data)
            session_id = str(sent.get("session_id", ""))
            reply = {"pair": "paired", "prepare": "prepared", "offer": "answer"}.get(sent["type"])
            if reply is None:
                continue
            if reply == self.kind or (sent["type"] == "offer" and self.kind in
                                      ("bye", "error", "candidate")):
                await ws.send_str(self.hostile(session_id))
                await ws.close()
                break
            honest = base(reply, session_id)
            await ws.send_str(json.dumps(honest))
        return ws


@pytest.fixture
def double_url() -> Any:
    """The double on a port of its own, served by a loop each example runs in."""
    return Double()


async def run_view(double: Double, identity: ViewerIdentity) -> BaseException | None:
    app = web.Application()
    app.router.add_get("/ws/viewer", double.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    link = f"http://127.0.0.1:{port}/#device={DEVICE.device_id}"
    if double.kind == "paired":
        link += "&pair=" + "S" * 26
    try:
        await asyncio.wait_for(view(link, seconds=0.5, connect_timeout=1.0, identity=identity),
                               10)
    except BaseException as exc:  # the point: what, exactly, came out
        return exc
    finally:
        await runner.cleanup()
    return None


@settings(max_examples=70, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    kind=st.sampled_from(TYPES),
    field=st.sampled_from(["type", "session_id", "sdp", "device_key", "signature", "ice_servers",
                           "reason", "code", "message", "nonce", "server", "candidate", "seq",
                           "\ud800", "extra"]),
    value=HOSTILE,
    raw=st.none() | st.sampled_from(["", "null", "[]", "{", "\ud800", '"\\ud800"', "1e999",
                                     "{" * 5000, json.dumps(deep(900))]),
)
def test_any_server_message_ends_in_a_view_error(
    double_url: Double, tmp_path: Path, kind: str, field: str, value: Any, raw: str | None
) -> None:
    double = double_url
    double.kind, double.field, double.value, double.raw = kind, field, value, raw
    identity = ViewerIdentity.load_or_create(tmp_path / "viewer", name="hostile test")
    outcome = asyncio.run(run_view(double, identity))
    assert isinstance(outcome, ViewError), repr(outcome)
    assert str(outcome)  # something to print on the one line
    assert exits.exit_code_for(outcome) in (exits.FAILED, exits.ENDED_BY_CAMERA)
