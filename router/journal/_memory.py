"""The in-memory journal: the same contract, nothing durable (`journal = "memory"`, tests)."""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence

from ..errors import JournalClosed
from ._base import (
    IntentRow,
    Journal,
    SignatureRow,
    check_meta,
    check_signature,
    encode_intent,
    unknown_intent_error,
    unknown_intents,
)


class MemoryJournal(Journal):
    """Dicts behind a lock; each instance is its own journal (no lease to share)."""

    durable = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, IntentRow] = {}  # insertion order = first-write order
        self._sigs: dict[bytes, SignatureRow] = {}
        self._meta: dict[str, str] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosed("the memory journal is closed")

    def write(self, rows: Sequence[IntentRow], sigs: Sequence[SignatureRow] = ()) -> None:
        for row in rows:
            encode_intent(row)
        for sig in sigs:
            check_signature(sig)
        # Deep copies: a caller mutating its intent dict later must not change the record.
        new_rows = [copy.deepcopy(r) for r in rows]
        with self._lock:
            self._check_open()
            missing = {i for i in unknown_intents(sigs, rows) if i not in self._rows}
            if missing:
                raise unknown_intent_error(missing)
            for row in new_rows:
                self._rows[row.intent_id] = row
            for sig in sigs:
                self._sigs.setdefault(sig.tx_hash, sig)

    def load(self) -> list[IntentRow]:
        with self._lock:
            self._check_open()
            return [copy.deepcopy(r) for r in self._rows.values()]

    def get(self, intent_id: str) -> IntentRow | None:
        with self._lock:
            self._check_open()
            row = self._rows.get(intent_id)
            return copy.deepcopy(row) if row is not None else None

    def signatures(self, intent_id: str) -> list[SignatureRow]:
        with self._lock:
            self._check_open()
            return [s for s in self._sigs.values() if s.intent_id == intent_id]

    def all_signatures(self) -> list[SignatureRow]:
        with self._lock:
            self._check_open()
            return list(self._sigs.values())

    def meta_get(self, key: str) -> str | None:
        check_meta(key)
        with self._lock:
            self._check_open()
            return self._meta.get(key)

    def meta_set(self, key: str, value: str) -> None:
        check_meta(key, value)
        with self._lock:
            self._check_open()
            self._meta[key] = value

    def renew(self) -> None:
        self._check_open()

    def lease_remaining(self) -> float:
        return 0.0 if self._closed else math.inf

    @property
    def fencing_token(self) -> int:
        return 1

    def close(self) -> None:
        self._closed = True
