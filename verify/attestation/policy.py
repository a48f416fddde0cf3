"""What a relying party requires of an authentic document: small, named checks.

Each check has a `name` (what a person reads in a report) and `verify(document) -> None`, which
raises a specific `VerificationError` subclass saying what was got and what was expected. They run
only after the verifier has established that the document is authentic (chain and signature).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from verify.attestation.document import AttestationDocument
from verify.attestation.errors import (
    DebugMode,
    DocumentStale,
    NonceMismatch,
    PcrMismatch,
    PublicKeyMismatch,
    UserDataMismatch,
)
from verify.errors import VerificationError
from verify.terminal import visible

__all__ = [
    "AllOf",
    "Check",
    "MaxAge",
    "NotDebugMode",
    "NonceEquals",
    "PcrEquals",
    "PublicKeyEquals",
    "SignerAddressEquals",
    "UnsafeNoOp",
    "UserDataEquals",
    "leaf_checks",
    "pcrs_equal",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class Check(Protocol):
    """One named requirement; `verify` returns None or raises a `VerificationError`."""

    name: str

    def verify(self, document: AttestationDocument) -> None: ...


def _show(value: bytes | None, limit: int = 64) -> str:
    if value is None:
        return "none"
    text = value.hex()
    return text if len(value) <= limit else f"{text[: 2 * limit]}... ({len(value)} bytes)"


class PcrEquals:
    """PCR `index` holds exactly `expected` (48 bytes, SHA-384)."""

    def __init__(self, index: int, expected: bytes) -> None:
        if not 0 <= index <= 31:
            raise ValueError(f"PCR index {index} not in 0..31")
        self._index = index
        self._expected = bytes(expected)
        self.name = f"PCR{index}"

    def verify(self, document: AttestationDocument) -> None:
        got = document.pcrs.get(self._index)
        if got is None:
            raise PcrMismatch(f"PCR{self._index}: absent, expected {self._expected.hex()}")
        if not hmac.compare_digest(got, self._expected):
            raise PcrMismatch(f"PCR{self._index}: got {got.hex()}, expected {self._expected.hex()}")


def pcrs_equal(expected: Mapping[int, bytes], indices: Iterable[int] | None = None) -> list[PcrEquals]:
    """One `PcrEquals` per compared index: `indices` if given (each must be in `expected`), else all.

    Raises:
        ValueError: an index to compare has no expected value.
    """
    chosen = sorted(expected) if indices is None else list(indices)
    missing = [i for i in chosen if i not in expected]
    if missing:
        raise ValueError(f"no expected value for PCR {', '.join(map(str, missing))}")
    return [PcrEquals(i, expected[i]) for i in chosen]


class _BytesEquals:
    name: str
    _field: str
    _error: type[VerificationError]

    def __init__(self, expected: bytes) -> None:
        self._expected = bytes(expected)

    def verify(self, document: AttestationDocument) -> None:
        got = getattr(document, self._field)
        if got is None or not hmac.compare_digest(got, self._expected):
            raise self._error(
                f"{self._field}: got {_show(got)}, expected {_show(self._expected)}"
            )


class NonceEquals(_BytesEquals):
    """The document carries the nonce the relying party sent (proves it is not a replay)."""

    name = "nonce"
    _field = "nonce"
    _error = NonceMismatch


class UserDataEquals(_BytesEquals):
    """The document's user_data is exactly `expected`."""

    name = "user_data"
    _field = "user_data"
    _error = UserDataMismatch


class PublicKeyEquals(_BytesEquals):
    """The document's public_key is exactly `expected`."""

    name = "public_key"
    _field = "public_key"
    _error = PublicKeyMismatch


