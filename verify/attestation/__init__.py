"""Verify AWS Nitro Enclaves attestation documents: authenticity, then the caller's policy.

    from verify.attestation import AllOf, NonceEquals, PcrEquals, verify
    verified = verify(document, AllOf([PcrEquals(0, pcr0), NonceEquals(nonce)]))

See `verifier.py` for the numbered steps; `policy.py` for the checks.
"""

from __future__ import annotations

from verify.attestation.document import (
    AttestationDocument,
    CoseSign1,
    Limits,
    SignedAttestation,
    decode_document_text,
    parse_cose_sign1,
    parse_document,
    parse_payload,
)
from verify.attestation.errors import (
    ChainInvalid,
    DebugMode,
    DocumentStale,
    MalformedAttestation,
    NonceMismatch,
    PcrMismatch,
    PublicKeyMismatch,
    SignatureInvalid,
    TimestampInvalid,
    UnsupportedAlgorithm,
    UserDataMismatch,
)
from verify.attestation.policy import (
    AllOf,
    Check,
    MaxAge,
    NonceEquals,
    NotDebugMode,
    PcrEquals,
    PublicKeyEquals,
    SignerAddressEquals,
    UnsafeNoOp,
    UserDataEquals,
    pcrs_equal,
)
from verify.attestation.roots import AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root, load_root_pem
from verify.attestation.verifier import (
    DOCUMENT_TIME,
    AttestationVerifier,
    CheckResult,
    VerificationReport,
    VerifiedAttestation,
    verify,
)

__all__ = [
    "AWS_NITRO_ROOT_G1_SHA256",
    "DOCUMENT_TIME",
    "AllOf",
    "AttestationDocument",
    "AttestationVerifier",
    "ChainInvalid",
    "DebugMode",
    "Check",
    "CheckResult",
    "CoseSign1",
    "DocumentStale",
    "Limits",
    "MalformedAttestation",
    "MaxAge",
    "NonceEquals",
    "NonceMismatch",
    "NotDebugMode",
    "PcrEquals",
    "PcrMismatch",
    "PublicKeyEquals",
    "PublicKeyMismatch",
    "SignatureInvalid",
    "SignedAttestation",
    "SignerAddressEquals",
    "TimestampInvalid",
    "UnsafeNoOp",
    "UnsupportedAlgorithm",
    "UserDataEquals",
    "UserDataMismatch",
    "VerificationReport",
    "VerifiedAttestation",
    "aws_nitro_root",
    "decode_document_text",
    "load_root_pem",
    "parse_cose_sign1",
    "parse_document",
    "parse_payload",
    "pcrs_equal",
    "verify",
]
