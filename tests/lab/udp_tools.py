"""Tiny socket programs the lab tests run inside namespaces.

    python -m tests.lab.udp_tools listen ADDR PORT SECONDS [--hello HOST PORT]
    python -m tests.lab.udp_tools send ADDR PORT HOST PORT PAYLOAD
    python -m tests.lab.udp_tools tcp-listen ADDR PORT SECONDS
    python -m tests.lab.udp_tools tcp-connect HOST PORT

``listen`` prints "ready" once bound (and after sending its hello, which opens
the NAT's mapping), then "from IP PORT PAYLOAD" per datagram until SECONDS pass.
``tcp-connect`` prints the local address and exits 0 if the connection opened.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def listen(address: str, port: int, seconds: float, hello: tuple[str, int] | None) -> None:
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        if hello is not None:
            sock.sendto(b"hello", hello)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                continue
            print(f"from {peer[0]} {peer[1]} {data.decode(errors='replace')}", flush=True)


def send(address: str, port: int, to: tuple[str, int], payload: str) -> None:
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.sendto(payload.encode(), to)


def tcp_listen(address: str, port: int, seconds: float) -> None:
    with socket.socket(_family(address), socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(4)
        print("ready", flush=True)
        listener.settimeout(seconds)
        try:
            conn, peer = listener.accept()
        except TimeoutError:
            return
        with conn:
            print(f"accepted {peer[0]} {peer[1]}", flush=True)


def tcp_connect(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            local = conn.getsockname()
    except OSError as exc:
        print(f"failed {exc}", flush=True)
        return 1
    print(f"connected {local[0]} {local[1]}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("listen")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--hello", nargs=2)
    p = commands.add_parser("send")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("host")
    p.add_argument("to_port", type=int)
    p.add_argument("payload")
    p = commands.add_parser("tcp-listen")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p = commands.add_parser("tcp-connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "listen":
        hello = (args.hello[0], int(args.hello[1])) if args.hello else None
        listen(args.address, args.port, args.seconds, hello)
    elif args.command == "send":
        send(args.address, args.port, (args.host, args.to_port), args.payload)
    elif args.command == "tcp-listen":
        tcp_listen(args.address, args.port, args.seconds)
    else:
        return tcp_connect(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
