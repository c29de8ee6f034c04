"""The camera's answer in real headless Chromium: its server-reflexive candidates first.

Chromium checks one candidate pair every ~50 ms, the highest-priority first: the
camera's host candidate, reachable only on the camera's LAN. The page applies the
verified answer with only the camera's server-reflexive candidates in it and
adds the others right after (docs/protocol.md), so the pair through both NATs
is checked at once. On loopback the camera has no server-reflexive
candidate: the test camera's answer gets one (an unreachable documentation
address), one layer below the page, before the camera signs it.
"""

from __future__ import annotations

from typing import Any

import pytest

from camera.session import ViewerSession
from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

SRFLX = "candidate:9 1 udp 1694498815 192.0.2.77 9 typ srflx raddr 0.0.0.0 rport 0"

RECORD = """(() => {
  // What the page hands Chromium: the answers it applies, the candidates it adds.
  // Each entry names its peer connection: a page that heals on a busy machine makes a
  // second one.
  window.__applied = [];
  window.__added = [];
  const Base = window.RTCPeerConnection;
  let made = 0;
  window.RTCPeerConnection = class extends Base {
    constructor(...args) { super(...args); this.__n = made++; }
    setRemoteDescription(d) {
      window.__applied.push([this.__n, d.sdp]); return super.setRemoteDescription(d);
    }
    addIceCandidate(c) {
      window.__added.push([this.__n, c.candidate]); return super.addIceCandidate(c);
    }
  };
})();"""


async def test_the_cameras_reflexive_candidate_is_added_first(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = ViewerSession.answer

    async def with_srflx(self: ViewerSession, offer_sdp: str) -> str:
        sdp = await answer(self, offer_sdp)
        first = sdp.index("a=candidate:")  # the first m-section's (the BUNDLE tag's)
        return f"{sdp[:first]}a={SRFLX}\r\n{sdp[first:]}"

    monkeypatch.setattr(ViewerSession, "answer", with_srflx)
    camera = await stack.camera()
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    context = await browser.new_context()
    errors: list[str] = []
    try:
        await context.add_init_script(RECORD)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(link)
        await page.wait_for_function("window.peercam.framesDecoded > 0",
                                     timeout=scaled(20) * 1000)
        applied_by = await page.evaluate("window.__applied")
        added_by = await page.evaluate("window.__added")
        timeline = await page.evaluate("({...window.peercam.timeline})")
    finally:
        await context.close()
    assert errors == []
    # The page's first session (a later one is a heal on a busy machine): its answer
    # went in with the camera's srflx candidate only; the others after it.
    first = applied_by[0][0]
    applied = [sdp for n, sdp in applied_by if n == first]
    added = [c for n, c in added_by if n == first]
    assert len(applied) == 1, applied
    in_answer = [line[2:] for line in applied[0].split("\r\n") if line.startswith("a=candidate:")]
    assert in_answer and set(in_answer) == {SRFLX}, applied
    assert "a=end-of-candidates" not in applied[0]
    assert added and all(" typ host" in c for c in added), added
    assert len(set(added)) == len(added)
    assert "candidatesAdded" in timeline, timeline
