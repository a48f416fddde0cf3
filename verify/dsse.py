"""DSSE envelopes (in-toto's Dead Simple Signing Envelope) with ECDSA P-384 / SHA-384.

An envelope is JSON ``{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}``;
each signature covers PAE(payloadType, payload) =
``"DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload`` (LEN in ASCII decimal), so the type is
signed too and nothing is canonicalised. `sig` is a DER ECDSA signature, which is what both
cryptography and AWS KMS `Sign` (ECDSA_SHA_384) return. `keyid` is the lower-case hex SHA-256 of
the public key's DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verify._json import loads_json
from verify.errors import MalformedInput, SignatureInvalid, VerificationError

__all__ = [
    "INTOTO_PAYLOAD_TYPE",
    "Envelope",
    "EnvelopeSigner",
    "UnknownSigner",
    "key_id",
    "pae",
    "parse_envelope",
    "sign_envelope",
]

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE = 1 << 20  # bytes; release envelopes are ~2 KiB


class UnknownSigner(VerificationError):
    """No signature in the envelope is by the key the caller trusts."""


@runtime_checkable
class EnvelopeSigner(Protocol):
    """A P-384 key that signs: a local key file in development, an AWS KMS key in production."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA signature over SHA-384(message)."""
        ...


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, DER signature)

    def to_json(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": keyid, "sig": base64.b64encode(sig).decode()}
                for keyid, sig in self.signatures
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> bytes:
        """The payload, once a signature by `public_key` verifies over PAE(type, payload).

        Raises:
            UnknownSigner: no signature carries this key's id.
            SignatureInvalid: the signature with this key's id does not verify.
        """
        wanted = key_id(public_key)
        sigs = [sig for keyid, sig in self.signatures if keyid == wanted]
        if not sigs:
            got = ", ".join(keyid for keyid, _ in self.signatures) or "none"
            raise UnknownSigner(f"no signature by key {wanted} (envelope is signed by: {got})")
        if not isinstance(public_key.curve, ec.SECP384R1):
            raise SignatureInvalid(f"key is {public_key.curve.name}, expected P-384")
        message = pae(self.payload_type, self.payload)
        for sig in sigs:
            try:
                public_key.verify(sig, message, ec.ECDSA(hashes.SHA384()))
            except (InvalidSignature, ValueError):
                continue
            return self.payload
        raise SignatureInvalid(f"signature by key {wanted} does not verify over the envelope")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo (what `keyid` holds)."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what each signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    payload: bytes, signers: Sequence[EnvelopeSigner], payload_type: str = INTOTO_PAYLOAD_TYPE
) -> Envelope:
    """An envelope over `payload` with one signature per signer (at least one)."""
    if not signers:
        raise ValueError("an envelope needs at least one signer")
    message = pae(payload_type, payload)
    return Envelope(
        payload_type=payload_type,
        payload=payload,
        signatures=tuple((key_id(s.public_key()), s.sign(message)) for s in signers),
    )


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedInput(f"signature envelope: {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedInput(f"signature envelope: {what} is not valid base64") from e


def parse_envelope(data: bytes, source: str = "<bytes>") -> Envelope:
    """Parse a DSSE envelope's JSON.

    Raises:
        MalformedInput: not JSON, or a member is missing or of the wrong type.
    """
    if len(data) > MAX_ENVELOPE:
        raise MalformedInput(f"{source}: larger than {MAX_ENVELOPE} bytes; not a signature envelope")
    doc = loads_json(data, source)
    if not isinstance(doc, dict):
        raise MalformedInput(f"{source}: expected a JSON object (a DSSE envelope)")
    payload_type = doc.get("payloadType")
    if not isinstance(payload_type, str):
        raise MalformedInput(f"{source}: payloadType missing or not a string")
    raw_sigs = doc.get("signatures")
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise MalformedInput(f"{source}: signatures must be a non-empty array")
    signatures = []
    for i, entry in enumerate(raw_sigs):
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
            raise MalformedInput(f"{source}: signatures[{i}] needs a string keyid")
        signatures.append((entry["keyid"], _b64(entry.get("sig"), f"signatures[{i}].sig")))
    return Envelope(
        payload_type=payload_type,
        payload=_b64(doc.get("payload"), "payload"),
        signatures=tuple(signatures),
    )
