"""The ACL, the pairing windows and the gatekeeper's checks, without a network."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camera.acl import ACL_FILE, AmbiguousHandle, PairingWindows, ViewerACL, fingerprint
from camera.client.viewer import ViewerIdentity
from camera.gatekeeper import CLOCK_SKEW_MS, Gatekeeper, Refused, server_name
from camera.identity import DeviceIdentity
from services.signaling import Role, encode, parse
from services.signatures import (
    offer_statement,
    pair_statement,
    paired_statement,
    pairing_proof,
    sign,
    verify,
)

SDP = "v=0\r\n"


@pytest.fixture
def viewer(tmp_path: Path) -> ViewerIdentity:
    return ViewerIdentity.load_or_create(tmp_path / "viewer", name="phone")


def keeper(tmp_path: Path, clock: float | None = None) -> Gatekeeper:
    identity = DeviceIdentity.load_or_create(tmp_path / "cam")
    return Gatekeeper(identity, ViewerACL(tmp_path / "cam"), PairingWindows(tmp_path / "cam"),
                      clock=(lambda: clock) if clock is not None else time.time)


def offer(gk: Gatekeeper, viewer: ViewerIdentity, session: str = "s" * 20,
          timestamp: int | None = None, device_id: str | None = None) -> object:
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    device = device_id or gk.device_id
    signature = sign(viewer.private_key, offer_statement(device, session, ts, viewer.key, SDP))
    return parse(encode(Role.SERVER, "offer", session_id=session, sdp=SDP, viewer_key=viewer.key,
                        timestamp=ts, signature=signature, ice_servers=[]), Role.SERVER)


def pair_request(gk: Gatekeeper, viewer: ViewerIdentity, secret: str,
                 session: str = "p" * 20) -> object:
    ts = int(time.time() * 1000)
    signed = pair_statement(gk.device_id, session, ts, viewer.key, viewer.name)
    return parse(encode(Role.SERVER, "pair", session_id=session, viewer_key=viewer.key,
                        name=viewer.name, timestamp=ts, signature=sign(viewer.private_key, signed),
                        proof=pairing_proof(secret, signed)), Role.SERVER)


def test_acl_file_is_0600_and_revocation_by_fingerprint_or_name(
    tmp_path: Path, viewer: ViewerIdentity
) -> None:
    acl = ViewerACL(tmp_path)
    acl.add(viewer.key, "phone")
    acl.add(ViewerIdentity.load_or_create(tmp_path / "other").key, "laptop")
    assert stat.S_IMODE((tmp_path / ACL_FILE).stat().st_mode) == 0o600
    assert [v.name for v in acl.viewers()] == ["phone", "laptop"]
    assert [v.name for v in acl.revoke(fingerprint(viewer.key).lower())] == ["phone"]
    assert viewer.key not in acl
    assert [v.name for v in acl.revoke("laptop")] == ["laptop"]
    assert acl.revoke("nobody") == []


def test_another_process_editing_the_acl_is_noticed(tmp_path: Path, viewer: ViewerIdentity) -> None:
    agent_view = ViewerACL(tmp_path)
    ViewerACL(tmp_path).add(viewer.key, "phone")  # e.g. `peercam pair` in another process
    assert agent_view.reload() and viewer.key in agent_view
    ViewerACL(tmp_path).revoke("phone")  # `peercam viewers revoke` over SSH
    assert agent_view.reload() and viewer.key not in agent_view
    assert not agent_view.reload()  # nothing changed since


def test_corrupt_acl_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ACL_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable viewer list"):
        ViewerACL(tmp_path)


def test_offer_from_a_paired_viewer_passes_once(tmp_path: Path, viewer: ViewerIdentity) -> None:
    gk = keeper(tmp_path)
    message = offer(gk, viewer)
    with pytest.raises(Refused, match="not paired"):
        gk.check_offer(message)  # type: ignore[arg-type]
    gk.acl.add(viewer.key, "phone")
    assert gk.check_offer(message) == viewer.key  # type: ignore[arg-type]
    with pytest.raises(Refused, match="replayed"):
        gk.check_offer(message)  # type: ignore[arg-type]


def test_stale_or_future_offers_are_refused(tmp_path: Path, viewer: ViewerIdentity) -> None:
    now = time.time()
    gk = keeper(tmp_path, clock=now)
    gk.acl.add(viewer.key, "phone")
    for skew in (-CLOCK_SKEW_MS - 1000, CLOCK_SKEW_MS + 1000):
        with pytest.raises(Refused, match="stale"):
            gk.check_offer(offer(gk, viewer, timestamp=int(now * 1000) + skew))  # type: ignore[arg-type]


def test_offer_signed_for_another_device_is_refused(
    tmp_path: Path, viewer: ViewerIdentity
) -> None:
    gk = keeper(tmp_path)
    gk.acl.add(viewer.key, "phone")
    other = DeviceIdentity.generate().device_id
    with pytest.raises(Refused, match="signature"):
        gk.check_offer(offer(gk, viewer, device_id=other))  # type: ignore[arg-type]


def test_pairing_with_a_one_time_secret(tmp_path: Path, viewer: ViewerIdentity) -> None:
    gk = keeper(tmp_path)
    window = gk.pairing.open(ttl=60)  # as `peercam pair` writes it
    files = list((tmp_path / "cam" / "pairing").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    with pytest.raises(Refused, match="no open pairing window"):
        gk.check_pair(pair_request(gk, viewer, "WRONG" + window.secret[5:]))  # type: ignore[arg-type]
    fields = gk.check_pair(pair_request(gk, viewer, window.secret))  # type: ignore[arg-type]
    assert viewer.key in gk.acl
    assert verify(fields["device_key"],
                  paired_statement(gk.device_id, "p" * 20, viewer.key, viewer.name),
                  fields["signature"])
    assert not any((tmp_path / "cam" / "pairing").iterdir())  # used up
    other = ViewerIdentity.load_or_create(tmp_path / "other", name="thief")
    with pytest.raises(Refused, match="no open pairing window"):
        gk.check_pair(pair_request(gk, other, window.secret, "q" * 20))  # type: ignore[arg-type]


def test_expired_window_is_refused_and_tidied(tmp_path: Path, viewer: ViewerIdentity) -> None:
    gk = keeper(tmp_path)
    window = gk.pairing.open(ttl=60)
    path = next((tmp_path / "cam" / "pairing").iterdir())
    data = json.loads(path.read_text())
    data["expires"] = time.time() - 1
    path.write_text(json.dumps(data))
    with pytest.raises(Refused, match="no open pairing window"):
        gk.check_pair(pair_request(gk, viewer, window.secret))  # type: ignore[arg-type]
    assert not path.exists()


def test_reusable_demo_window_pairs_several_viewers(tmp_path: Path) -> None:
    gk = keeper(tmp_path)
    secret = gk.pairing.open(ttl=60, reusable=True, persist=False).secret
    for n in range(3):
        viewer = ViewerIdentity.load_or_create(tmp_path / f"v{n}", name=f"v{n}")
        gk.check_pair(pair_request(gk, viewer, secret, f"{n}" * 20))  # type: ignore[arg-type]
    assert len(gk.acl.viewers()) == 3


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("ws://Example.NET/ws/camera", "example.net"),
        ("wss://example.net:443/ws/camera", "example.net"),
        ("ws://127.0.0.1:8080", "127.0.0.1:8080"),
        ("wss://[::1]:8443/", "[::1]:8443"),
    ],
)
def test_server_name_is_what_the_host_header_says(url: str, name: str) -> None:
    assert server_name(url) == name


def test_revoking_a_name_three_viewers_share_is_refused_and_lists_them(tmp_path: Path) -> None:
    acl = ViewerACL(tmp_path)
    keys = [ViewerIdentity.load_or_create(tmp_path / f"v{i}").key for i in range(3)]
    for key in keys:
        acl.add(key, "Chrome on Linux")
    acl.add(ViewerIdentity.load_or_create(tmp_path / "phone").key, "phone")
    with pytest.raises(AmbiguousHandle) as caught:
        acl.revoke("Chrome on Linux")
    message = str(caught.value)
    assert message.startswith("3 viewers are named 'Chrome on Linux'")
    assert all(fingerprint(key) in message for key in keys)
    assert len(ViewerACL(tmp_path).viewers()) == 4  # nothing revoked
    # A fingerprint names one of them; a unique name still works.
    assert [v.key for v in acl.revoke(fingerprint(keys[1]))] == [keys[1]]
    assert [v.name for v in acl.revoke("phone")] == ["phone"]
    assert acl.revoke("nobody") == []
    # Two left with that name: still ambiguous; the last one alone is not.
    with pytest.raises(AmbiguousHandle):
        acl.revoke("Chrome on Linux")
    acl.revoke(fingerprint(keys[0]))
    assert [v.key for v in acl.revoke("Chrome on Linux")] == [keys[2]]


def test_secret_directories_are_made_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    DeviceIdentity.load_or_create(state)
    PairingWindows(state).open(60)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "pairing").stat().st_mode) == 0o700


def test_load_never_makes_a_device_key(tmp_path: Path) -> None:
    from camera.errors import NoCamera

    with pytest.raises(NoCamera, match="no device key"):
        DeviceIdentity.load(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    made = DeviceIdentity.load_or_create(tmp_path / "cam")
    assert DeviceIdentity.load(tmp_path / "cam").device_id == made.device_id


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs: a camera's storage that can fill up or go read-only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte; returns the filler (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    return filler


def test_pairing_on_a_full_disk_fails_clearly_and_keeps_the_secret_open(
    small_disk: Path, viewer: ViewerIdentity
) -> None:
    gk = keeper(small_disk)
    paired_before = ViewerIdentity.load_or_create(small_disk / "first", name="first")
    gk.acl.add(paired_before.key, "first")
    acl_file = small_disk / "cam" / ACL_FILE
    on_disk = acl_file.read_bytes()
    window = gk.pairing.open(ttl=60)  # as `peercam pair` writes it
    filler = fill(small_disk)
    with pytest.raises(OSError) as failed:  # the kernel's own ENOSPC
        gk.check_pair(pair_request(gk, viewer, window.secret))  # type: ignore[arg-type]
    assert failed.value.errno == errno.ENOSPC
    # Nothing half-done: the file and the camera's list as they were, no temporary
    # file left behind, and the one-time secret still open.
    assert acl_file.read_bytes() == on_disk
    assert viewer.key not in gk.acl and paired_before.key in gk.acl
    assert sorted(p.name for p in (small_disk / "cam").iterdir() if p.name.startswith("."))\
        == []
    assert gk.pairing.is_open(include_reusable=False)
    filler.unlink()
    gk.check_pair(pair_request(gk, viewer, window.secret, "r" * 20))  # type: ignore[arg-type]
    assert viewer.key in gk.acl and viewer.key in ViewerACL(small_disk / "cam")
    assert not gk.pairing.is_open(include_reusable=False)  # used up now


def test_a_read_only_disk_refuses_changes_and_a_used_secret_stays_spent(
    small_disk: Path, viewer: ViewerIdentity
) -> None:
    gk = keeper(small_disk)
    gk.acl.add(viewer.key, "phone")
    window = gk.pairing.open(ttl=60)
    gk.pairing.open(ttl=0.01)  # expired by the time it is read: its file cannot go
    other = ViewerIdentity.load_or_create(small_disk / "other", name="other")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    time.sleep(0.05)
    with pytest.raises(OSError) as failed:
        gk.acl.revoke(fingerprint(viewer.key))
    assert failed.value.errno == errno.EROFS
    assert viewer.key in gk.acl  # memory agrees with the file the camera restarts from
    with pytest.raises(OSError):
        gk.check_pair(pair_request(gk, other, window.secret))  # type: ignore[arg-type]
    assert other.key not in gk.acl
    # A window matched while its file cannot be removed is spent all the same.
    match = gk.pairing.match(*_proof(gk, other, window.secret))
    assert match is not None
    gk.pairing.consume(match)
    assert (small_disk / "cam" / "pairing").is_dir() and any(
        (small_disk / "cam" / "pairing").iterdir())  # the file could not go...
    assert gk.pairing.match(*_proof(gk, other, window.secret)) is None  # ...the secret did
    # Nothing open is shown (the LED, `peercam status`): the spent window and the
    # expired one whose file the read-only card keeps are both closed.
    assert not gk.pairing.is_open()


def _proof(gk: Gatekeeper, viewer: ViewerIdentity, secret: str) -> tuple[bytes, str]:
    signed = pair_statement(gk.device_id, "z" * 20, int(time.time() * 1000), viewer.key,
                            viewer.name)
    return signed, pairing_proof(secret, signed)
