"""The release key: P-384, a local PEM file in development, an AWS KMS key in production.

Both sign `message` as ECDSA over SHA-384 and return DER, the form DSSE envelopes and EIF COSE
signatures (via `raw` r||s) need. The private part of a KMS key never leaves KMS; a local key lives in
memory only and no repr or error shows it. The same keys sign EIFs (PCR8) through `EifSigningKey`,
with a self-signed certificate made by the key itself (`self_signed_certificate`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reproducible.errors import BuildError
from verify.dsse import EnvelopeSigner, key_id

__all__ = [
    "KMS_MAX_MESSAGE",
    "EifSigningKey",
    "KmsReleaseKey",
    "LocalReleaseKey",
    "ReleaseKeyError",
    "self_signed_certificate",
]

#: AWS KMS `Sign` takes at most 4096 bytes with MessageType RAW.
KMS_MAX_MESSAGE = 4096
_KEY_SPEC = "ECC_NIST_P384"
_SIGNING_ALGORITHM = "ECDSA_SHA_384"


class ReleaseKeyError(BuildError):
    """The release key cannot be loaded or used (file, KMS key spec, KMS call)."""


class LocalReleaseKey:
    """A P-384 private key from a PEM file; deterministic (RFC 6979) signatures."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
            raise ReleaseKeyError("the release key must be an EC P-384 private key")
        self._key = key

    def __repr__(self) -> str:
        return f"LocalReleaseKey(key_id={key_id(self.public_key())})"

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str], password: bytes | None = None) -> LocalReleaseKey:
        """Load a PKCS#8 or SEC1 PEM private key.

        Raises:
            ReleaseKeyError: unreadable, not PEM, wrong password, or not P-384.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ReleaseKeyError(f"cannot read release key {path}: {e.strerror}") from e
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as e:
            # The message names the file only: key material never reaches an error.
            raise ReleaseKeyError(f"{path} is not a usable PEM private key") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ReleaseKeyError(f"{path}: the release key must be an EC P-384 private key")
        return cls(key)

    @classmethod
    def generate(cls, path: str | os.PathLike[str]) -> LocalReleaseKey:
        """A fresh development key written to `path` (mode 0600, refusing to overwrite)."""
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise ReleaseKeyError(f"cannot create release key {path}: {e.strerror}") from e
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))


class KmsReleaseKey:
    """An AWS KMS asymmetric key (KeySpec ECC_NIST_P384, KeyUsage SIGN_VERIFY) via boto3.

    Args:
        key_id: key id, ARN or alias.
        client: a boto3 KMS client (tests point one at moto's server); one is made when None.

    Raises:
        ReleaseKeyError: the key does not exist, is not a P-384 signing key, or KMS fails.
    """

    def __init__(self, key_id: str, *, client: Any = None) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)
        self._client = client if client is not None else boto3.client("kms")
        self._key_id = key_id
        try:
            answer = self._client.get_public_key(KeyId=key_id)
        except self._errors as e:
            raise ReleaseKeyError(f"KMS GetPublicKey for {key_id} failed: {e}") from e
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec")
        if spec != _KEY_SPEC or answer.get("KeyUsage") != "SIGN_VERIFY":
            raise ReleaseKeyError(
                f"KMS key {key_id} is {spec} for {answer.get('KeyUsage')}, expected {_KEY_SPEC} "
                "for SIGN_VERIFY"
            )
        if _SIGNING_ALGORITHM not in answer.get("SigningAlgorithms", []):
            raise ReleaseKeyError(f"KMS key {key_id} does not offer {_SIGNING_ALGORITHM}")
        public = serialization.load_der_public_key(answer["PublicKey"])
        assert isinstance(public, ec.EllipticCurvePublicKey)  # guaranteed by the key spec
        self._public = public

    def __repr__(self) -> str:
        return f"KmsReleaseKey({self._key_id!r})"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        # RAW, not DIGEST: KMS hashes the message itself, and what we sign is kept small.
        if len(message) > KMS_MAX_MESSAGE:
            raise ReleaseKeyError(
                f"message of {len(message)} bytes; KMS signs at most {KMS_MAX_MESSAGE} bytes raw"
            )
        try:
            answer = self._client.sign(
                KeyId=self._key_id,
                Message=message,
                MessageType="RAW",
                SigningAlgorithm=_SIGNING_ALGORITHM,
            )
        except self._errors as e:
            raise ReleaseKeyError(f"KMS Sign with {self._key_id} failed: {e}") from e
        signature = bytes(answer["Signature"])
        try:
            # A signature that does not verify would publish an unverifiable release: check now.
            self._public.verify(signature, message, ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError) as e:
            raise ReleaseKeyError(f"KMS key {self._key_id} returned a signature that does not verify") from e
        return signature


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def self_signed_certificate(
    signer: EnvelopeSigner,
    *,
    common_name: str = "Sentinel release EIF signer",
    not_before: dt.datetime = dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    days: int = 3650,
) -> bytes:
    """A PEM self-signed certificate for `signer`'s key, signed by `signer` (works for KMS keys).

    cryptography builds certificates only with a local private key, so the TBSCertificate is built
    with a throwaway key and the outer Certificate SEQUENCE (RFC 5280 §4.1) is re-assembled around
    `signer`'s signature over it.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    draft = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(int.from_bytes(bytes.fromhex(key_id(signer.public_key())[:30]), "big") | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )
    tbs = draft.tbs_certificate_bytes
    algorithm = bytes.fromhex("300a06082a8648ce3d040303")  # AlgorithmIdentifier ecdsa-with-SHA384
    signature = signer.sign(tbs)
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bit_string
    cert = x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)
    cert.verify_directly_issued_by(cert)  # the assembly is right and the key signed it
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, repr=False)
class EifSigningKey:
    """A release key seen as `verify.eif_sign.EifSigner` (nitro-cli's signing: PCR8)."""

    key: EnvelopeSigner
    certificate_pem: bytes

    def __repr__(self) -> str:
        return f"EifSigningKey({self.key!r})"

    @classmethod
    def self_signed(cls, key: EnvelopeSigner) -> EifSigningKey:
        return cls(key, self_signed_certificate(key))

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)
