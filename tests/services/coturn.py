"""Run the shipped coturn configuration on loopback, and a tiny blocking TURN client.

``render_config`` keeps every policy line of systemd/coturn/turnserver.conf (auth,
quotas, the peer deny list) and replaces only the deployment lines (ports,
addresses, TLS, logging, secret, realm), so a test exercises the rules we ship.
The relay addresses are 127.0.0.1 and ::1: coturn does not apply the peer deny
list to its own relay addresses, only to XOR-PEER-ADDRESS, so allocations work
while permissions towards loopback peers must still be refused.

The client speaks just enough RFC 8656 over UDP for those checks: Allocate with
the long-term credential challenge (RFC 8489 §9.2) and CreatePermission.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aioice import stun

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "systemd" / "coturn" / "turnserver.conf"
TURNSERVER = "/usr/bin/turnserver"
REALM = "peercam.test"

# coturn 4.6's user database, as Debian's package ships it in /var/lib/turn/turndb.
# coturn reads it even with static-auth-secret, and a failed read fails the
# Allocate: with an empty file each auth thread creates these tables on first
# use, and the two threads racing get "database is locked" / "no such table",
# a 401 for the first relayed sessions, and no relay candidate. A private
# database therefore starts with the schema already in place.
USERDB_SCHEMA = (
    "CREATE TABLE turnusers_lt (realm varchar(127) default '', name varchar(512), "
    "hmackey char(128), PRIMARY KEY (realm,name))",
    "CREATE TABLE turn_secret (realm varchar(127) default '', value varchar(127), "
    "primary key (realm,value))",
    "CREATE TABLE allowed_peer_ip (realm varchar(127) default '', ip_range varchar(256), "
    "primary key (realm,ip_range))",
    "CREATE TABLE denied_peer_ip (realm varchar(127) default '', ip_range varchar(256), "
    "primary key (realm,ip_range))",
    "CREATE TABLE turn_origin_to_realm (origin varchar(127),realm varchar(127),"
    "primary key (origin))",
    "CREATE TABLE turn_realm_option (realm varchar(127) default '', opt varchar(32), "
    "value varchar(128), primary key (realm,opt))",
    "CREATE TABLE oauth_key (kid varchar(128),ikm_key varchar(256),timestamp bigint default 0,"
    "lifetime integer default 0,as_rs_alg varchar(64) default '',realm varchar(127) default '',"
    "primary key (kid))",
    "CREATE TABLE admin_user (name varchar(32), realm varchar(127), password varchar(127), "
    "primary key (name))",
)


def make_userdb(path: Path) -> Path:
    """An empty coturn user database with its tables, before turnserver opens it."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in USERDB_SCHEMA:
            db.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    return path


# Lines of the shipped file that describe one deployment rather than policy.
DEPLOYMENT_KEYS = frozenset({
    "listening-ip", "listening-port", "tls-listening-port", "relay-ip", "external-ip",
    "cert", "pkey", "static-auth-secret", "realm", "syslog", "log-file", "simple-log",
    "pidfile", "proc-user", "proc-group", "userdb",
})

# RFC 8656 §18: attribute types aioice's registry lacks.
REQUESTED_ADDRESS_FAMILY = 0x0017
UDP_TRANSPORT = 17 << 24  # REQUESTED-TRANSPORT: protocol number, then RFFU
FAMILY = {4: 0x01, 6: 0x02}


def config_key(line: str) -> str:
    return line.split("=", 1)[0].strip()


def policy_lines(keep: Callable[[str], bool] = lambda line: True) -> list[str]:
    """The shipped config without comments and deployment lines, filtered by ``keep``."""
    lines = []
    for raw in SHIPPED_CONFIG.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and config_key(line) not in DEPLOYMENT_KEYS:
            if keep(line):
                lines.append(line)
    return lines


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render_config(tmp: Path, port: int, secret: str, ipv6: bool,
                  keep: Callable[[str], bool] = lambda line: True) -> str:
    """The shipped policy plus a loopback deployment writing its log under ``tmp``."""
    test_lines = [
        "listening-ip=127.0.0.1",
        f"listening-port={port}",
        "relay-ip=127.0.0.1",
        *(["relay-ip=::1"] if ipv6 else []),
        f"static-auth-secret={secret}",
        f"realm={REALM}",
        # No certificates here, and only UDP: nothing else to collide with.
        "no-tls",
        "no-dtls",
        "no-tcp",
        "relay-threads=1",
        f"log-file={tmp / 'turnserver.log'}",
        "simple-log",
        "no-stdout-log",
        f"pidfile={tmp / 'turnserver.pid'}",
        # Not Debian's /var/lib/turn/turndb: the test must not touch the host.
        f"userdb={make_userdb(tmp / 'turndb')}",
    ]
    return "\n".join([*policy_lines(keep), *test_lines]) + "\n"


