"""The one exception root of `enclave`, split by where a failure came from.

Every error the signer raises on purpose is an `EnclaveError`. Errors that a client caused carry a wire
`code` (see `enclave/PROTOCOL.md`) so the server can answer them with a typed error frame and keep the
connection open. Messages are short, ASCII and never carry key material, attestation nonces or request
bytes: they name the rule or field and, for non-secret transaction fields, got vs expected.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AttestationUnavailable",
    "EnclaveError",
    "ErrorCode",
    "KeyLoadError",
    "PolicyDenied",
    "PolicyFileError",
    "ProtocolError",
    "RateLimited",
    "TransportError",
]


class ErrorCode(IntEnum):
    """Error codes carried by error frames (u16 on the wire); stable across protocol versions."""

    INTERNAL = 1
    BAD_MAGIC = 2
    BAD_VERSION = 3
    UNKNOWN_OPCODE = 4
    PAYLOAD_TOO_LARGE = 5
    BAD_LENGTH = 6
    MALFORMED = 7
    POLICY_DENIED = 8
    RATE_LIMITED = 9
    UNAVAILABLE = 10


class EnclaveError(Exception):
    """Root of every error `enclave` raises on purpose."""

    #: The code of the error frame that answers a request failing with this error.
    code: ErrorCode = ErrorCode.INTERNAL
    #: Process exit status the CLI uses for this error (2: bad input or configuration).
    exit_code: int = 2

    def diagnostics(self) -> str:
        """A one-line, human-readable statement of the problem (never a traceback, never a secret)."""
        return str(self)


class ProtocolError(EnclaveError):
    """A frame that does not follow `enclave/PROTOCOL.md`; `code` says which rule it broke."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class PolicyDenied(EnclaveError):
    """A well-formed request that the baked-in policy refuses; it is never signed."""

    code = ErrorCode.POLICY_DENIED
    exit_code = 1

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"policy {rule}: {message}")


class RateLimited(PolicyDenied):
    """The policy's signing rate limit is exhausted for now; retry later."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str) -> None:
        super().__init__("rate_limit", message)


class AttestationUnavailable(EnclaveError):
    """The server has no Nitro Secure Module (device or allowed emulator) to attest with."""

    code = ErrorCode.UNAVAILABLE
    exit_code = 1


class KeyLoadError(EnclaveError):
    """A signing key could not be loaded; the message never contains key material."""


class PolicyFileError(EnclaveError):
    """The policy file is unreadable or breaks the policy schema."""


class TransportError(EnclaveError):
    """A listen/connect address is malformed or a socket operation failed."""
