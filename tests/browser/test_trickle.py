"""Trickle ICE in real headless Chromium: the offer leaves before gathering is done.

The page sends its signed offer as soon as setLocalDescription resolves, then
each gathered candidate as a signed ``candidate`` message and end-of-candidates
(docs/protocol.md). Against a rendezvous that does not know ``candidate`` (an
older server), the page falls back to one complete offer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from camera.session import ViewerSession
from services.signaling import SCHEMAS, Role
from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

STATE = "({...window.peercam, timeline: {...window.peercam.timeline}})"


def _key(line: str) -> str:
    """foundation .. type: the part an SDP a=candidate line and an event's line share."""
    return " ".join(line.removeprefix("a=").split(" ")[:8])


class Opened:
    """A page on ``link`` in its own context, with what it sent and its script errors."""

    def __init__(self, context: Any, page: Any) -> None:
        self.context, self.page = context, page
        self.sent: list[dict[str, Any]] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("websocket", lambda ws: ws.on(
            "framesent", lambda payload: self.sent.append(json.loads(payload))))


async def _open(browser: Any, link: str) -> Opened:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    opened = Opened(context, await context.new_page())
    await opened.page.goto(link)
    return opened


async def test_chromium_offers_at_once_then_trickles_signed_candidates(
    stack: Stack, browser: Any
) -> None:
    camera = await stack.camera()
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    opened = await _open(browser, link)
    page, sent = opened.page, opened.sent
    try:
        await page.wait_for_function("window.peercam.framesDecoded > 0",
                                     timeout=scaled(20) * 1000)
        await page.wait_for_function("'endOfCandidates' in window.peercam.timeline",
                                     timeout=scaled(10) * 1000)
        first = await page.evaluate("window.peercam.framesDecoded")
        await page.wait_for_timeout(1500)
        state = await page.evaluate(STATE)
        sessions = list(camera.sessions.values())
        assert len(sessions) == 1
        taken = sessions[0].trickled
        kept = sessions[0].session_id
    finally:
        await opened.context.close()
    assert opened.errors == []
    assert state["framesDecoded"] >= first + 15, state  # live video
    assert state["state"] == "connected" and state["trickle"] is True, state

    # The session the camera kept (on a busy machine the page may have given up on a
    # first one and started again: each session's messages are its own).
    sent = [m for m in sent if m.get("session_id") == kept]
    types = [m["type"] for m in sent]
    offer_at = types.index("offer")
    offer = sent[offer_at]
    trickled = [m for m in sent if m["type"] == "candidate"]
    assert types.index("candidate") > offer_at, types  # never before its session exists
    assert [m["seq"] for m in trickled] == list(range(len(trickled)))
    assert all(m["session_id"] == offer["session_id"] for m in trickled)
    *candidates, end = trickled
    assert end["candidate"] == "" and "sdp_mid" not in end  # end-of-candidates, last
    assert candidates and state["candidatesSent"] == len(candidates)
    # The offer left before gathering was done: the candidates above were gathered
    # after its SDP was taken (none of them is in it). This is the proof, not the
    # page's clock: "gathered" comes only 25-170 ms after "offer" here, and the
    # machine may be busier than that.
    in_offer = {_key(line) for line in offer["sdp"].split("\r\n")
                if line.startswith("a=candidate:")}
    assert not in_offer & {_key(m["candidate"]) for m in candidates}
    assert "a=end-of-candidates" not in offer["sdp"]
    timeline = state["timeline"]
    assert timeline["offer"] <= timeline["firstCandidateSent"] <= timeline["endOfCandidates"]
    assert "gathered" in timeline, timeline
    # Only the BUNDLE tag's candidates, only UDP: what the camera's aioice can use.
    tag = next(line.split(" ")[1] for line in offer["sdp"].split("\r\n")
               if line.startswith("a=group:BUNDLE "))
    assert {m["sdp_mid"] for m in candidates} == {tag}
    assert all(m["candidate"].split(" ")[2].lower() == "udp" for m in candidates)
    # The camera took every one (signatures verified), end-of-candidates included.
    assert taken == len(trickled) and camera.refusals == 0


async def test_chromium_falls_back_to_a_complete_offer_when_the_server_refuses_candidate(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rendezvous from before trickle ICE: "candidate" is an unknown type to it.
    monkeypatch.delitem(SCHEMAS, (Role.VIEWER, "candidate"))
    # The camera answers a little late, so the refusal arrives before the answer
    # (as it would on any real network: the server replies at once, the camera
    # has to set up a peer connection first).
    answer = ViewerSession.answer

    async def late_answer(self: ViewerSession, offer_sdp: str) -> str:
        await asyncio.sleep(0.5)
        return await answer(self, offer_sdp)

    monkeypatch.setattr(ViewerSession, "answer", late_answer)
    camera = await stack.camera()
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    opened = await _open(browser, link)
    page, sent = opened.page, opened.sent
    try:
        await page.wait_for_function(
            "window.peercam.trickle === false && window.peercam.framesDecoded > 10",
            timeout=scaled(30) * 1000)
        state = await page.evaluate(STATE)
    finally:
        await opened.context.close()
    assert opened.errors == []
    # A second session (the refused one never showed video: no reconnect counted).
    assert state["sessions"] >= 2 and state["state"] == "connected", state
    offers = [i for i, m in enumerate(sent) if m["type"] == "offer"]
    first, last = sent[offers[0]], sent[offers[-1]]
    assert "a=candidate:" not in first["sdp"]  # trickling: sent before gathering
    assert "a=candidate:" in last["sdp"]  # the fallback: gathered first, all in the offer
    assert all(m["type"] != "candidate" for m in sent[offers[-1]:])
