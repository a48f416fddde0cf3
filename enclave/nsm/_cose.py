"""COSE_Sign1 with ES384 (RFC 8152), exactly as the Nitro hypervisor signs attestation documents.

Hazardous layer: `[protected, unprotected, payload, signature]`, untagged; protected is the CBOR byte
string of `{1: -35}` (alg ES384), unprotected is `{}`, and the signature is the 96-byte r||s of an
ECDSA P-384/SHA-384 signature over the Sig_structure `["Signature1", protected, b"", payload]`.
"""

from __future__ import annotations

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["ES384_PROTECTED", "sig_structure", "sign1_es384"]

ES384_PROTECTED = cbor2.dumps({1: -35})
_P384_BYTES = 48


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes an ES384 COSE_Sign1 signature covers."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


def sign1_es384(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """An untagged COSE_Sign1 of `payload` signed with the P-384 `key`."""
    if not isinstance(key.curve, ec.SECP384R1):
        raise ValueError(f"ES384 needs a P-384 key, got {key.curve.name}")
    der = key.sign(sig_structure(ES384_PROTECTED, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_P384_BYTES, "big") + s.to_bytes(_P384_BYTES, "big")
    return cbor2.dumps([ES384_PROTECTED, {}, payload, signature])
