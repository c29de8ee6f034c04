"""Run inside a lab namespace: play a camera through the WHEP gateway with aiortc.

    python -m tests.lab.whep_player URL TOKEN SECONDS [ICE_SERVERS_JSON]

POSTs an offer (no trickle: aiortc gathers first), plays for SECONDS after the
first frame, DELETEs, and prints one JSON line: frames, the nominated pair's
candidate types, and the HTTP statuses (or an error).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from camera.webrtc import make_peer_connection, prefer_h264, selected_pair


async def main(url: str, token: str, seconds: float,
               ice_servers: list[dict[str, Any]]) -> dict[str, Any]:
    pc = make_peer_connection(ice_servers)
    result: dict[str, Any] = {"frames": 0}
    framed = asyncio.Event()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    prefer_h264(transceiver)

    async def consume(track: Any) -> None:
        while True:
            await track.recv()
            result["frames"] += 1
            framed.set()

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.create_task(consume(track))))
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(url, data=pc.localDescription.sdp.encode(),
                                 headers={**headers, "Content-Type": "application/sdp"}) as r:
                result["post"] = r.status
                body = await r.text()
                if r.status != 201:
                    result["error"] = body.strip()
                    return result
                location = str(r.url.join(aiohttp.client.URL(r.headers["Location"])))
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
            try:
                await asyncio.wait_for(framed.wait(), 30)
            except TimeoutError:
                result["error"] = "no frame within 30 s"
            else:
                await asyncio.sleep(seconds)
            local, remote, _address = selected_pair(pc)
            result["local_candidate"], result["remote_candidate"] = local, remote
            async with http.delete(location, headers=headers) as r:
                result["delete"] = r.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
    return result


if __name__ == "__main__":
    servers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), servers))),
          flush=True)
