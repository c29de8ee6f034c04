"""The camera's key pair and the device ID derived from it.

The device ID is self-certifying: 130 bits of SHA-256 over the public key
(SubjectPublicKeyInfo DER), Crockford base32 with a check symbol. The key is
made on first start and kept in the state directory, mode 0600, written
atomically so a power cut never leaves half a key.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from camera.errors import BadConfig, NoCamera
from services.files import write_private
from services.signaling import device_id_from_digest

logger = logging.getLogger(__name__)

KEY_FILE = "device_key.pem"


def device_id_for(public_key: ec.EllipticCurvePublicKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return device_id_from_digest(hashlib.sha256(spki).digest())


def load_or_create_key(path: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The P-256 key in ``path`` (PEM), made and written 0600 if missing; (key, created)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise BadConfig(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise BadConfig(f"{path}: not an ECDSA P-256 key")
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by others; fixing mode to 0600", path)
            path.chmod(0o600)
        return key, False
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)
    return key, True


@dataclass(frozen=True)
class DeviceIdentity:
    """The device key and its ID."""

    private_key: ec.EllipticCurvePrivateKey
    device_id: str

    @classmethod
    def generate(cls) -> DeviceIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, device_id_for(key.public_key()))

    @classmethod
    def load(cls, state_dir: Path) -> DeviceIdentity:
        """The existing key in ``state_dir``; :class:`NoCamera` if there is none."""
        path = state_dir / KEY_FILE
        if not path.exists():
            raise NoCamera(
                f"no camera in {state_dir}: no device key there (is this the camera's state "
                f"directory? peercam camera makes the key on its first start)"
            )
        key, _created = load_or_create_key(path)
        return cls(key, device_id_for(key.public_key()))

    @classmethod
    def load_or_create(cls, state_dir: Path) -> DeviceIdentity:
        """Load the key from ``state_dir``, making it on first start."""
        key, created = load_or_create_key(state_dir / KEY_FILE)
        identity = cls(key, device_id_for(key.public_key()))
        if created:
            logger.info("made a new device key; device ID %s", identity.device_id)
        return identity
