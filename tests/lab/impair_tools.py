"""Measuring programs for the fault and impairment tests, run inside lab namespaces.

    python -m tests.lab.impair_tools sink ADDR PORT SECONDS
    python -m tests.lab.impair_tools source HOST PORT COUNT INTERVAL SIZE
    python -m tests.lab.impair_tools mapper HOST PORT

``sink`` prints "ready", then, SECONDS later (or 0.5 s after the last datagram),
one JSON line: ``[[seq, sent, received], ...]`` in arrival order. ``source`` sends
COUNT datagrams of SIZE bytes, INTERVAL seconds apart (0: back to back), each
starting with "seq sent". Both stamp with time.monotonic: CLOCK_MONOTONIC is one
clock for every network namespace, so received - sent is the one-way delay.
``mapper`` keeps one UDP socket; for every line on stdin it sends a STUN Binding
request to HOST:PORT and prints "mapped IP PORT" (or "timeout").
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from services.stun.message import Message, MessageClass, Method, parse

IDLE_SECONDS = 0.5


def sink(address: str, port: int, seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((address, port))
        print("ready", flush=True)
        got: list[tuple[int, float, float]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(min(left, IDLE_SECONDS) if got else left)
            try:
                data = sock.recv(65_536)
            except TimeoutError:
                if got:
                    break
                continue
            now = time.monotonic()
            seq, sent = data.split(b" ", 2)[:2]
            got.append((int(seq), float(sent), now))
        print(json.dumps(got), flush=True)


def source(host: str, port: int, count: int, interval: float, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for seq in range(count):
            if interval:
                pause = start + seq * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            head = f"{seq} {time.monotonic():.6f} ".encode()
            sock.sendto(head + b"x" * max(0, size - len(head)), (host, port))


def mapper(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        print("ready", flush=True)
        for _ in sys.stdin:
            request = Message(Method.BINDING, MessageClass.REQUEST)
            answer = "timeout"
            for _attempt in range(5):
                sock.sendto(request.encode(), (host, port))
                sock.settimeout(0.3)
                try:
                    data = sock.recv(2048)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                reply = parse(data)
                if reply.transaction_id != request.transaction_id:
                    continue
                mapped = reply.attributes.get("XOR-MAPPED-ADDRESS")
                answer = f"mapped {mapped[0]} {mapped[1]}"
                break
            print(answer, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("sink")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p = commands.add_parser("source")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("interval", type=float)
    p.add_argument("size", type=int)
    p = commands.add_parser("mapper")
    p.add_argument("host")
    p.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "sink":
        sink(args.address, args.port, args.seconds)
    elif args.command == "source":
        source(args.host, args.port, args.count, args.interval, args.size)
    else:
        mapper(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