@dataclass
class Coturn:
    server: tuple[str, int]
    secret: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def run_coturn(tmp: Path, keep: Callable[[str], bool] = lambda line: True,
               ipv6: bool = True, timeout: float = 30.0) -> Iterator[Coturn]:
    """Start turnserver in the foreground; always kill it on exit. ``timeout`` bounds
    the wait for its first answer, which ends at that answer: a loaded machine (a CI
    run with the NAT lab beside it) once kept coturn initializing past 5 s."""
    tmp.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    port = free_udp_port()
    conf = tmp / "turnserver.conf"
    conf.write_text(render_config(tmp, port, secret, ipv6, keep))
    os.chmod(conf, 0o600)
    stderr = (tmp / "stderr").open("wb")
    proc = subprocess.Popen([TURNSERVER, "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        coturn = Coturn(("127.0.0.1", port), secret, tmp / "turnserver.log")
        wait_ready(coturn.server, proc, timeout)
        yield coturn
    finally:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


def wait_ready(server: tuple[str, int], proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll with STUN Binding (RFC 8489) until coturn answers."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {proc.returncode}")
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            sock.sendto(bytes(request), server)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            if stun.parse_message(data).transaction_id == request.transaction_id:
                return
    raise RuntimeError(f"turnserver did not answer on {server} within {timeout} s")


def attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def encode(method: stun.Method, transaction_id: bytes, attrs: list[bytes],
           key: bytes | None = None) -> bytes:
    """A STUN request; with ``key``, MESSAGE-INTEGRITY last (RFC 8489 §14.5)."""
    body = b"".join(attrs)
    header = struct.pack("!HHI12s", method | stun.Class.REQUEST, len(body) + (24 if key else 0),
                         stun.COOKIE, transaction_id)
    if key is None:
        return header + body
    mac = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + attribute(0x0008, mac)


class TurnClient:
    """One UDP 5-tuple, so at most one allocation (RFC 8656 §2.2)."""

    def __init__(self, server: tuple[str, int], username: str, password: str,
                 timeout: float = 2.0) -> None:
        self.server = server
        self.username = username
        self.key = hashlib.md5(f"{username}:{REALM}:{password}".encode()).digest()
        self.nonce: bytes | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TurnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: stun.Method,
                build: Callable[[bytes], list[bytes]]) -> stun.Message:
        """Send, authenticated once challenged (401 with a NONCE); return the reply.

        ``build`` gives the attributes for a transaction ID (XOR-PEER-ADDRESS of
        an IPv6 peer is XORed with it, RFC 8489 §14.2).
        """
        for _ in range(2):
            transaction_id = os.urandom(12)
            attrs = build(transaction_id)
            if self.nonce is None:
                data = encode(method, transaction_id, attrs)
            else:
                auth = [attribute(0x0006, self.username.encode()),
                        attribute(0x0014, REALM.encode()),
                        attribute(0x0015, self.nonce)]
                data = encode(method, transaction_id, attrs + auth, self.key)
            self.sock.sendto(data, self.server)
            reply = self.receive(transaction_id)
            if reply.error_code in (401, 438) and self.nonce is None:
                self.nonce = reply.attributes["NONCE"]
                continue
            return reply
        return reply

    def receive(self, transaction_id: bytes) -> stun.Message:
        while True:
            message = stun.parse_message(self.sock.recv(2048))
            if message.transaction_id == transaction_id:
                return message

    def allocate(self, family: int = 4) -> stun.Message:
        attrs = [attribute(0x0019, struct.pack("!I", UDP_TRANSPORT))]
        if family != 4:
            attrs.append(attribute(REQUESTED_ADDRESS_FAMILY,
                                   struct.pack("!B3x", FAMILY[family])))
        return self.request(stun.Method.ALLOCATE, lambda transaction_id: attrs)

    def create_permission(self, peer: str) -> stun.Message:
        # Permissions are per IP address; the port is ignored (RFC 8656 §9).
        return self.request(stun.Method.CREATE_PERMISSION, lambda transaction_id: [
            attribute(0x0012, stun.pack_xor_address((peer, 9), transaction_id))])
