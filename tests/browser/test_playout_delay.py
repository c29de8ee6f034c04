"""Real Chromium against a real camera: the playout-delay extension Chromium offers is
answered and every video packet on the wire carries 0/0; Chromium renders without
holding frames in its jitter buffer."""

from __future__ import annotations

from typing import Any

import pytest

from camera.compat.playout import URI, offered_id
from tests.camera.test_playout_delay import tap_sent_rtp, video_extensions
from tests.conftest import Stack, scaled

pytestmark = pytest.mark.browser

# Keeps the page's peer connection reachable (the page holds it privately).
_RECORDER_JS = """(() => {
  const Native = window.RTCPeerConnection;
  const made = [];
  window.peercamTestConnections = made;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); made.push(this); }
  };
})();"""

_STATE_JS = """async () => {
  const pc = window.peercamTestConnections.at(-1);
  let inbound = null;
  for (const s of (await pc.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
  }
  return {offer: pc.localDescription.sdp, answer: pc.remoteDescription.sdp,
          emitted: inbound.jitterBufferEmittedCount, decoded: inbound.framesDecoded};
}"""


async def test_chromium_negotiates_the_extension_and_the_camera_stamps_it(
    stack: Stack, browser: Any
) -> None:
    camera = await stack.camera()  # the default setting: playout delay 0/0
    link = f"{stack.link(camera)}&pair={camera.open_pairing(reusable=True)}"
    context = await browser.new_context()
    try:
        await context.add_init_script(_RECORDER_JS)
        page = await context.new_page()
        await page.goto(link)
        await page.wait_for_function("window.peercam && window.peercam.framesDecoded > 0",
                                     timeout=scaled(20) * 1000)
        (session,) = camera.sessions.values()
        sender = session.pc.getTransceivers()[0].sender
        tap = await tap_sent_rtp(sender, scaled(5))
        before = await page.evaluate(_STATE_JS)
        await page.wait_for_function(f"window.peercam.framesDecoded > {before['decoded'] + 15}",
                                     timeout=scaled(10) * 1000)
        after = await page.evaluate(_STATE_JS)
    finally:
        await context.close()
    extension_id = offered_id(after["offer"], None)
    assert extension_id is not None, "Chromium's offer no longer lists playout-delay"
    assert f"a=extmap:{extension_id} {URI}" in after["answer"]
    packets = video_extensions(tap, sender._ssrc)
    assert packets and all(x.get(extension_id) == b"\x00\x00\x00" for x in packets)
    # Chromium played the stamped frames out of its jitter buffer.
    assert after["emitted"] > before["emitted"]
