"""How cluster nodes should talk through Redis: pub/sub or streams, measured.

    python -m bench.scale_cluster --transport [--count 2000]

Starts its own redis-server on a free port; two clients play two nodes: one
sends a 1 KiB message to the other's channel (or stream), which sends it back.
Prints the round trip's p50/p99 for each and the memory Redis holds afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis

PAYLOAD = "x" * 1024
#: Round trips with no reply within 2 s, by transport.
LOST = {"pubsub": 0, "streams": 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _pubsub(url: str, count: int) -> list[float]:
    a, b = aioredis.from_url(url), aioredis.from_url(url)
    sub_a, sub_b = a.pubsub(ignore_subscribe_messages=True), b.pubsub(
        ignore_subscribe_messages=True)
    await sub_a.subscribe("to:a")
    await sub_b.subscribe("to:b")

    async def echo() -> None:
        while True:
            message = await sub_b.get_message(timeout=1.0)
            if message is not None:
                await b.publish("to:a", message["data"])

    task = asyncio.create_task(echo())
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await a.publish("to:b", PAYLOAD)
        try:
            async with asyncio.timeout(2.0):
                while await sub_a.get_message(timeout=1.0) is None:
                    pass
        except TimeoutError:
            LOST["pubsub"] += 1
            continue
        times.append(time.perf_counter() - start)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for client in (sub_a, sub_b, a, b):
        await client.aclose()
    return times


async def _streams(url: str, count: int) -> list[float]:
    a, b = aioredis.from_url(url), aioredis.from_url(url)

    async def echo() -> None:
        last = "0-0"
        while True:
            got = await b.xread({"to:b": last}, block=1000, count=10)
            for _stream, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    await b.xadd("to:a", fields, maxlen=1000, approximate=True)

    task = asyncio.create_task(echo())
    await asyncio.sleep(0.1)
    times = []
    last = "0-0"
    for _ in range(count):
        start = time.perf_counter()
        await a.xadd("to:b", {"m": PAYLOAD}, maxlen=1000, approximate=True)
        try:
            async with asyncio.timeout(2.0):
                while True:
                    got = await a.xread({"to:a": last}, block=1000, count=1)
                    if got:
                        last = got[0][1][-1][0]
                        break
        except TimeoutError:
            LOST["streams"] += 1
            continue
        times.append(time.perf_counter() - start)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for client in (a, b):
        await client.aclose()
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"p50_us": round(statistics.median(ordered) * 1e6),
            "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6)}


async def transport(count: int) -> dict[str, Any]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", directory],
                                stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(100):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                time.sleep(0.05)
            out: dict[str, Any] = {}
            for name, run in (("pubsub", _pubsub), ("streams", _streams)):
                client = aioredis.from_url(url)
                await client.flushall()
                before = (await client.info("memory"))["used_memory"]
                out[name] = _summary(await run(url, count))
                after = (await client.info("memory"))["used_memory"]
                out[name]["memory_left_kib"] = round((after - before) / 1024)
                out[name]["lost"] = LOST[name]
                await client.aclose()
            return out
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", action="store_true", required=True)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    print(asyncio.run(transport(args.count)))


if __name__ == "__main__":
    main()
