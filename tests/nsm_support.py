"""A test-side oracle for attestation documents, written from AWS's published format only.

It shares no code with `enclave.nsm` (or `verify`), so the emulator's documents are checked by an
independent reading of the format: COSE_Sign1 structure, the ES384 signature over the Sig_structure
with the leaf key, and the chain from the pinned root through the cabundle to the leaf.
"""

from __future__ import annotations

import datetime as dt

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PAYLOAD_KEYS = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]


class DocumentInvalid(Exception):
    pass


def verify_document(
    document: bytes, root: x509.Certificate, *, at: dt.datetime | None = None
) -> dict:
    """The payload map of a valid document; raises DocumentInvalid otherwise."""
    try:
        outer = cbor2.loads(document)
    except Exception as e:
        raise DocumentInvalid(f"not CBOR: {e}") from e
    if not isinstance(outer, list) or len(outer) != 4:
        raise DocumentInvalid("not an untagged 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise DocumentInvalid("protected header and payload must be byte strings")
    try:
        header = cbor2.loads(protected)
    except Exception as e:
        raise DocumentInvalid("protected header is not CBOR") from e
    if header != {1: -35} or unprotected != {}:
        raise DocumentInvalid(f"headers {header!r} {unprotected!r} are not ES384 / empty")
    if not isinstance(signature, bytes) or len(signature) != 96:
        raise DocumentInvalid("signature is not 96 bytes")
    try:
        body = cbor2.loads(payload)
    except Exception as e:
        raise DocumentInvalid("payload is not CBOR") from e
    if not isinstance(body, dict) or list(body) != PAYLOAD_KEYS:
        raise DocumentInvalid(f"payload keys {list(body) if isinstance(body, dict) else body!r}")
    try:
        leaf = x509.load_der_x509_certificate(body["certificate"])
        bundle = [x509.load_der_x509_certificate(c) for c in body["cabundle"]]
    except Exception as e:
        raise DocumentInvalid("certificate or cabundle entry is not DER") from e
    # (1) the COSE signature with the leaf key over ["Signature1", protected, b"", payload]
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    der_sig = encode_dss_signature(
        int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    )
    try:
        leaf_key = leaf.public_key()
    except Exception as e:
        raise DocumentInvalid("leaf key unreadable") from e
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp384r1":
        raise DocumentInvalid("leaf key is not P-384")
    try:
        leaf_key.verify(der_sig, to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as e:
        raise DocumentInvalid("COSE signature does not verify with the leaf key") from e
    # (2) the chain: pinned root == cabundle[0], each certificate issued by the previous one
    der = serialization.Encoding.DER
    if not bundle or bundle[0].public_bytes(der) != root.public_bytes(der):
        raise DocumentInvalid("cabundle[0] is not the pinned root")
    if not isinstance(body["timestamp"], int) or body["timestamp"] <= 0:
        raise DocumentInvalid("timestamp is not a positive integer")
    when = at or dt.datetime.fromtimestamp(body["timestamp"] / 1000, dt.UTC)
    chain = [*bundle, leaf]
    for parent, child in zip(chain, chain[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except Exception as e:
            raise DocumentInvalid(f"{child.subject.rfc4514_string()} not issued by parent") from e
    for cert in chain:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise DocumentInvalid(f"{cert.subject.rfc4514_string()} not valid at {when}")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca != (cert is not leaf):
            raise DocumentInvalid("basic constraints do not match the certificate's place")
    return body