class SignerAddressEquals:
    """The document binds the secp256k1 key of EVM address `expected` (20 bytes): its public_key
    is a 65-byte uncompressed SEC1 point whose keccak-256 ends in the address. Sentinel's signer
    puts its own key there (enclave/PROTOCOL.md, "Key binding"), so this ties the PCRs to the
    sender of the transactions it signs."""

    name = "signer_address"

    def __init__(self, expected: bytes) -> None:
        if len(expected) != 20:
            raise ValueError(f"an EVM address is 20 bytes (got {len(expected)})")
        self._expected = bytes(expected)

    def verify(self, document: AttestationDocument) -> None:
        from Crypto.Hash import keccak

        key = document.public_key
        want = "0x" + self._expected.hex()
        if key is None or len(key) != 65 or key[0] != 4:
            raise PublicKeyMismatch(
                f"public_key: got {_show(key)}, expected the uncompressed secp256k1 key "
                f"(65 bytes, 04...) of signer {want}"
            )
        got = keccak.new(digest_bits=256, data=key[1:]).digest()[12:]
        if not hmac.compare_digest(got, self._expected):
            raise PublicKeyMismatch(
                f"public_key: binds the key of address 0x{got.hex()}, expected signer {want}"
            )


class MaxAge:
    """The document was made at most `seconds` before `now` and not after it (beyond clock skew).

    Args:
        seconds: the largest acceptable age.
        now: the reference time (UTC-aware); the wall clock at each check when None.
        clock_skew: how far in the future a document's timestamp may be, for unsynchronised clocks.
    """

    name = "freshness"

    def __init__(
        self,
        seconds: float,
        *,
        now: datetime | None = None,
        clock_skew: timedelta = timedelta(seconds=30),
    ) -> None:
        if seconds < 0:
            raise ValueError("max age must not be negative")
        if now is not None and now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self._max = timedelta(seconds=seconds)
        self._now = now
        self._skew = clock_skew

    def verify(self, document: AttestationDocument) -> None:
        now = self._now or datetime.now(UTC)
        made = document.timestamp
        if made > now + self._skew:
            raise DocumentStale(f"timestamp {made.isoformat()} is in the future of {now.isoformat()}")
        age = now - made
        if age > self._max:
            raise DocumentStale(
                f"document is {age.total_seconds():.3f} s old, more than {self._max.total_seconds():g} s"
            )


#: PCRs that Nitro sets to zero for an enclave started with --debug-mode.
DEBUG_ZERO_PCRS = (0, 1, 2)


def debug_mode_pcrs(document: AttestationDocument) -> list[int]:
    """The image PCRs (0, 1, 2) that are present and all zero: non-empty means debug mode."""
    return [i for i in DEBUG_ZERO_PCRS if i in document.pcrs and not any(document.pcrs[i])]


class NotDebugMode:
    """The enclave is not in debug mode: none of PCR0, PCR1, PCR2 is all zero.

    A debug-mode enclave's memory and console are open to the parent instance, and Nitro zeroes its
    image PCRs, so nothing it attests to can be trusted; even a document that matches no published
    PCRs should say so by name.
    """

    name = "debug-mode"

    def verify(self, document: AttestationDocument) -> None:
        zero = debug_mode_pcrs(document)
        if zero:
            names = ", ".join(f"PCR{i}" for i in zero)
            raise DebugMode(
                f"the enclave runs in debug mode ({names} all zero): its memory is open to the "
                "parent instance, so this document proves nothing about the image"
            )


class AllOf:
    """Every child check must pass; refuses an empty set, which would pass vacuously."""

    name = "all"

    def __init__(self, checks: Sequence[Check]) -> None:
        checks = list(checks)
        if not checks:
            raise ValueError("AllOf needs at least one check: an empty policy would accept anything")
        self._checks = checks

    def __iter__(self) -> Iterator[Check]:
        """The leaf checks, flattened, in order (reports list each one by name)."""
        for check in self._checks:
            if isinstance(check, AllOf):
                yield from check
            else:
                yield check

    def verify(self, document: AttestationDocument) -> None:
        for check in self:
            check.verify(document)


class UnsafeNoOp:
    """Requires nothing of the document's contents: only authenticity is checked. Warns on use."""

    name = "unsafe-no-policy"

    def verify(self, document: AttestationDocument) -> None:
        logger.warning(
            "no policy: PCRs, nonce and user data of %s were not checked", visible(document.module_id)
        )


def leaf_checks(policy: Check) -> list[Check]:
    """The individual checks a policy consists of, for reports that name each one."""
    return list(policy) if isinstance(policy, AllOf) else [policy]
