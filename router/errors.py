"""The one exception root of `router`, split by where a failure came from.

`MalformedInput` (exit 2): a transaction file or address the operator gave cannot be parsed.
`SignerError` (exit 1): the signer answered with a typed error frame (policy denial, bad request...).
`TransportError` (exit 1): the signer could not be reached or the connection broke.
"""

from __future__ import annotations

__all__ = [
    "InvalidRecord",
    "JournalClosed",
    "JournalCorrupt",
    "JournalError",
    "JournalUnavailable",
    "LeaseHeld",
    "LeaseLost",
    "MalformedInput",
    "RouterError",
    "SignerError",
    "SignerTimeout",
    "TransportError",
]


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


class SignerTimeout(TransportError):
    """The signer did not answer one request within the client's per-call deadline.

    The client has dropped that connection, so a late answer can never be taken for the answer to
    a later request; the next call reconnects. `op` names the request, `timeout` the deadline (s).
    """

    def __init__(self, op: str, timeout: float, address: str) -> None:
        self.op = op
        self.timeout = timeout
        super().__init__(
            f"signer at {address} did not answer {op} within {timeout:g} s "
            "(connection dropped; the next call reconnects)"
        )


# --- chain side (router helper): node answers, nonces, reorgs, configuration ---------------------


class ConfigError(RouterError):
    """The router's configuration file or options are unusable (exit 2)."""

    exit_code = 2


class MalformedResponse(RouterError):
    """A node answered, but not with well-formed JSON-RPC of the expected shape (a broken or lying
    node, told apart from `TransportError`, a network hiccup, and `RpcError`, a rejection)."""


class MalformedHeader(MalformedResponse):
    """A block header whose fields are missing, mistyped or impossible (e.g. parentHash == hash)."""


class RpcError(RouterError):
    """A well-formed JSON-RPC error answer; `kind` is its classification (see `router.rpc.classify`)."""

    kind = "rpc-error"

    def __init__(self, message: str, *, code: int | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint

    def diagnostics(self) -> str:
        where = f" from {self.endpoint}" if self.endpoint else ""
        return f"{self.kind} (JSON-RPC code {self.code}){where}: {self}"


class NonceTooLow(RpcError):
    kind = "nonce-too-low"


class AlreadyKnown(RpcError):
    kind = "already-known"


class ReplacementUnderpriced(RpcError):
    kind = "replacement-underpriced"


class InsufficientFunds(RpcError):
    kind = "insufficient-funds"


class FeeTooLow(RpcError):
    kind = "fee-too-low"


class InvalidTransaction(RpcError):
    kind = "invalid-transaction"


class NonceSourceError(RouterError):
    """The account nonce reported by the endpoints is inconsistent or impossible."""


class ReorgTooDeep(RouterError):
    """No common ancestor within the header ring; the chain view has to be rebuilt."""


class IntentFailed(RouterError):
    """An intent can no longer be landed (e.g. the signer's policy refused it); cause is chained."""


class IntentCancelled(IntentFailed):
    """The intent was cancelled (`Router.cancel`): a self-transfer took its nonce."""


class GasEstimationFailed(RouterError):
    """The node's eth_estimateGas refused an intent submitted without a gas limit (it would
    revert, or cannot execute); `reason` is the node's message (with its revert reason)."""

    def __init__(self, message: str, *, reason: str, code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


class SignerUnavailable(TransportError):
    """The signer failed moments ago; calls fail at once until its cooldown ends (no queueing
    behind a reconnect), so the router's other work goes on."""



# --- durable intent journal (router/journal) -----------------------------------------------------


class JournalError(RouterError):
    """The intent journal cannot be used as asked."""


class JournalCorrupt(JournalError):
    """The journal's file or tables are unreadable, of another schema version or not ours, or a
    stored row does not decode (the message names the file and the row)."""


class JournalUnavailable(JournalError):
    """The journal's database cannot be reached or written (server down, timeout, disk I/O)."""


class LeaseHeld(JournalError):
    """Another holder owns this sender's journal; `holder` names it, `expires_in` is the seconds
    until its lease lapses (None: held until that process exits, as with SQLite's flock)."""

    def __init__(self, message: str, *, holder: str, expires_in: float | None) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_in = expires_in


class LeaseLost(JournalError):
    """Fencing: this holder's lease token is no longer current; nothing was written."""


class JournalClosed(LeaseLost):
    """The journal was closed: it holds no lease and answers nothing."""


class InvalidRecord(JournalError):
    """A row, signature, meta entry or open_journal argument that the journal refuses (bad type,
    range or reference); nothing was written."""
