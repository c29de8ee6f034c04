"""TLS for the rendezvous: certificate files, or a generated self-signed one for a LAN demo.

Browsers expose WebCrypto (the viewer's key) only on https:// or localhost, so
a phone on the LAN needs HTTPS; in production use real certificate files or a
reverse proxy (docs/operations.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.files import write_private

logger = logging.getLogger(__name__)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files; ValueError naming the file if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS certificate {cert} / key {key}: cannot load ({exc})") from None
    return context


def self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Make (or reuse) a self-signed certificate for ``names`` (hosts and IPs) in ``directory``.

    Returns (cert, key). The key is written 0600; the certificate is what a
    client must trust (``--tls-ca``) and what a browser warns about once.
    """
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    wanted = sorted(set(names))
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted({str(v) for v in san.get_values_for_type(x509.DNSName)}
                          | {str(v) for v in san.get_values_for_type(x509.IPAddress)})
            week = datetime.timedelta(days=7)
            fresh = cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + week
            if set(wanted) <= set(have) and fresh:
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound):
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in wanted:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"peercam {wanted[0]}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    logger.info("made a self-signed TLS certificate for %s", ", ".join(wanted))
    return cert_path, key_path
