"""The emulator's certificate authority: a P-384 chain shaped like the AWS Nitro attestation PKI.

AWS signs each document with a short-lived leaf (about 3 hours) issued under a 4-level CA bundle:
the root (30 years), a regional CA (path length 2), a zonal CA (path length 1) and an instance CA
(path length 0). `EmulatorCa` keeps only the root, which relying parties pin (`.root_pem`); each
emulator instance issues its own intermediates and leaf from it, so a saved root never goes stale.
Every certificate says in its organization that it comes from an emulator.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.nsm.errors import NsmConfigError

__all__ = ["EmulatorCa", "IssuedChain"]

logger = logging.getLogger(__name__)

ROOT_CERT_FILE = "root.pem"
ROOT_KEY_FILE = "root.key.pem"
ORGANIZATION = "Sentinel NSM emulator (development only)"
ROOT_COMMON_NAME = "emulated.nitro-enclaves"

ROOT_LIFETIME = dt.timedelta(days=30 * 365)
REGIONAL_LIFETIME = dt.timedelta(days=20)
ZONAL_LIFETIME = dt.timedelta(days=5)
INSTANCE_LIFETIME = dt.timedelta(days=1)
LEAF_LIFETIME = dt.timedelta(hours=3)
# CA certificates start a little before "now" so that a clock skew does not make them "not yet valid".
_CA_BACKDATE = dt.timedelta(hours=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Sentinel"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    # X.509 times have a one-second resolution; round down so "now" is inside the validity.
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _issue(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None,
    is_ca: bool,
) -> x509.Certificate:
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
        .add_extension(_ca_usage() if is_ca else _leaf_usage(), critical=is_ca)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if issuer is not None:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass(frozen=True)
class IssuedChain:
    """What an emulator instance signs with: the CA bundle (DER, root first) and its leaf."""

    cabundle: tuple[bytes, ...]
    certificate: bytes
    leaf_key: ec.EllipticCurvePrivateKey = field(repr=False)
    not_before: dt.datetime
    not_after: dt.datetime


class EmulatorCa:
    """The root of the emulator's attestation PKI (P-384, self-signed)."""

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
        if not isinstance(root_key.curve, ec.SECP384R1):
            raise NsmConfigError(f"the emulator root key must be P-384, got {root_key.curve.name}")
        if root.public_key() != root_key.public_key():
            raise NsmConfigError("the emulator root certificate does not match its key")
        self._key = root_key
        self._root = root

    def __repr__(self) -> str:
        return f"EmulatorCa(root={self._root.subject.rfc4514_string()!r})"

    @classmethod
    def generate(cls, *, now: dt.datetime | None = None) -> EmulatorCa:
        """A new root, valid for 30 years from `now` (default: the current time)."""
        start = _utc(now or dt.datetime.now(dt.UTC)) - _CA_BACKDATE
        key = ec.generate_private_key(ec.SECP384R1())
        root = _issue(
            subject=ROOT_COMMON_NAME,
            key=key,
            issuer=None,
            issuer_key=key,
            not_before=start,
            not_after=start + ROOT_LIFETIME,
            path_length=None,
            is_ca=True,
        )
        return cls(key, root)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EmulatorCa:
        """The root saved by `save()` in `directory`.

        Raises:
            NsmConfigError: a file is missing or not a PEM certificate / P-384 key.
        """
        base = Path(directory)
        try:
            root = x509.load_pem_x509_certificate((base / ROOT_CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key((base / ROOT_KEY_FILE).read_bytes(), None)
        except OSError as e:
            raise NsmConfigError(f"cannot read the emulator CA in {base}: {e.strerror}") from e
        except ValueError as e:
            raise NsmConfigError(f"the emulator CA in {base} is not PEM: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise NsmConfigError(f"{base / ROOT_KEY_FILE} is not an EC private key")
        return cls(key, root)

    @classmethod
    def from_pem_bundle(cls, data: bytes) -> EmulatorCa:
        """The root from one PEM text holding its certificate and its private key (`pem_bundle()`).

        This single-file form is what the QEMU boot passes to the guest through fw_cfg.

        Raises:
            NsmConfigError: no certificate or no EC private key in `data`.
        """
        try:
            root = x509.load_pem_x509_certificate(data)
            start = data.find(b"-----BEGIN PRIVATE KEY-----")
            if start < 0:
                raise ValueError("no PKCS#8 private key block")
            key = serialization.load_pem_private_key(data[start:], None)
        except ValueError as e:
            raise NsmConfigError(
                f"the emulator CA bundle is not a PEM certificate and key: {e}"
            ) from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise NsmConfigError("the emulator CA bundle's key is not an EC private key")
        return cls(key, root)

    def pem_bundle(self) -> bytes:
        """The root certificate then its private key, PEM (development secret: the emulator's CA)."""
        return self.root_pem + self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write root.pem (public) and root.key.pem (mode 0600) into `directory`."""
        base = Path(directory)
        base.mkdir(parents=True, exist_ok=True)
        (base / ROOT_CERT_FILE).write_bytes(self.root_pem)
        key_path = base / ROOT_KEY_FILE
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                self._key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return base

    @property
    def root(self) -> x509.Certificate:
        return self._root

    @property
    def root_pem(self) -> bytes:
        return self._root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_der(self) -> bytes:
        return self._root.public_bytes(serialization.Encoding.DER)

    def issue_chain(self, *, module_id: str, now: dt.datetime) -> IssuedChain:
        """Regional, zonal and instance CAs and a 3-hour leaf for the enclave `module_id`."""
        start = _utc(now)
        instance = module_id.split("-enc", 1)[0]
        levels = (
            ("regional.emulated.nitro-enclaves", REGIONAL_LIFETIME, 2),
            ("zonal.regional.emulated.nitro-enclaves", ZONAL_LIFETIME, 1),
            (f"{instance}.emulated.nitro-enclaves", INSTANCE_LIFETIME, 0),
        )
        bundle = [self._root]
        issuer, issuer_key = self._root, self._key
        for subject, lifetime, path_length in levels:
            key = ec.generate_private_key(ec.SECP384R1())
            cert = _issue(
                subject=subject,
                key=key,
                issuer=issuer,
                issuer_key=issuer_key,
                not_before=start - _CA_BACKDATE,
                not_after=start + lifetime,
                path_length=path_length,
                is_ca=True,
            )
            bundle.append(cert)
            issuer, issuer_key = cert, key
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        leaf = _issue(
            subject=f"{module_id}.emulated",
            key=leaf_key,
            issuer=issuer,
            issuer_key=issuer_key,
            not_before=start,
            not_after=start + LEAF_LIFETIME,
            path_length=None,
            is_ca=False,
        )
        logger.debug(
            "issued an emulator chain for %s valid until %s", module_id, leaf.not_valid_after_utc
        )
        der = serialization.Encoding.DER
        return IssuedChain(
            cabundle=tuple(c.public_bytes(der) for c in bundle),
            certificate=leaf.public_bytes(der),
            leaf_key=leaf_key,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )
