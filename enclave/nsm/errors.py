"""Errors of the Nitro Secure Module clients (device and emulator), below `EnclaveError`.

Split by where the failure came from: no module at all, the kernel call failed, the bytes exchanged do
not follow the NSM CBOR protocol, or the module understood the request and refused it.
"""

from __future__ import annotations

from enclave.errors import AttestationUnavailable, EnclaveError, ErrorCode

__all__ = [
    "NsmConfigError",
    "NsmError",
    "NsmProtocolError",
    "NsmRequestRejected",
    "NsmTransportError",
    "NsmUnavailable",
]


class NsmError(EnclaveError):
    """Root of the NSM errors; a request that needed the module cannot be answered."""

    code = ErrorCode.UNAVAILABLE
    exit_code = 1


class NsmUnavailable(NsmError, AttestationUnavailable):
    """No module to talk to: /dev/nsm cannot be opened and the emulator is not allowed."""


class NsmTransportError(NsmError):
    """The ioctl on /dev/nsm failed (errno given); the module never answered."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class NsmProtocolError(NsmError):
    """Bytes that do not follow the NSM CBOR request/response protocol."""


class NsmRequestRejected(NsmError):
    """The module answered `Error(<code>)`: it understood the request and refused it.

    `nsm_code` is the module's own ErrorCode name, e.g. "InvalidIndex" or "ReadOnlyIndex".
    """

    #: NSM error codes that mean the caller asked for something invalid, not that the module broke.
    CALLER_ERRORS = frozenset({"InvalidArgument", "InvalidIndex", "ReadOnlyIndex", "InputTooLarge"})

    def __init__(self, nsm_code: str, operation: str) -> None:
        self.nsm_code = nsm_code
        self.operation = operation
        if nsm_code in self.CALLER_ERRORS:
            self.code = ErrorCode.MALFORMED
        super().__init__(f"NSM refused {operation}: {nsm_code}")


class NsmConfigError(NsmError):
    """The emulator's inputs are unusable: a PCR source or CA directory is missing or malformed."""

    code = ErrorCode.INTERNAL
    exit_code = 2
