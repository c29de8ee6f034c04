"""TURN credentials (services/turn.py) and the shipped coturn configuration.

The unit tests check the TURN REST API credential format
(draft-uberti-behave-turn-rest-00 §2.2) against a vector computed with
``openssl dgst -sha1 -hmac``. The coturn tests run the real turnserver with the
policy lines of systemd/coturn/turnserver.conf on loopback and speak RFC 8656 to
it: our credentials must allocate, bad ones must get 401, and CreatePermission
towards every address class the deny list names must get 403.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import ipaddress
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun

from services.turn import BadSecret, TurnConfig, credential, load_secret, mint
from tests.conftest import scaled
from tests.services.coturn import (
    SHIPPED_CONFIG,
    TURNSERVER,
    Coturn,
    TurnClient,
    attribute,
    has_ipv6_loopback,
    policy_lines,
    run_coturn,
)

SECRET = "not-a-real-secret"
CONFIG = TurnConfig(secret=SECRET, urls=["turn:198.51.100.1:3478?transport=udp",
                                         "turns:turn.example:443?transport=tcp"])


# --- mint() ---------------------------------------------------------------------

def test_mint_has_the_rtc_ice_server_form() -> None:
    server = mint(CONFIG, "cam_1", now=1_700_000_000.9)
    assert set(server) == {"urls", "username", "credential"}
    assert server["urls"] == CONFIG.urls
    assert server["urls"] is not CONFIG.urls  # callers may not mutate our config
    # expiry = int(now) + ttl, then ":" and the tag.
    assert server["username"] == "1700000600:cam_1"


def test_mint_credential_matches_a_hand_computed_vector() -> None:
    # printf '1700000600:cam_1' | openssl dgst -sha1 -hmac 'not-a-real-secret' -binary | base64
    server = mint(CONFIG, "cam_1", now=1_700_000_000)
    assert server["credential"] == "dtz4hCC450XQFBI6G/S4mQ+F2Fk="
    assert credential(SECRET, "1700000600:cam_1") == server["credential"]
    assert len(base64.b64decode(server["credential"])) == 20  # SHA-1 output


def test_mint_expiry_follows_ttl_and_clock() -> None:
    short = TurnConfig(secret=SECRET, urls=CONFIG.urls, ttl=30)
    first = mint(short, "s", now=100.0)
    later = mint(short, "s", now=200.0)
    assert first["username"] == "130:s"
    assert later["username"] == "230:s"
    assert first["credential"] != later["credential"]
    other = mint(TurnConfig(secret="other", urls=CONFIG.urls, ttl=30), "s", now=100.0)
    assert other["username"] == first["username"]
    assert other["credential"] != first["credential"]


@pytest.mark.parametrize("tag", ["", "a:b", "a b", "x" * 65, "ü", "a/b", "a\n", "1700:cam"])
def test_mint_refuses_bad_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        mint(CONFIG, tag, now=0)


@pytest.mark.parametrize("tag", ["a", "Z-9_z", "x" * 64])
def test_mint_accepts_good_tags(tag: str) -> None:
    assert mint(CONFIG, tag, now=0)["username"] == f"600:{tag}"


def test_config_validates_and_hides_the_secret() -> None:
    assert SECRET not in repr(CONFIG)
    with pytest.raises(ValueError, match="empty"):
        TurnConfig(secret="", urls=CONFIG.urls)
    with pytest.raises(ValueError, match="stun:x"):
        TurnConfig(secret=SECRET, urls=["stun:x"])
    with pytest.raises(ValueError, match="ttl"):
        TurnConfig(secret=SECRET, urls=CONFIG.urls, ttl=0)


def test_mint_never_logs_secret_or_credential(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="services.turn")
    server = mint(CONFIG, "cam_1", now=0)
    assert caplog.records  # so the check below looks at something
    assert SECRET not in caplog.text
    assert server["credential"] not in caplog.text


# --- load_secret() --------------------------------------------------------------

def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_secret_strips_whitespace(tmp_path: Path) -> None:
    assert load_secret(write(tmp_path / "s", "  s3cret\n", 0o600)) == "s3cret"
    assert load_secret(write(tmp_path / "r", "s3cret", 0o400)) == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_load_secret_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "secret", "s3cret", mode)
    with pytest.raises(BadSecret, match=f"{path}.*{mode:04o}") as info:
        load_secret(path)
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_secret_refuses_empty_and_missing(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", " \n\t", 0o600)
    with pytest.raises(BadSecret, match=f"{empty} is empty"):
        load_secret(empty)
    with pytest.raises(BadSecret, match=f"cannot read .*{tmp_path / 'missing'}"):
        load_secret(tmp_path / "missing")


# --- the shipped file, statically -----------------------------------------------

def denied_ranges() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                                  ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    ranges = []
    for line in policy_lines(lambda line: line.startswith("denied-peer-ip=")):
        first, _, last = line.split("=", 1)[1].partition("-")
        ranges.append((ipaddress.ip_address(first), ipaddress.ip_address(last or first)))
    return ranges


# Every class the Trust issue names. "::" is not here: coturn refuses it itself,
# and a denied-peer-ip line for it denies every peer (see the config).
MUST_DENY = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
             "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
             "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::1/128", "fc00::/7",
             "fe80::/10", "ff00::/8", "64:ff9b::/96", "::ffff:0:0/96"]


@pytest.mark.parametrize("network", MUST_DENY)
def test_shipped_deny_list_covers(network: str) -> None:
    net = ipaddress.ip_network(network)
    assert any(first.version == net.version and int(first) <= int(net[0])
               and int(net[-1]) <= int(last)
               for first, last in denied_ranges()), f"no denied-peer-ip line covers {net}"


def test_shipped_config_has_no_overrides_or_traps() -> None:
    keys = {line.split("=", 1)[0] for line in policy_lines()}
    # allowed-peer-ip wins over denied-peer-ip; allow-loopback-peers undoes the default.
    assert not keys & {"allowed-peer-ip", "allow-loopback-peers", "server-relay",
                       "no-auth", "lt-cred-mech", "user", "cli-password"}
    assert {"use-auth-secret", "fingerprint", "no-multicast-peers", "no-cli", "no-tlsv1",
            "no-tlsv1_1", "user-quota", "total-quota", "max-bps", "stale-nonce"} <= keys
    # coturn reads an all-zero first address as "any": this line would deny everyone.
    for first, _ in denied_ranges():
        assert not (first.version == 6 and int(first) == 0), "denied-peer-ip=:: denies all"
    text = SHIPPED_CONFIG.read_text()
    assert "static-auth-secret=@TURN_SECRET@\n" in text
    assert "realm=@TURN_REALM@\n" in text


# --- the real coturn ------------------------------------------------------------

needs_coturn = pytest.mark.skipif(not os.access(TURNSERVER, os.X_OK),
                                  reason="needs coturn (scripts/setup --test installs it)")
IPV6 = has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="needs ::1 for an IPv6 relay address")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if not os.access(TURNSERVER, os.X_OK):
        pytest.skip("needs coturn (scripts/setup --test installs it)")
    with run_coturn(tmp_path_factory.mktemp("coturn"), ipv6=IPV6) as server:
        yield server


def client(server: Coturn, tag: str = "test", now: float | None = None,
           secret: str | None = None) -> TurnClient:
    config = TurnConfig(secret=secret or server.secret, urls=["turn:127.0.0.1"], ttl=600)
    cred = mint(config, tag, time.time() if now is None else now)
    return TurnClient(server.server, cred["username"], cred["credential"])


@needs_coturn
def test_coturn_loads_every_shipped_line(coturn: Coturn) -> None:
    # coturn logs a bad line and carries on: a typo would silently drop a rule.
    log = coturn.log_text()
    assert "Bad configuration format" not in log
    assert "Wrong address" not in log
    for line in policy_lines(lambda line: line.startswith("denied-peer-ip=")):
        assert f"Black listing: {line.split('=', 1)[1]}\n" in log


@needs_coturn
def test_minted_credentials_allocate_a_relay(coturn: Coturn) -> None:
    with client(coturn) as c:
        reply = c.allocate()
        assert reply.error_code is None, reply.attributes.get("ERROR-CODE")
        assert reply.attributes["XOR-RELAYED-ADDRESS"][0] == "127.0.0.1"
        assert "FINGERPRINT" in reply.attributes  # `fingerprint`
        assert "SOFTWARE" not in reply.attributes  # `no-software-attribute`


@needs_coturn
def test_expired_credentials_are_refused(coturn: Coturn) -> None:
    # Right HMAC, expiry 60 s ago.
    with client(coturn, now=time.time() - 660) as c:
        reply = c.allocate()
        assert c.nonce is not None  # it did answer the challenge
        assert reply.error_code == 401


@needs_coturn
def test_allocation_outlives_its_credential(coturn: Coturn) -> None:
    """The TTL limits new allocations, not calls: coturn 4.6.1 keeps the session key.

    services.turn.TurnConfig.ttl documents this; a relayed call longer than the
    TTL must not drop at its next Refresh (RFC 8656 §8).
    """
    config = TurnConfig(secret=coturn.secret, urls=["turn:127.0.0.1"], ttl=1)
    cred = mint(config, "short", time.time())
    expiry = int(cred["username"].split(":")[0])
    with TurnClient(coturn.server, cred["username"], cred["credential"]) as c, \
            TurnClient(coturn.server, cred["username"], cred["credential"]) as late:
        assert c.allocate().error_code is None
        time.sleep(max(0.0, expiry + 1.1 - time.time()))
        assert late.allocate().error_code == 401  # it did expire
        refresh = c.request(stun.Method.REFRESH, lambda transaction_id: [
            attribute(0x000D, struct.pack("!I", 600))])  # LIFETIME
        assert refresh.error_code is None
        assert refresh.attributes["LIFETIME"] == 600
        assert c.create_permission("203.0.113.9").error_code is None


@needs_coturn
def test_wrong_hmac_is_refused(coturn: Coturn) -> None:
    with client(coturn, secret="not-the-server-secret") as c:
        reply = c.allocate()
        assert c.nonce is not None
        assert reply.error_code == 401


DENIED_V4 = ["127.0.0.1", "127.1.2.3", "10.1.2.3", "192.168.1.1", "172.16.0.1", "100.64.0.1",
             "169.254.169.254", "0.0.0.0", "0.1.2.3", "192.0.0.8", "198.18.0.1", "224.0.0.1",
             "240.0.0.1", "255.255.255.255"]
DENIED_V6 = ["::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "64:ff9b::a9fe:a9fe"]
V4_MAPPED = ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
             "::ffff:192.168.1.1"]


@needs_coturn
def test_ipv4_relay_refuses_denied_peers(coturn: Coturn) -> None:
    with client(coturn) as c:
        assert c.allocate().error_code is None
        # The allowed control first: a refusal below must be the deny list's doing.
        assert c.create_permission("203.0.113.5").error_code is None
        refused = {peer: c.create_permission(peer).error_code for peer in DENIED_V4}
        assert refused == dict.fromkeys(DENIED_V4, 403)
        # An IPv6 peer on an IPv4 relay: 443 Peer Address Family Mismatch
        # (RFC 8656 §19); refused either way, the IPv6 relay test checks the rules.
        for peer in ["::1", *V4_MAPPED]:
            assert c.create_permission(peer).error_code in (403, 443), peer


@needs_coturn
@needs_ipv6
def test_ipv6_relay_refuses_denied_peers(coturn: Coturn) -> None:
    with client(coturn) as c:
        reply = c.allocate(family=6)
        assert reply.error_code is None, reply.attributes.get("ERROR-CODE")
        assert reply.attributes["XOR-RELAYED-ADDRESS"][0] == "::1"
        assert c.create_permission("2001:db8::1").error_code is None
        refused = {peer: c.create_permission(peer).error_code
                   for peer in DENIED_V6 + V4_MAPPED}
        assert refused == dict.fromkeys(DENIED_V6 + V4_MAPPED, 403)


@needs_coturn
@needs_ipv6
def test_v4_mapped_bypass_is_closed_by_our_lines(tmp_path: Path) -> None:
    """Without our ::ffff: line coturn 4.6.1 grants ::ffff:127.0.0.1 and friends.

    This shows the refusal above comes from the shipped config, not from coturn,
    and that the test above would fail if that line went missing.
    """
    def keep(line: str) -> bool:
        return not line.startswith("denied-peer-ip=::ffff:")

    with run_coturn(tmp_path, keep=keep) as bare, client(bare) as c:
        assert c.allocate(family=6).error_code is None
        granted = [peer for peer in V4_MAPPED if c.create_permission(peer).error_code is None]
    if not granted:
        pytest.skip("this coturn refuses v4-mapped peers by itself")
    assert granted == V4_MAPPED


@needs_coturn
def test_first_allocations_after_start_all_succeed(tmp_path: Path) -> None:
    """Eight viewers allocating at once against a coturn that has just started.

    coturn checks its user database even with a static secret; on an empty file its
    two auth threads race to create the tables and half these Allocates got 401,
    so a relayed session started then had no relay candidate. The database
    make_userdb prepares (as Debian's package ships one) leaves nothing to race.
    """
    with run_coturn(tmp_path, ipv6=False) as fresh:
        def allocate(n: int) -> int | None:
            with client(fresh, tag=f"viewer{n}") as c:
                return c.allocate().error_code
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(allocate, range(8)))
        assert codes == [None] * 8
        assert "Cannot find credentials" not in fresh.log_text()


@needs_coturn
async def test_a_refused_allocation_is_asked_for_again(
    coturn: Coturn, caplog: pytest.LogCaptureFixture
) -> None:
    """aioice asks for its relay once; a refusal then leaves a session between two NATs
    that need the relay with nothing to connect over. The camera's hook asks again:
    here the viewer's quota (the shipped user-quota=12) is used up by twelve
    allocations, the thirteenth is refused, one of the twelve ends, and the retry
    gets the relay."""
    from aioice import Connection

    from camera import compat

    compat.ensure_installed()
    config = TurnConfig(secret=coturn.secret, urls=["turn:127.0.0.1"], ttl=600)
    cred = mint(config, "quota", time.time())
    holders = [TurnClient(coturn.server, cred["username"], cred["credential"])
               for _ in range(12)]
    connection = Connection(ice_controlling=True, use_ipv6=False, turn_server=coturn.server,
                            turn_username=cred["username"], turn_password=cred["credential"])
    try:
        for holder in holders:
            holder.__enter__()
            assert holder.allocate().error_code is None
        with caplog.at_level(logging.INFO, logger="camera.ice"):
            gathering = asyncio.create_task(connection.gather_candidates())
            async with asyncio.timeout(scaled(4)):
                while "asking again" not in caplog.text:
                    await asyncio.sleep(0.02)
            assert "486" in caplog.text  # Allocation Quota Reached
            released = await asyncio.to_thread(holders[0].request, stun.Method.REFRESH,
                                               lambda transaction_id: [
                                                   attribute(0x000D, struct.pack("!I", 0))])
            assert released.error_code is None
            await gathering
        assert [c.type for c in connection.local_candidates if c.type == "relay"] == ["relay"]
    finally:
        for holder in holders:
            holder.__exit__(None, None, None)
        await connection.close()
