"""The device key: made once, kept 0600, and the ID that names it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from camera.errors import BadConfig
from camera.identity import KEY_FILE, DeviceIdentity, device_id_for
from services.signaling import normalize_device_id


def test_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    first = DeviceIdentity.load_or_create(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = DeviceIdentity.load_or_create(tmp_path / "state")
    assert again.device_id == first.device_id
    assert normalize_device_id(first.device_id) == first.device_id
    # No temporary files left behind by the atomic write.
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]


def test_id_is_derived_from_the_public_key() -> None:
    a, b = DeviceIdentity.generate(), DeviceIdentity.generate()
    assert a.device_id != b.device_id
    assert device_id_for(a.private_key.public_key()) == a.device_id


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    DeviceIdentity.load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    DeviceIdentity.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_garbage_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(BadConfig, match="not a PEM private key"):
        DeviceIdentity.load_or_create(tmp_path)
