"""The embedded journal: one SQLite file in WAL mode, one flock per (chain_id, sender).

Ownership is an exclusive `flock` on `<db>.<chain_id>-<sender>.lock` beside the database, taken
before the database is touched: the kernel drops it when the process dies (SIGKILL included), so
a crashed router never leaves a stale lock, and two routers can never both hold a sender. Several
senders may share one file; each has its own lock file, rows and meta.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import (
    JournalClosed,
    JournalCorrupt,
    JournalError,
    JournalUnavailable,
    LeaseHeld,
)
from ._base import (
    APPLICATION,
    SCHEMA_VERSION,
    IntentRow,
    Journal,
    SignatureRow,
    check_meta,
    check_signature,
    decode_intent,
    decode_signature,
    encode_intent,
    unknown_intent_error,
    unknown_intents,
)

_POLL_SECONDS = 0.05
# A writer of another sender holds the database's write lock for one short transaction.
_BUSY_TIMEOUT_MS = 5_000

_SCHEMA = """
CREATE TABLE journal_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id INTEGER NOT NULL, sender TEXT NOT NULL, intent_id TEXT NOT NULL,
    intent TEXT NOT NULL, nonce INTEGER NOT NULL, state TEXT NOT NULL, tx_hash BLOB NOT NULL,
    landed_block INTEGER, landed_block_hash BLOB, landed_tx_hash BLOB, error TEXT,
    filler INTEGER NOT NULL,
    UNIQUE (chain_id, sender, intent_id)
);
CREATE TABLE signatures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id INTEGER NOT NULL, sender TEXT NOT NULL, tx_hash BLOB NOT NULL,
    intent_id TEXT NOT NULL, raw BLOB NOT NULL, nonce INTEGER NOT NULL,
    max_fee_per_gas TEXT NOT NULL, max_priority_fee_per_gas TEXT NOT NULL, kind TEXT NOT NULL,
    UNIQUE (chain_id, sender, tx_hash)
);
CREATE INDEX signatures_by_intent ON signatures (chain_id, sender, intent_id, seq);
CREATE TABLE meta (
    chain_id INTEGER NOT NULL, sender TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (chain_id, sender, key)
);
CREATE TABLE lease (
    chain_id INTEGER NOT NULL, sender TEXT NOT NULL, token INTEGER NOT NULL,
    PRIMARY KEY (chain_id, sender)
);
"""
_TABLES = {"journal_info", "intents", "signatures", "meta", "lease"}

_INTENT_COLUMNS = (
    "intent_id, intent, nonce, state, tx_hash, landed_block, landed_block_hash, landed_tx_hash, "
    "error, filler"
)
_SIG_COLUMNS = (
    "intent_id, tx_hash, raw, nonce, max_fee_per_gas, max_priority_fee_per_gas, kind"
)
_UPSERT_INTENT = f"""
INSERT INTO intents (chain_id, sender, {_INTENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (chain_id, sender, intent_id) DO UPDATE SET
    intent = excluded.intent, nonce = excluded.nonce, state = excluded.state,
    tx_hash = excluded.tx_hash, landed_block = excluded.landed_block,
    landed_block_hash = excluded.landed_block_hash, landed_tx_hash = excluded.landed_tx_hash,
    error = excluded.error, filler = excluded.filler
"""
_INSERT_SIG = f"""
INSERT INTO signatures (chain_id, sender, {_SIG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (chain_id, sender, tx_hash) DO NOTHING
"""

# Primary SQLite result codes (the low byte of the extended code).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class SqliteJournal(Journal):
    """See the module docstring; construct through `router.journal.open_journal`."""

    durable = True

    def __init__(
        self,
        path: Path,
        *,
        chain_id: int,
        sender: str,
        holder: str,
        acquire_timeout: float | None,
        sync: str,
    ) -> None:
        self._path = path
        self._chain = chain_id
        self._sender = sender
        self._lock = threading.Lock()
        self._closed = False
        self.lock_path = path.with_name(f"{path.name}.{chain_id}-{sender}.lock")
        self._lock_fd = _acquire_flock(self.lock_path, holder, acquire_timeout)
        try:
            self._db = self._connect(sync)
            self._token = self._init_schema()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # --- set-up ----------------------------------------------------------------------------

    def _connect(self, sync: str) -> sqlite3.Connection:
        try:
            # Owner only, like the router's API socket: pending intents are trading intentions
            # before any node has seen them. SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.chmod(self._path, 0o600)
        except OSError as e:
            raise JournalUnavailable(
                f"journal {self._path}: cannot create ({e.strerror or type(e).__name__})") from e
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves.
            db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as e:
            raise self._translate(e, "open") from e
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise JournalUnavailable(f"journal {self._path}: cannot switch to WAL mode ({mode})")
            db.execute(f"PRAGMA synchronous = {sync.upper()}")
        except sqlite3.Error as e:
            db.close()
            raise self._translate(e, "open") from e
        except JournalError:
            db.close()
            raise
        return db

    def _init_schema(self) -> int:
        """Create the tables in an empty file, refuse a file that is not ours, take the next token."""
        with self._transaction("open"):
            tables = {
                r[0]
                for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            tables.discard("sqlite_sequence")
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.executemany(
                    "INSERT INTO journal_info (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
            elif "journal_info" not in tables:
                raise JournalCorrupt(
                    f"journal {self._path}: not a Sentinel router journal "
                    f"(it holds other tables: {sorted(tables)[:5]})"
                )
            info = dict(self._db.execute("SELECT key, value FROM journal_info").fetchall())
            if info.get("application") != APPLICATION:
                raise JournalCorrupt(
                    f"journal {self._path}: not a Sentinel router journal "
                    f"(application {info.get('application')!r:.60})"
                )
            if info.get("schema_version") != str(SCHEMA_VERSION):
                raise JournalCorrupt(
                    f"journal {self._path}: schema version {info.get('schema_version')!r:.20}, "
                    f"this router reads version {SCHEMA_VERSION} only"
                )
            if tables and not _TABLES <= tables:
                raise JournalCorrupt(
                    f"journal {self._path}: tables missing: {sorted(_TABLES - tables)}"
                )
            self._db.execute(
                "INSERT INTO lease (chain_id, sender, token) VALUES (?, ?, 1) "
                "ON CONFLICT (chain_id, sender) DO UPDATE SET token = token + 1",
                (self._chain, self._sender),
            )
            (token,) = self._db.execute(
                "SELECT token FROM lease WHERE chain_id = ? AND sender = ?",
                (self._chain, self._sender),
            ).fetchone()
        return int(token)

    # --- plumbing ----------------------------------------------------------------------------

    def _translate(self, e: sqlite3.Error, what: str) -> JournalError:
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (
            primary is None and isinstance(e, sqlite3.DatabaseError)
            and not isinstance(e, sqlite3.OperationalError)
        ):
            return JournalCorrupt(f"journal {self._path}: unreadable ({what}): {e}")
        return JournalUnavailable(f"journal {self._path}: {what} failed: {e}")

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One BEGIN IMMEDIATE … COMMIT under the thread lock; rolled back on any exception."""
        with self._lock:
            if self._closed:
                raise JournalClosed(f"journal {self._path} is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._translate(e, what) from e
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the failed statement may already have ended the transaction
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc, what) from exc
                raise

    def _query(self, what: str, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            if self._closed:
                raise JournalClosed(f"journal {self._path} is closed")
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise self._translate(e, what) from e

    # --- the contract ---------------------------------------------------------------------------

    def write(self, rows: Sequence[IntentRow], sigs: Sequence[SignatureRow] = ()) -> None:
        encoded = [encode_intent(r) for r in rows]
        for sig in sigs:
            check_signature(sig)
        key = (self._chain, self._sender)
        with self._transaction("write"):
            self._db.executemany(
                _UPSERT_INTENT,
                [
                    (*key, r.intent_id, js, r.nonce, r.state, r.tx_hash, r.landed_block,
                     r.landed_block_hash, r.landed_tx_hash, r.error, int(r.filler))
                    for r, js in zip(rows, encoded, strict=True)
                ],
            )
            # Checked inside the transaction, after the upsert: the rows above count as known.
            missing = {
                i for i in unknown_intents(sigs, rows)
                if self._db.execute(
                    "SELECT 1 FROM intents WHERE chain_id = ? AND sender = ? AND intent_id = ?",
                    (*key, i),
                ).fetchone() is None
            }
            if missing:
                raise unknown_intent_error(missing)
            self._db.executemany(
                _INSERT_SIG,
                [
                    (*key, s.intent_id, s.tx_hash, s.raw, s.nonce, str(s.max_fee_per_gas),
                     str(s.max_priority_fee_per_gas), s.kind)
                    for s in sigs
                ],
            )

    def load(self) -> list[IntentRow]:
        rows = self._query(
            "load",
            f"SELECT {_INTENT_COLUMNS} FROM intents WHERE chain_id = ? AND sender = ? ORDER BY seq",
            (self._chain, self._sender),
        )
        return [decode_intent(str(self._path), r) for r in rows]

    def get(self, intent_id: str) -> IntentRow | None:
        rows = self._query(
            "get",
            f"SELECT {_INTENT_COLUMNS} FROM intents "
            "WHERE chain_id = ? AND sender = ? AND intent_id = ?",
            (self._chain, self._sender, intent_id),
        )
        return decode_intent(str(self._path), rows[0]) if rows else None

    def signatures(self, intent_id: str) -> list[SignatureRow]:
        rows = self._query(
            "signatures",
            f"SELECT {_SIG_COLUMNS} FROM signatures "
            "WHERE chain_id = ? AND sender = ? AND intent_id = ? ORDER BY seq",
            (self._chain, self._sender, intent_id),
        )
        return [decode_signature(str(self._path), r) for r in rows]

    def all_signatures(self) -> list[SignatureRow]:
        rows = self._query(
            "all_signatures",
            f"SELECT {_SIG_COLUMNS} FROM signatures WHERE chain_id = ? AND sender = ? ORDER BY seq",
            (self._chain, self._sender),
        )
        return [decode_signature(str(self._path), r) for r in rows]

    def meta_get(self, key: str) -> str | None:
        check_meta(key)
        rows = self._query(
            "meta_get",
            "SELECT value FROM meta WHERE chain_id = ? AND sender = ? AND key = ?",
            (self._chain, self._sender, key),
        )
        return str(rows[0][0]) if rows else None

    def meta_set(self, key: str, value: str) -> None:
        check_meta(key, value)
        with self._transaction("meta_set"):
            self._db.execute(
                "INSERT INTO meta (chain_id, sender, key, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chain_id, sender, key) DO UPDATE SET value = excluded.value",
                (self._chain, self._sender, key, value),
            )

    def renew(self) -> None:
        # The flock cannot expire; only closing gives it up.
        if self._closed:
            raise JournalClosed(f"journal {self._path} is closed")

    def lease_remaining(self) -> float:
        return 0.0 if self._closed else math.inf

    @property
    def fencing_token(self) -> int:
        return self._token

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            finally:
                os.close(self._lock_fd)  # releases the flock


def _acquire_flock(path: Path, holder: str, timeout: float | None) -> int:
    """Open `path` and take an exclusive flock on it, waiting up to `timeout` (None: forever).

    Raises:
        LeaseHeld: another open file description holds it (the message names its holder).
        JournalUnavailable: the lock file cannot be created.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise JournalUnavailable(f"journal lock {path}: cannot open: {e.strerror}") from e
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                try:
                    other = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise LeaseHeld(
                    f"journal lock {path} is held by {other}; it is released when that process "
                    "closes the journal or exits",
                    holder=other,
                    expires_in=None,
                ) from None
            time.sleep(_POLL_SECONDS)
        except OSError as e:
            os.close(fd)
            raise JournalUnavailable(f"journal lock {path}: flock failed: {e.strerror}") from e
    # Who holds it, for the next opener's LeaseHeld message (not needed for correctness).
    info = f"{holder} (pid {os.getpid()})".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    return fd
