"""The server commands: ``demo``, ``rendezvous``, ``stun``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
from pathlib import Path
from typing import Any

from camera.cli.options import (
    add_ice_servers,
    add_video_flags,
    host_port,
    port_number,
    url_host,
    video_overrides,
)
from camera.cli.signals import serve_until_signalled, until_signalled
from camera.errors import BadConfig


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="rendezvous + test-pattern camera; prints the viewer link")
    demo.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    demo.add_argument("--port", type=port_number, default=8080)
    demo.add_argument("--state-dir", type=Path, default=None)
    demo.add_argument("--tls", action="store_true",
                      help="serve HTTPS with a generated self-signed certificate (phones on a LAN)")
    add_video_flags(demo)
    demo.set_defaults(handler=demo_command, needs_webrtc=True)

    rdv = sub.add_parser("rendezvous", help="run the rendezvous server")
    rdv.add_argument("--listen", type=host_port, default=("0.0.0.0", 8080), metavar="HOST:PORT")
    add_ice_servers(rdv, [], "STUN server handed to peers (repeatable)")
    rdv.add_argument("--server-name", action="append", default=[], metavar="HOST[:PORT]",
                     help="a name cameras dial this server by (repeatable; default: "
                          "$PEERCAM_SERVER_NAME, comma-separated, else the --listen address)")
    rdv.add_argument("--config", type=Path, metavar="FILE",
                     help="TOML file of connection settings (the flags below, with _ for -;"
                          " a flag given wins over the file)")
    rdv.add_argument("--handshake-timeout", type=float, metavar="S",
                     help="seconds from accept to a WebSocket upgrade (default 5)")
    rdv.add_argument("--max-pending", type=int, metavar="N",
                     help="connections not yet upgraded, in total (default 512)")
    rdv.add_argument("--max-pending-per-ip", type=int, metavar="N",
                     help="connections not yet upgraded, per IP address (default 16)")
    rdv.add_argument("--connection-rate", type=float, metavar="N",
                     help="new connections per second per IP address (default 5)")
    rdv.add_argument("--connection-burst", type=float, metavar="N",
                     help="new connections per IP address in a burst (default 40)")
    rdv.add_argument("--heartbeat", type=float, metavar="S",
                     help="WebSocket ping interval; a peer silent after a ping is dropped"
                          " (default 20)")
    rdv.add_argument("--register-timeout", type=float, metavar="S",
                     help="seconds a camera connection may stay unregistered (default 30)")
    rdv.add_argument("--max-connections", type=int, metavar="N",
                     help="open connections (default 0: the descriptor limit less 64)")
    rdv.add_argument("--shutdown-window", type=float, metavar="S",
                     help="on SIGTERM, close connections in batches over this long"
                          " (default 1.5)")
    rdv.add_argument("--reconnect-spread", type=float, metavar="S",
                     help="on SIGTERM, ask each camera to wait a random 0..S s before it"
                          " reconnects (default 1)")
    rdv.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=None,
                     help="freeze long-lived objects out of the garbage collector's walks"
                          " (default on)")
    rdv.add_argument("--metrics-listen", type=host_port, default=None, metavar="HOST:PORT",
                     help="serve /metrics only on this address (e.g. 127.0.0.1:9464), not on"
                          " the public port (default: /metrics on the public port)")
    rdv.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS/WSS")
    rdv.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    rdv.add_argument("--turn-url", action="append", default=[], metavar="URL",
                     help="TURN server URL to mint credentials for (repeatable)")
    rdv.add_argument("--turn-secret-file", type=Path,
                     help="coturn static-auth-secret, in a 0600 file")
    rdv.add_argument("--turn-ttl", type=int, default=600, help="credential lifetime (s)")
    rdv.add_argument("--redis-url", metavar="URL",
                     help="share presence with other nodes through this Redis"
                          " (redis://[:password@]host:port, rediss:// for TLS; default"
                          " $PEERCAM_REDIS_URL; none: this process alone)")
    rdv.add_argument("--redis-ca", type=Path, help="CA file for a rediss:// URL")
    rdv.add_argument("--node-id", help="this node's name among the others (default:"
                                       " host name and a random suffix)")
    rdv.add_argument("--presence-lease", type=float, default=15.0, metavar="S",
                     help="seconds a dead node's cameras stay in presence (default 15)")
    rdv.set_defaults(handler=rendezvous_command, needs_webrtc=False)

    stun = sub.add_parser("stun", help="run the STUN server (RFC 8489; RFC 5780 with two IPs)")
    stun.add_argument("--listen", default="0.0.0.0", metavar="IP[,IP2]",
                      help="one address, or two for RFC 5780 behaviour discovery")
    stun.add_argument("--port", type=port_number, default=3478)
    stun.add_argument("--alt-port", type=port_number, default=3479,
                      help="second port (RFC 5780)")
    stun.set_defaults(handler=stun_command, needs_webrtc=False)


def _turn_credentials(args: argparse.Namespace) -> Any:
    """A credential minter from --turn-url/--turn-secret-file, or None."""
    if not args.turn_url and not args.turn_secret_file:
        return None
    if not (args.turn_url and args.turn_secret_file):
        raise BadConfig("TURN needs both --turn-url and --turn-secret-file")
    import time

    from services.turn import TurnConfig, load_secret, mint

    try:
        turn = TurnConfig(load_secret(args.turn_secret_file), list(args.turn_url), args.turn_ttl)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    return lambda tag: [mint(turn, tag, time.time())]


def _cluster_settings(args: argparse.Namespace) -> Any:
    """Cluster settings from --redis-url (or $PEERCAM_REDIS_URL); None without one."""
    url = args.redis_url or os.environ.get("PEERCAM_REDIS_URL", "")
    if not url:
        if args.redis_ca or args.node_id:
            raise BadConfig("--redis-ca and --node-id need --redis-url (or PEERCAM_REDIS_URL)")
        return None
    from services.cluster import ClusterSettings

    options: dict[str, Any] = {"lease": args.presence_lease}
    if args.node_id:
        options["node_id"] = args.node_id
    if args.redis_ca:
        options["tls_ca"] = str(args.redis_ca)
    return ClusterSettings(url, **options)


async def _listen(host: str, port: int, config: Any, ssl_context: Any,
                  **options: Any) -> tuple[Any, Any, int]:
    """The rendezvous started on host:port; a port that cannot be had, or a setting it
    refuses, is one clear line."""
    from services.rendezvous import start_rendezvous

    try:
        return await start_rendezvous(host, port, config, ssl_context, **options)
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    except OSError as exc:
        hint = (" (is another peercam demo or rendezvous running? choose another with --port"
                " or --listen)" if exc.errno == errno.EADDRINUSE else "")
        raise BadConfig(f"cannot listen on {url_host(host)}:{port}: "
                        f"{exc.strerror or exc}{hint}") from None


async def rendezvous_command(args: argparse.Namespace) -> int:
    from services.rendezvous import RendezvousConfig, load_settings, server_names_from_env
    from services.tls import server_context

    host, port = args.listen
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise BadConfig("TLS needs both --tls-cert and --tls-key")
        try:
            ssl_context = server_context(args.tls_cert, args.tls_key)
        except ValueError as exc:
            raise BadConfig(str(exc)) from None
    names = tuple(args.server_name) or server_names_from_env(os.environ)
    try:
        cluster = _cluster_settings(args)
        settings = load_settings(args.config).merged({
            name: getattr(args, name) for name in (
                "handshake_timeout", "max_pending", "max_pending_per_ip", "max_connections",
                "connection_rate", "connection_burst", "heartbeat", "register_timeout",
                "shutdown_window", "reconnect_spread", "gc_freeze")})
        config = settings.applied_to(RendezvousConfig(
            ice_servers=args.ice_server, credentials=_turn_credentials(args),
            server_names=names, metrics_listen=args.metrics_listen, cluster=cluster))
    except ValueError as exc:
        raise BadConfig(str(exc)) from None
    server, runner, bound = await _listen(host, port, config, ssl_context)
    print(f"LISTENING {host}:{bound}", flush=True)
    # Stopped, the process ends as soon as its connections are closed (not unwound).
    await serve_until_signalled(f"listening on {host}:{bound}",
                                lambda: server.stop_process(runner))
    return 0


async def demo_command(args: argparse.Namespace) -> int:
    import segno

    from camera.config import DEFAULT_STATE_DIR, load_camera_config

    state_dir = args.state_dir or DEFAULT_STATE_DIR / "demo"
    host = args.host if args.host not in ("0.0.0.0", "::", "") else _lan_address()
    ssl_context, tls_ca, scheme = None, None, "http"
    if args.tls:
        from services.tls import self_signed, server_context

        cert, key = self_signed(state_dir, [host, "127.0.0.1", "localhost"])
        ssl_context, tls_ca, scheme = server_context(cert, key), str(cert), "https"
    # Registrations are checked against the names its own camera and link use.
    _server, runner, port = await _listen(
        args.host, args.port, None, ssl_context,
        names_for_port=lambda bound: [f"127.0.0.1:{bound}", f"{url_host(host)}:{bound}"])
    device = None
    # Signal handlers in place before the link is printed: a Ctrl-C as soon as it
    # shows is a clean stop, not a KeyboardInterrupt.
    signalled = asyncio.ensure_future(until_signalled())
    await asyncio.sleep(0)
    try:
        config = load_camera_config(
            None,
            None,
            {
                "rendezvous": f"{'wss' if args.tls else 'ws'}://127.0.0.1:{port}",
                "source": "testpattern",
                "state_dir": state_dir,
                "tls_ca": tls_ca,
                **video_overrides(args),
            },
        )
        from camera.device import Device

        device = Device(config)
        agent = await device.start()
        async with asyncio.timeout(10):
            await agent.registered.wait()
        # The demo's pairing secret stays valid while it runs, for any number of viewers.
        secret = agent.open_pairing(ttl=365 * 86400, reusable=True)
        fragment = f"#device={agent.device_id}&pair={secret}"
        # Browsers give the page WebCrypto only on https:// or localhost: without
        # TLS the link that works is this machine's loopback address.
        link_host = host if args.tls or args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        link = f"{scheme}://{url_host(link_host)}:{port}/{fragment}"
        loopback = _is_loopback(link_host)
        if not loopback:
            # A QR code is for a phone: only for a link a phone can open.
            with contextlib.suppress(Exception):
                segno.make(link, error="l").terminal(compact=True)
        print(f"DEVICE {agent.device_id}", flush=True)
        print(f"VIEWER {link}", flush=True)
        print("Open the link in a browser: it pairs that browser and plays.", flush=True)
        if args.tls:
            print("The certificate is self-signed: accept the browser's warning once.",
                  flush=True)
        if loopback:
            lan = _lan_address() if _is_loopback(host) else host
            where = ("peercam demo --tls, listening on the network (no --host 127.0.0.1): "
                     + (f"this machine is {lan}" if not _is_loopback(lan)
                        else "this machine has no network address now"))
            print(f"This link opens only in a browser on this machine, so there is no QR "
                  f"code. For a phone or another computer: {where}.", flush=True)
        print("Ctrl-C stops the demo.", flush=True)
        await signalled
    finally:
        signalled.cancel()
        if device is not None:
            await device.close()
        await runner.cleanup()
    return 0


async def stun_command(args: argparse.Namespace) -> int:
    from services.stun.errors import StunError
    from services.stun.server import run_stun_server

    addresses = [a.strip() for a in args.listen.split(",") if a.strip()]
    if not 1 <= len(addresses) <= 2:
        raise BadConfig(f"--listen {args.listen!r}: one address or two, comma-separated")
    try:
        server = await run_stun_server(
            addresses[0], addresses[1] if len(addresses) > 1 else None, args.port, args.alt_port
        )
    except (StunError, OSError) as exc:
        raise BadConfig(f"cannot serve STUN on {args.listen}: {exc}") from None
    for _index, (host, port) in sorted(server.addresses.items()):
        print(f"LISTENING {url_host(host)}:{port}", flush=True)
    await serve_until_signalled(f"serving STUN on {args.listen}", server.close)
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _lan_address() -> str:
    """The first non-loopback IPv4 address of this machine, for a link a phone can open."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith(("127.", "169.254.")):
                return ip.ip
    return "127.0.0.1"
