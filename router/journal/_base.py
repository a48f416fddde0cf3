"""Records, the `Journal` contract, and the checks every backend shares (encode, validate, decode)."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidRecord, JournalCorrupt

#: Bumped on any incompatible change of the tables; a journal of another version is refused.
SCHEMA_VERSION = 1
#: Written beside the version so a database that merely has a table of the same name is told apart.
APPLICATION = "sentinel-router-journal"

STATES = frozenset({"pending", "landed", "failed", "replaced", "cancelled"})
KINDS = frozenset({"first", "bump", "resign", "move", "cancel", "filler", "standby"})

# Nonces and block numbers live in 64-bit signed integer columns (SQLite INTEGER, BIGINT); real
# ones are far below. Fees are up to 256 bits, stored as decimal text / NUMERIC(78).
_MAX_INT64 = 2**63 - 1
_MAX_UINT256 = 2**256 - 1
_SENDER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_HEX_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class SignatureRow:
    """One signed transaction of an intent (the bytes are public: they are broadcast)."""

    intent_id: str
    tx_hash: bytes
    raw: bytes
    nonce: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    kind: str


@dataclass(frozen=True)
class IntentRow:
    """An intent's current state; `tx_hash` is its current signature's hash."""

    intent_id: str
    intent: dict[str, object]
    nonce: int
    state: str
    tx_hash: bytes
    landed_block: int | None = None
    landed_block_hash: bytes | None = None
    landed_tx_hash: bytes | None = None
    error: str | None = None
    filler: bool = False


class Journal(ABC):
    """A durable write-ahead record of one (chain_id, sender)'s intents and signatures.

    Every method may raise `JournalUnavailable` (database unreachable, disk I/O) and, once the
    journal is closed, `JournalClosed`. Methods are safe to call from several threads.
    """

    #: False only for the in-memory journal: nothing survives the process.
    durable: bool = True

    @abstractmethod
    def write(self, rows: Sequence[IntentRow], sigs: Sequence[SignatureRow] = ()) -> None:
        """Upsert `rows` (by intent_id) and insert `sigs` (a known tx_hash is ignored) atomically.

        One durable transaction, fenced by the lease. A signature's intent must be in `rows` or
        already in the journal.

        Raises:
            InvalidRecord: a field is out of range, or a signature names an unknown intent
                (nothing is written).
            LeaseLost: this holder no longer holds the sender's lease (nothing is written).
            JournalUnavailable: the database could not be reached or written.
        """

    @abstractmethod
    def load(self) -> list[IntentRow]:
        """Every intent row, in first-write order (an upsert keeps a row's place).

        Raises:
            JournalCorrupt: a stored row does not decode (the message names it).
        """

    @abstractmethod
    def get(self, intent_id: str) -> IntentRow | None:
        """The row of `intent_id`, or None.

        Raises:
            JournalCorrupt: the stored row does not decode.
        """

    @abstractmethod
    def signatures(self, intent_id: str) -> list[SignatureRow]:
        """Every signature of `intent_id`, in insertion order.

        Raises:
            JournalCorrupt: a stored row does not decode.
        """

    @abstractmethod
    def all_signatures(self) -> list[SignatureRow]:
        """Every signature of this sender, in insertion order.

        Raises:
            JournalCorrupt: a stored row does not decode.
        """

    @abstractmethod
    def meta_get(self, key: str) -> str | None:
        """The value stored under `key` for this (chain_id, sender), or None."""

    @abstractmethod
    def meta_set(self, key: str, value: str) -> None:
        """Store `value` under `key` for this (chain_id, sender); fenced like `write`.

        Raises:
            LeaseLost: this holder no longer holds the sender's lease.
        """

    @abstractmethod
    def renew(self) -> None:
        """Extend the lease by its full length (a no-op where ownership cannot expire).

        Raises:
            LeaseLost: another holder has taken the sender over, or our lease expired.
        """

    @abstractmethod
    def lease_remaining(self) -> float:
        """Seconds this holder may still act on its own clock, a safety margin subtracted.

        `math.inf` where ownership cannot expire (SQLite flock, memory); never negative.
        """

    @property
    @abstractmethod
    def fencing_token(self) -> int:
        """This holder's lease generation: strictly greater than every earlier holder's."""

    @abstractmethod
    def close(self) -> None:
        """Release the lease (a waiting standby gets it at once) and the connection; idempotent."""

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- validation and encoding ------------------------------------------------------------------


def normalize_sender(sender: str) -> str:
    """The key a sender is stored under: a 0x address in lower case, else the string itself.

    Raises:
        InvalidRecord: empty, too long, or characters unfit for a lock-file name.
    """
    if not isinstance(sender, str) or not _SENDER_RE.fullmatch(sender):
        raise InvalidRecord(
            f"journal sender {sender!r:.60}: expected 1..100 characters of [A-Za-z0-9_.:-] "
            "(normally a 0x address)"
        )
    return sender.lower() if _HEX_ADDRESS_RE.fullmatch(sender) else sender


def check_chain_id(chain_id: int) -> int:
    """Raises: InvalidRecord: not an integer in 1..2**63-1."""
    if not isinstance(chain_id, int) or isinstance(chain_id, bool) or not 0 < chain_id <= _MAX_INT64:
        raise InvalidRecord(f"journal chain_id {chain_id!r:.40}: expected an integer in 1..2**63-1")
    return chain_id


def _int(owner: str, name: str, value: object, high: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise InvalidRecord(f"{owner}: {name} {value!r:.40} is not an integer in 0..{high}")


def _hash(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidRecord(f"{owner}: {name} must be 32 bytes, got {value!r:.50}")


def _text(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{owner}: {name} must be a non-empty string, got {value!r:.50}")


def encode_intent(row: IntentRow) -> str:
    """Check every field of `row` and return its intent as canonical JSON text.

    Raises:
        InvalidRecord: a field is missing, mistyped or out of range.
    """
    owner = f"intent row {row.intent_id!r:.80}"
    _text(owner, "intent_id", row.intent_id)
    if row.state not in STATES:
        raise InvalidRecord(f"{owner}: state {row.state!r:.30} is not one of {sorted(STATES)}")
    _int(owner, "nonce", row.nonce, _MAX_INT64)
    _hash(owner, "tx_hash", row.tx_hash)
    _int(owner, "landed_block", row.landed_block, _MAX_INT64, optional=True)
    _hash(owner, "landed_block_hash", row.landed_block_hash, optional=True)
    _hash(owner, "landed_tx_hash", row.landed_tx_hash, optional=True)
    if row.error is not None and not isinstance(row.error, str):
        raise InvalidRecord(f"{owner}: error must be a string or None")
    if not isinstance(row.filler, bool):
        raise InvalidRecord(f"{owner}: filler must be a bool")
    if not isinstance(row.intent, dict):
        raise InvalidRecord(f"{owner}: intent must be a dict (Intent.to_json())")
    try:
        return json.dumps(row.intent, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRecord(f"{owner}: intent is not JSON-serialisable ({e})") from e


def check_signature(sig: SignatureRow) -> None:
    """Raises: InvalidRecord: a field of `sig` is missing, mistyped or out of range."""
    owner = f"signature of intent {sig.intent_id!r:.80}"
    _text(owner, "intent_id", sig.intent_id)
    _hash(owner, "tx_hash", sig.tx_hash)
    if not isinstance(sig.raw, bytes) or not sig.raw:
        raise InvalidRecord(f"{owner}: raw must be non-empty bytes")
    _int(owner, "nonce", sig.nonce, _MAX_INT64)
    _int(owner, "max_fee_per_gas", sig.max_fee_per_gas, _MAX_UINT256)
    _int(owner, "max_priority_fee_per_gas", sig.max_priority_fee_per_gas, _MAX_UINT256)
    if sig.kind not in KINDS:
        raise InvalidRecord(f"{owner}: kind {sig.kind!r:.30} is not one of {sorted(KINDS)}")


def check_meta(key: str, value: str | None = None) -> None:
    """Raises: InvalidRecord: key (or value) is not a string."""
    if not isinstance(key, str) or not key:
        raise InvalidRecord(f"journal meta key {key!r:.40} must be a non-empty string")
    if value is not None and not isinstance(value, str):
        raise InvalidRecord(f"journal meta {key!r:.40}: value must be a string")


def unknown_intents(sigs: Sequence[SignatureRow], rows: Sequence[IntentRow]) -> set[str]:
    """Intent ids named by `sigs` that `rows` do not carry (the backend checks its store)."""
    return {s.intent_id for s in sigs} - {r.intent_id for r in rows}


def unknown_intent_error(intent_ids: set[str]) -> InvalidRecord:
    return InvalidRecord(
        f"signatures name intents the journal does not hold: {sorted(intent_ids)[:5]} "
        "(write the intent row in the same write or before)"
    )


# --- decoding (what a backend read back) --------------------------------------------------------


def decode_intent(where: str, values: Sequence[object]) -> IntentRow:
    """Build an IntentRow from a stored row, checking it as on the way in.

    `values` is (intent_id, intent_json, nonce, state, tx_hash, landed_block, landed_block_hash,
    landed_tx_hash, error, filler).

    Raises:
        JournalCorrupt: the stored row does not decode; the message names `where` and the row.
    """
    intent_id = values[0]
    try:
        intent = json.loads(str(values[1]))
        if not isinstance(intent, dict):
            raise ValueError("intent is not a JSON object")
        row = IntentRow(
            intent_id=intent_id,  # type: ignore[arg-type]
            intent=intent,
            nonce=values[2],  # type: ignore[arg-type]
            state=values[3],  # type: ignore[arg-type]
            tx_hash=_bytes(values[4]),  # type: ignore[arg-type]
            landed_block=values[5],  # type: ignore[arg-type]
            landed_block_hash=_bytes(values[6]),
            landed_tx_hash=_bytes(values[7]),
            error=values[8],  # type: ignore[arg-type]
            filler=bool(values[9]),
        )
        encode_intent(row)
    except (ValueError, TypeError, InvalidRecord) as e:
        raise JournalCorrupt(f"{where}: intent row {intent_id!r:.80} does not decode: {e}") from e
    return row


def decode_signature(where: str, values: Sequence[object]) -> SignatureRow:
    """Build a SignatureRow from (intent_id, tx_hash, raw, nonce, max_fee, max_priority_fee, kind).

    Raises:
        JournalCorrupt: the stored row does not decode; the message names `where` and the row.
    """
    tx = values[1]
    name = "0x" + tx.hex() if isinstance(tx, bytes | memoryview) else repr(tx)
    try:
        sig = SignatureRow(
            intent_id=values[0],  # type: ignore[arg-type]
            tx_hash=_bytes(values[1]),  # type: ignore[arg-type]
            raw=_bytes(values[2]),  # type: ignore[arg-type]
            nonce=values[3],  # type: ignore[arg-type]
            max_fee_per_gas=int(values[4]),  # type: ignore[call-overload]
            max_priority_fee_per_gas=int(values[5]),  # type: ignore[call-overload]
            kind=values[6],  # type: ignore[arg-type]
        )
        check_signature(sig)
    except (ValueError, TypeError, InvalidRecord) as e:
        raise JournalCorrupt(f"{where}: signature {name:.70} does not decode: {e}") from e
    return sig


def _bytes(value: object) -> bytes | None:
    # psycopg returns BYTEA as bytes or memoryview depending on the loader.
    return bytes(value) if isinstance(value, memoryview) else value  # type: ignore[return-value]
