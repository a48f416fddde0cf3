"""The one exception root of `verify`, split by where a failure came from.

Customers must tell an untrusted image (`VerificationError`, exit 1) from input that cannot even be
read (`MalformedInput`, exit 2) and from a transport hiccup (`TransportError`). The CLI maps
`VerifyError.exit_code` to the process exit status and prints `diagnostics()`: one line, no traceback.
"""

from __future__ import annotations

__all__ = [
    "MalformedEif",
    "MalformedInput",
    "MalformedMeasurements",
    "PcrMismatch",
    "SignatureInvalid",
    "TransportError",
    "VerificationError",
    "VerifyError",
]


class VerifyError(Exception):
    """Root of every error `verify` raises on purpose."""

    #: Process exit status the CLI uses for this error.
    exit_code: int = 2

    def diagnostics(self) -> str:
        """A one-line, human-readable statement of the problem (never a traceback)."""
        return str(self)


class MalformedInput(VerifyError):
    """The input cannot be parsed: missing file, wrong format, inconsistent sizes (exit 2)."""

    exit_code = 2


class MalformedEif(MalformedInput):
    """An EIF that is not sound; names the section and the byte offset where it applies."""

    def __init__(self, message: str, *, offset: int | None = None, section: str | None = None):
        self.message = message
        self.offset = offset
        self.section = section
        super().__init__(self.diagnostics())

    def diagnostics(self) -> str:
        where = []
        if self.section is not None:
            where.append(self.section)
        if self.offset is not None:
            where.append(f"at byte offset {self.offset}")
        prefix = "malformed EIF"
        if where:
            prefix += " (" + ", ".join(where) + ")"
        return f"{prefix}: {self.message}"


class MalformedMeasurements(MalformedInput):
    """A measurements file that does not parse or lacks the PCRs it should carry."""


class VerificationError(VerifyError):
    """The input parsed, but it is not what was expected or not trusted (exit 1)."""

    exit_code = 1


class PcrMismatch(VerificationError):
    """One or more PCRs differ from the expected values."""


class SignatureInvalid(VerificationError):
    """A signature that parsed does not verify."""


class TransportError(VerifyError):
    """Talking to something outside failed (vsock, RPC, AWS); says nothing about trust."""

    exit_code = 2
