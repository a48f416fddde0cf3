"""Errors of attestation verification, below the one `verify.errors` root.

A document that cannot be read is `MalformedAttestation` (exit 2); one that reads but must not be
trusted is a `VerificationError` subclass named after the check that refused it (exit 1).
"""

from __future__ import annotations

from verify.errors import MalformedInput, PcrMismatch, SignatureInvalid, VerificationError

__all__ = [
    "ChainInvalid",
    "DebugMode",
    "DocumentStale",
    "MalformedAttestation",
    "NonceMismatch",
    "PcrMismatch",
    "PublicKeyMismatch",
    "SignatureInvalid",
    "TimestampInvalid",
    "UnsupportedAlgorithm",
    "UserDataMismatch",
]


class MalformedAttestation(MalformedInput):
    """The bytes are not an attestation document: CBOR, COSE_Sign1 or payload fields are wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(self.diagnostics())

    def diagnostics(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"malformed attestation document{where}: {self.message}"


class UnsupportedAlgorithm(VerificationError):
    """The protected header names an algorithm other than ES384."""


class ChainInvalid(VerificationError):
    """The certificate chain does not lead from the pinned root to the signing certificate."""


class TimestampInvalid(VerificationError):
    """The document's timestamp lies outside its signing certificate's validity."""


class NonceMismatch(VerificationError):
    """The document does not carry the nonce the relying party sent."""


class UserDataMismatch(VerificationError):
    """The document's user_data differs from what was expected."""


class PublicKeyMismatch(VerificationError):
    """The document's public_key differs from what was expected."""


class DebugMode(VerificationError):
    """The enclave runs in debug mode (PCR0, PCR1 or PCR2 all zero): its memory is readable by the
    parent, so its measurements and keys prove nothing."""


class DocumentStale(VerificationError):
    """The document is older than the freshness bound (or dated in the future)."""
