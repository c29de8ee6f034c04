"""The camera's key pair and the device ID derived from it.

The device ID is self-certifying: 130 bits of SHA-256 over the public key
(SubjectPublicKeyInfo DER), Crockford base32 with a check symbol. The key is
made on first start and kept in the state directory, mode 0600, written
atomically so a power cut never leaves half a key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from camera.errors import BadConfig
from services.signaling import device_id_from_digest

logger = logging.getLogger(__name__)

KEY_FILE = "device_key.pem"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def device_id_for(public_key: ec.EllipticCurvePublicKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return device_id_from_digest(hashlib.sha256(spki).digest())


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
    def load_or_create(cls, state_dir: Path) -> DeviceIdentity:
        """Load the key from ``state_dir``, making it on first start."""
        path = state_dir / KEY_FILE
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
            return cls(key, device_id_for(key.public_key()))
        identity = cls.generate()
        pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
        logger.info("made a new device key; device ID %s", identity.device_id)
        return identity
