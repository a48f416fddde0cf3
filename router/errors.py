"""The one exception root of `router`, split by where a failure came from.

`MalformedInput` (exit 2): a transaction file or address the operator gave cannot be parsed.
`SignerError` (exit 1): the signer answered with a typed error frame (policy denial, bad request...).
`TransportError` (exit 1): the signer could not be reached or the connection broke.
"""

from __future__ import annotations

__all__ = ["MalformedInput", "RouterError", "SignerError", "TransportError"]


class RouterError(Exception):
    """Root of every error `router` raises on purpose."""

    #: Process exit status the CLI uses for this error.
    exit_code: int = 1

    def diagnostics(self) -> str:
        """A one-line, human-readable statement of the problem (never a traceback)."""
        return str(self)


class MalformedInput(RouterError):
    """Operator input (transaction JSON, address, option) that cannot be parsed (exit 2)."""

    exit_code = 2


class SignerError(RouterError):
    """The signer refused a request with an error frame; `code` is its wire error code."""

    def __init__(self, code: int, name: str, message: str) -> None:
        self.code = code
        self.name = name
        self.message = message
        super().__init__(f"signer refused ({name}): {message}")


class TransportError(RouterError):
    """The signer is unreachable, or the connection broke or desynchronised."""
