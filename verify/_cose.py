"""Hazardous layer: COSE_Sign1 (RFC 8152) with ECDSA, just what EIF signatures use.

Matches the encoding of aws-nitro-enclaves-cose: protected header `{1: alg}` as a CBOR map inside
a byte string, empty unprotected map, untagged 4-array, signature = r || s, each left-padded to
the curve's byte length. Callers go through `verify.eif_sign`; nothing here decides trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "ALG_ES256",
    "ALG_ES384",
    "ALG_ES512",
    "CoseSign1",
    "InvalidSignature",
    "der_to_raw",
    "protected_for",
    "raw_to_der",
    "sig_structure",
]

ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36
COSE_SIGN1_TAG = 18

# curve name -> (COSE alg, hash, coordinate length in bytes), as RFC 8152 section 8.1 pairs them.
_CURVES: dict[str, tuple[int, type[hashes.HashAlgorithm], int]] = {
    "secp256r1": (ALG_ES256, hashes.SHA256, 32),
    "secp384r1": (ALG_ES384, hashes.SHA384, 48),
    "secp521r1": (ALG_ES512, hashes.SHA512, 66),
}


def curve_parameters(curve: ec.EllipticCurve) -> tuple[int, type[hashes.HashAlgorithm], int]:
    """(alg, hash, coordinate length) for a curve COSE ECDSA supports.

    Raises:
        ValueError: any other curve.
    """
    try:
        return _CURVES[curve.name]
    except KeyError:
        raise ValueError(f"unsupported curve {curve.name} for COSE ECDSA") from None


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes actually signed: ["Signature1", protected, external_aad = b"", payload]."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def der_to_raw(der: bytes, length: int) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(length, "big") + s.to_bytes(length, "big")


def raw_to_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


@dataclass(frozen=True)
class CoseSign1:
    protected: bytes
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """Untagged encoding, as the EIF signature section stores it."""
        return cbor2.dumps([self.protected, self.unprotected, self.payload, self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> CoseSign1:
        """Decode an untagged or tag-18 COSE_Sign1; checks shape, not the signature.

        Raises:
            ValueError: not a COSE_Sign1 structure.
        """
        try:
            obj = cbor2.loads(data)
        except Exception as e:  # cbor2 raises several types for bad input
            raise ValueError(f"COSE_Sign1 is not valid CBOR: {e}") from e
        if isinstance(obj, cbor2.CBORTag):
            if obj.tag != COSE_SIGN1_TAG:
                raise ValueError(f"COSE tag {obj.tag}, expected {COSE_SIGN1_TAG} or none")
            obj = obj.value  # cbor2 hands back tuples and frozendicts inside tags
        if not (isinstance(obj, list | tuple) and len(obj) == 4):
            raise ValueError("COSE_Sign1 must be a 4-element array")
        protected, unprotected, payload, signature = obj
        if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
            raise ValueError("COSE_Sign1 headers must be (bstr, map)")
        unprotected = dict(unprotected)
        if not isinstance(payload, bytes) or not isinstance(signature, bytes):
            raise ValueError("COSE_Sign1 payload and signature must be byte strings")
        return cls(protected, unprotected, payload, signature)

    def protected_header(self) -> dict[Any, Any]:
        if not self.protected:
            return {}
        try:
            value = cbor2.loads(self.protected)
        except Exception as e:
            raise ValueError(f"COSE protected header is not valid CBOR: {e}") from e
        if not isinstance(value, dict):
            raise ValueError("COSE protected header is not a map")
        return value

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Check the signature with `public_key`; the protected alg must match its curve.

        Raises:
            ValueError: malformed headers or signature length.
            InvalidSignature: the signature does not verify.
        """
        alg, hash_cls, length = curve_parameters(public_key.curve)
        got = self.protected_header().get(1)
        if got != alg:
            raise ValueError(f"COSE alg {got!r} does not match the key's curve (expected {alg})")
        if len(self.signature) != 2 * length:
            raise ValueError(
                f"COSE signature is {len(self.signature)} bytes, expected {2 * length}"
            )
        public_key.verify(
            raw_to_der(self.signature),
            sig_structure(self.protected, self.payload),
            ec.ECDSA(hash_cls()),
        )


def protected_for(alg: int) -> bytes:
    return cbor2.dumps({1: alg})
