"""EIF signatures: the signature section, pluggable signers, and checking a signed image.

The section body is what nitro-cli writes (serde_cbor of `Vec<PcrSignature>`): a CBOR array with
one map `{"signing_certificate": <PEM>, "signature": <COSE_Sign1>}` whose two values are byte
vectors encoded as CBOR arrays of small integers (serde's default for `Vec<u8>`). The COSE payload
is `PcrInfo` = `{"register_index": 0, "register_value": <PCR0 as array of ints>}`. PCR8 is the
TPM-style extend of SHA-384 over the certificate's DER.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from verify._cose import ALG_ES384, CoseSign1, der_to_raw, protected_for, sig_structure
from verify.errors import SignatureInvalid

__all__ = [
    "EifSigner",
    "LocalEifSigner",
    "PcrSignature",
    "SignatureSection",
    "build_signature_section",
    "decode_signature_entries",
    "encode_pcr_info",
    "encode_signature_entries",
    "parse_signature_section",
    "sign_pcr",
    "verify_pcr_signature",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class EifSigner(Protocol):
    """Anything that can sign an EIF: a local key, or (later) a KMS-held key.

    `sign(message)` returns a DER-encoded ECDSA P-384 signature over SHA-384(message), which is
    what both cryptography and KMS `Sign` (ECDSA_SHA_384) produce.
    """

    @property
    def certificate_pem(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, repr=False)
class LocalEifSigner:
    """A P-384 private key held in memory plus its PEM certificate. The repr never shows the key."""

    _key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes
    _deterministic: bool = field(default=True)

    def __post_init__(self) -> None:
        if not isinstance(self._key, ec.EllipticCurvePrivateKey) or not isinstance(
            self._key.curve, ec.SECP384R1
        ):
            raise ValueError("EIF signing key must be an EC P-384 private key")
        cert = x509.load_pem_x509_certificate(self.certificate_pem)
        if cert.public_key() != self._key.public_key():
            raise ValueError("the certificate's public key does not match the signing key")

    def __repr__(self) -> str:
        return "LocalEifSigner(key=<P-384, hidden>)"

    @classmethod
    def from_files(
        cls, key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str]
    ) -> LocalEifSigner:
        """Load a PEM private key (unencrypted) and PEM certificate, like `nitro-cli --private-key`.

        Raises:
            ValueError: the files are not a matching P-384 key and certificate.
        """
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("EIF signing key must be an EC P-384 private key")
        return cls(key, cert_pem)

    @classmethod
    def generate(
        cls,
        *,
        common_name: str = "Sentinel development EIF signer",
        not_before: _dt.datetime | None = None,
        days: int = 365,
    ) -> LocalEifSigner:
        """A fresh key and self-signed certificate (development and tests)."""
        key = ec.generate_private_key(ec.SECP384R1())
        start = not_before or _dt.datetime(2025, 1, 1, tzinfo=_dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + _dt.timedelta(days=days))
            .sign(key, hashes.SHA384())
        )
        return cls(key, cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, message: bytes) -> bytes:
        # RFC 6979 nonces make the signature, hence the whole EIF, reproducible.
        algorithm = ec.ECDSA(hashes.SHA384(), deterministic_signing=self._deterministic)
        return self._key.sign(message, algorithm)

    def private_key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM, for writing a development key file."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def encode_pcr_info(index: int, value: bytes) -> bytes:
    """CBOR of nitro-cli's `PcrInfo`: the payload every EIF signature signs."""
    return cbor2.dumps({"register_index": index, "register_value": list(value)})


def sign_pcr(signer: EifSigner, index: int, value: bytes) -> bytes:
    """An untagged COSE_Sign1 (ES384) over `PcrInfo(index, value)`."""
    payload = encode_pcr_info(index, value)
    protected = protected_for(ALG_ES384)
    der = signer.sign(sig_structure(protected, payload))
    return CoseSign1(protected, {}, payload, der_to_raw(der, 48)).to_bytes()


def build_signature_section(signer: EifSigner, pcr0: bytes) -> bytes:
    """The signature section body for an image whose PCR0 is `pcr0`."""
    cose = sign_pcr(signer, 0, pcr0)
    return encode_signature_entries([PcrSignature(signer.certificate_pem, cose)])


