"""The raw NAT probe's two programs, run inside lab namespaces by the lab.

    python -m services.natlab.probe server --addresses A1 A2 [B1 B2] --ports P1 P2
    python -m services.natlab.probe client --addresses A1 A2 --ports P1 P2 [--tcp]

The server prints ``ready`` once every socket is bound and then answers until it
is killed. The client prints one line of JSON (``ProbeResult``). Wire format and
classification live in ``services.natlab.behaviour``; this is only the sockets.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import secrets
import selectors
import socket
import sys
import time

from services.natlab.behaviour import (
    FILTER_SOURCES,
    OTHER_ADDR,
    OTHER_PORT,
    SAME,
    Endpoint,
    ProbeResult,
    filter_request,
    from_reply,
    map_request,
    parse_from,
    parse_request,
    parse_seen,
    seen_reply,
)

logger = logging.getLogger(__name__)

ATTEMPT_SECONDS = 0.08
"""Wait per request before sending it again. The lab has no loss and sub-ms RTT;
a retry only covers the first packet waiting for ARP/ND."""

ATTEMPTS = 3

FILTER_GRACE_SECONDS = 0.15
"""After the "same" answer arrived, how long the others may still come. They are
sent back to back with it, so anything later than this was dropped by the NAT."""

TCP_TIMEOUT_SECONDS = 1.0


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _udp(address: str, port: int) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock


def serve(addresses: list[str], ports: tuple[int, int]) -> None:
    """Answer MAP and FILTER requests on every (address, port) pair, and TCP on A1:P1.

    ``addresses`` is A1 A2 (and optionally B1 B2 of the other family).
    """
    selector = selectors.DefaultSelector()
    udp: dict[Endpoint, socket.socket] = {}
    for address in addresses:
        for port in ports:
            sock = _udp(address, port)
            udp[(address, port)] = sock
            selector.register(sock, selectors.EVENT_READ, ("udp", address, port))
    pairs = [addresses[i : i + 2] for i in range(0, len(addresses), 2)]
    for first, _ in pairs:
        listener = socket.socket(_family(first), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((first, ports[0]))
        listener.listen(16)
        selector.register(listener, selectors.EVENT_READ, ("tcp", first, ports[0]))
    # The other address of the same family, for the "addr" answer.
    other = {first: second for first, second in pairs}
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    while True:
        for key, _ in selector.select():
            kind, address, port = key.data
            ready = key.fileobj
            if not isinstance(ready, socket.socket):
                continue
            if kind == "tcp":
                conn, peer = ready.accept()
                with conn:
                    conn.sendall(seen_reply("tcp", (peer[0], peer[1])) + b"\n")
                continue
            data, peer = ready.recvfrom(2048)
            source: Endpoint = (peer[0], peer[1])
            try:
                verb, nonce = parse_request(data)
            except ValueError as exc:
                logger.debug("ignored: %s", exc)
                continue
            if verb == "MAP":
                ready.sendto(seen_reply(nonce, source), peer)
            elif address in other and port == ports[0]:
                # Only the primary (A1:P1) gets FILTER requests; answer from the
                # asked endpoint last so that it is no earlier than the others.
                udp[(address, ports[1])].sendto(from_reply(nonce, OTHER_PORT), peer)
                udp[(other[address], ports[1])].sendto(from_reply(nonce, OTHER_ADDR), peer)
                ready.sendto(from_reply(nonce, SAME), peer)


def _ask(sock: socket.socket, request: bytes, server: Endpoint, nonce: str) -> Endpoint | None:
    for _ in range(ATTEMPTS):
        sock.sendto(request, server)
        deadline = time.monotonic() + ATTEMPT_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                continue
            if (peer[0], peer[1]) == server and (seen := parse_seen(data, nonce)) is not None:
                return seen
    return None


def _filtering(addresses: list[str], ports: tuple[int, int]) -> list[str]:
    primary = (addresses[0], ports[0])
    nonce = secrets.token_hex(6)
    arrived: list[str] = []
    with socket.socket(_family(addresses[0]), socket.SOCK_DGRAM) as sock:
        for _ in range(ATTEMPTS):
            sock.sendto(filter_request(nonce), primary)
            deadline = time.monotonic() + ATTEMPT_SECONDS
            while len(arrived) < len(FILTER_SOURCES) and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, _ = sock.recvfrom(2048)
                except TimeoutError:
                    break
                which = parse_from(data, nonce)
                if which is not None and which not in arrived:
                    arrived.append(which)
                    if which == SAME:
                        deadline = time.monotonic() + FILTER_GRACE_SECONDS
            if SAME in arrived:
                break
    return arrived


def _tcp(address: str, port: int) -> Endpoint | None:
    try:
        with socket.create_connection((address, port), timeout=TCP_TIMEOUT_SECONDS) as conn:
            data = conn.recv(256).strip()
    except OSError:
        return None
    return parse_seen(data, "tcp")


def probe(addresses: list[str], ports: tuple[int, int], tcp: bool) -> ProbeResult:
    """Run the mapping, filtering and (optionally) TCP probes against one server."""
    a1, a2 = addresses[0], addresses[1]
    p1, p2 = ports
    nonce = secrets.token_hex(6)
    family = _family(a1)
    mapped: list[Endpoint | None] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        # The source address the kernel picks towards A1, to tell "no NAT" from NAT.
        with socket.socket(family, socket.SOCK_DGRAM) as scout:
            scout.connect((a1, p1))
            local: Endpoint = (scout.getsockname()[0], sock.getsockname()[1])
        for server in ((a1, p1), (a1, p2), (a2, p1)):
            seen = _ask(sock, map_request(nonce), server, nonce)
            mapped.append(seen)
            if seen is None:
                # UDP does not get out; the rest would only wait for nothing.
                mapped += [None] * (3 - len(mapped))
                break
    filtered = _filtering(addresses, ports) if mapped[0] is not None else []
    return ProbeResult(
        local=local,
        mapped=mapped,
        filtered=filtered,
        tcp=_tcp(a1, p1) if tcp else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.natlab.probe")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--addresses", nargs="+", required=True)
    parser.add_argument("--ports", nargs=2, type=int, required=True)
    parser.add_argument("--tcp", action="store_true")
    args = parser.parse_args(argv)
    ports = (args.ports[0], args.ports[1])
    if len(args.addresses) not in (2, 4):
        parser.error("--addresses takes A1 A2 [B1 B2]")
    if args.role == "server":
        try:
            serve(args.addresses, ports)
        except KeyboardInterrupt:
            return 0
        return 0
    result = probe(args.addresses, ports, args.tcp)
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