@dataclass(frozen=True)
class PcrSignature:
    certificate_pem: bytes
    cose_sign1: bytes


@dataclass(frozen=True)
class SignatureSection:
    """A parsed signature section. Only the first entry counts, as in nitro-cli."""

    entries: tuple[PcrSignature, ...]
    certificate: x509.Certificate
    certificate_der: bytes
    cose: CoseSign1

    @property
    def first(self) -> PcrSignature:
        return self.entries[0]


def _byte_vector(value: object, what: str) -> bytes:
    # serde_cbor writes Vec<u8> as an array of ints; accept a byte string too.
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise ValueError(f"{what} is not a byte vector")


def encode_signature_entries(entries: Sequence[PcrSignature]) -> bytes:
    """serde_cbor's encoding of `Vec<PcrSignature>`: byte vectors as arrays of small ints."""
    return cbor2.dumps(
        [
            {"signing_certificate": list(e.certificate_pem), "signature": list(e.cose_sign1)}
            for e in entries
        ]
    )


def decode_signature_entries(data: bytes) -> tuple[PcrSignature, ...]:
    """The raw entries of a signature section; nothing inside them is parsed yet.

    Raises:
        ValueError: not one CBOR array of `{signing_certificate, signature}` maps.
    """
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as e:  # cbor2 raises several types for bad input
        raise ValueError(f"not valid CBOR ({e})") from e
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} trailing byte(s) after the CBOR value")
    if not isinstance(obj, list) or not obj:
        raise ValueError("expected a non-empty CBOR array of PCR signatures")
    entries = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i} is not a map")
        try:
            cert = _byte_vector(item["signing_certificate"], f"entry {i} signing_certificate")
            sig = _byte_vector(item["signature"], f"entry {i} signature")
        except KeyError as e:
            raise ValueError(f"entry {i} lacks {e.args[0]!r}") from None
        entries.append(PcrSignature(cert, sig))
    return tuple(entries)


def parse_signature_section(data: bytes) -> SignatureSection:
    """Parse a signature section body, its first certificate and COSE_Sign1 (not yet verified).

    Raises:
        ValueError: the body does not parse; the message says which part.
    """
    entries = decode_signature_entries(data)
    try:
        certificate = x509.load_pem_x509_certificate(entries[0].certificate_pem)
    except ValueError as e:
        raise ValueError(f"signing certificate is not a PEM X.509 certificate ({e})") from e
    try:
        # cryptography parses lazily: touch now what describe() and verification read later.
        certificate.public_key()
        certificate.subject.rfc4514_string()
        certificate.issuer.rfc4514_string()
        _ = (certificate.not_valid_before_utc, certificate.not_valid_after_utc)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"signing certificate does not parse ({e})") from e
    cose = CoseSign1.from_bytes(entries[0].cose_sign1)
    return SignatureSection(
        entries=entries,
        certificate=certificate,
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        cose=cose,
    )


def verify_pcr_signature(section: SignatureSection, pcrs: dict[int, bytes]) -> None:
    """Check the first signature with its certificate's key and that it signs our PCR0.

    The certificate's validity period is not checked here: nitro-cli's describe-eif does not
    either, and a verdict must not depend on an implicit clock.

    Raises:
        SignatureInvalid: bad signature, wrong key type, or a payload that is not this PCR0.
    """
    public_key = section.certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("signing certificate does not hold an EC public key")
    try:
        section.cose.verify(public_key)
    except InvalidSignature:
        raise SignatureInvalid(
            "the COSE_Sign1 signature does not verify with the certificate's key"
        ) from None
    except ValueError as e:
        raise SignatureInvalid(str(e)) from e
    expected = encode_pcr_info(0, pcrs[0])
    if section.cose.payload != expected:
        raise SignatureInvalid(
            "the signature is valid but signs a different PCR0 than this image's "
            f"(signed {_describe_payload(section.cose.payload)}, image PCR0 {pcrs[0].hex()})"
        )


def _describe_payload(payload: bytes) -> str:
    try:
        info = cbor2.loads(payload)
        return f"PCR{info['register_index']} = {bytes(info['register_value']).hex()}"
    except Exception:  # any undecodable payload is simply shown raw
        return f"payload {payload[:64].hex()}"
