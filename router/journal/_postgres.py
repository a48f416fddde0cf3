"""The shared journal for an active/standby pair: PostgreSQL (psycopg 3) with a fenced lease row.

The lease row `(chain_id, sender) -> (holder, token, expires_at)` is the only arbiter, on the
database's clock: acquiring inserts it or takes over an expired one with `token + 1`; every write
and meta_set locks it (`SELECT … FOR UPDATE`) and commits only if our token is still current and
unexpired. A take-over must update that row, so it waits for an in-flight write to finish: once a
standby holds the lease, no write of the old holder can commit (fencing).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from ..errors import (
    JournalClosed,
    JournalCorrupt,
    JournalError,
    JournalUnavailable,
    LeaseHeld,
    LeaseLost,
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

#: Fraction of the lease kept in reserve by `lease_remaining` (clock-rate drift, GC pauses).
LEASE_MARGIN = 0.2
# Serialises schema creation between routers starting at once (any constant shared by them).
_SCHEMA_LOCK_KEY = 0x53454E54494E4C4A  # "SENTINLJ"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sentinel_journal_info (
        key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sentinel_journal_lease (
        chain_id BIGINT NOT NULL, sender TEXT NOT NULL, holder TEXT NOT NULL,
        token BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chain_id, sender))""",
    """CREATE TABLE IF NOT EXISTS sentinel_journal_intents (
        seq BIGSERIAL NOT NULL,
        chain_id BIGINT NOT NULL, sender TEXT NOT NULL, intent_id TEXT NOT NULL,
        intent TEXT NOT NULL, nonce BIGINT NOT NULL, state TEXT NOT NULL, tx_hash BYTEA NOT NULL,
        landed_block BIGINT, landed_block_hash BYTEA, landed_tx_hash BYTEA, error TEXT,
        filler BOOLEAN NOT NULL,
        PRIMARY KEY (chain_id, sender, intent_id))""",
    """CREATE TABLE IF NOT EXISTS sentinel_journal_signatures (
        seq BIGSERIAL NOT NULL,
        chain_id BIGINT NOT NULL, sender TEXT NOT NULL, tx_hash BYTEA NOT NULL,
        intent_id TEXT NOT NULL, raw BYTEA NOT NULL, nonce BIGINT NOT NULL,
        max_fee_per_gas NUMERIC(78, 0) NOT NULL, max_priority_fee_per_gas NUMERIC(78, 0) NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (chain_id, sender, tx_hash))""",
    """CREATE INDEX IF NOT EXISTS sentinel_journal_signatures_by_intent
        ON sentinel_journal_signatures (chain_id, sender, intent_id, seq)""",
    """CREATE TABLE IF NOT EXISTS sentinel_journal_meta (
        chain_id BIGINT NOT NULL, sender TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (chain_id, sender, key))""",
]

_INTENT_COLUMNS = (
    "intent_id, intent, nonce, state, tx_hash, landed_block, landed_block_hash, landed_tx_hash, "
    "error, filler"
)
_SIG_COLUMNS = "intent_id, tx_hash, raw, nonce, max_fee_per_gas, max_priority_fee_per_gas, kind"
_UPSERT_INTENT = f"""
INSERT INTO sentinel_journal_intents (chain_id, sender, {_INTENT_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (chain_id, sender, intent_id) DO UPDATE SET
    intent = EXCLUDED.intent, nonce = EXCLUDED.nonce, state = EXCLUDED.state,
    tx_hash = EXCLUDED.tx_hash, landed_block = EXCLUDED.landed_block,
    landed_block_hash = EXCLUDED.landed_block_hash, landed_tx_hash = EXCLUDED.landed_tx_hash,
    error = EXCLUDED.error, filler = EXCLUDED.filler
"""
_INSERT_SIG = f"""
INSERT INTO sentinel_journal_signatures (chain_id, sender, {_SIG_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (chain_id, sender, tx_hash) DO NOTHING
"""
# Insert, or take over a lapsed lease with the next token; nothing returned = someone holds it.
_ACQUIRE = """
INSERT INTO sentinel_journal_lease AS l (chain_id, sender, holder, token, expires_at)
VALUES (%s, %s, %s, 1, clock_timestamp() + make_interval(secs => %s))
ON CONFLICT (chain_id, sender) DO UPDATE
    SET holder = EXCLUDED.holder, token = l.token + 1, expires_at = EXCLUDED.expires_at
    WHERE l.expires_at < clock_timestamp()
RETURNING token
"""


# A statement's own timeout fires on the server; this much later the client gives up by itself
# (a stopped or wedged server cannot cancel anything).
_CLIENT_GRACE_SECONDS = 2.0


class _Watchdog:
    """Shuts a connection's socket down when one call outlives its deadline, so a server that
    stopped answering (SIGSTOP, a wedged host: TCP still acknowledges) fails the call instead of
    hanging it forever. One daemon thread per journal, idle between calls."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._deadline: float | None = None
        self._fd = -1
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> None:
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="journal-watchdog",
                                                daemon=True)
                self._thread.start()
            self._fd, self._deadline = fd, time.monotonic() + seconds
            self._cv.notify()

    def disarm(self) -> None:
        with self._cv:
            self._deadline = None

    def stop(self) -> None:
        with self._cv:
            self._stopped, self._deadline = True, None
            self._cv.notify()

    def _run(self) -> None:
        with self._cv:
            while not self._stopped:
                if self._deadline is None:
                    self._cv.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                self._deadline = None
                try:
                    # shutdown() on a duplicate acts on the shared socket: the blocked recv
                    # returns EOF and psycopg raises OperationalError in the caller's thread.
                    with socket.socket(fileno=os.dup(self._fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: the call has ended anyway


def describe(dsn: str) -> str:
    """`postgresql://host:port/dbname` without user or password, for messages."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://(unparsable DSN)"
    return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"


class PostgresJournal(Journal):
    """See the module docstring; construct through `router.journal.open_journal`."""

    durable = True

    def __init__(
        self,
        dsn: str,
        *,
        chain_id: int,
        sender: str,
        holder: str,
        lease_seconds: float,
        acquire_timeout: float | None,
        db_timeout: float,
    ) -> None:
        self._dsn = dsn
        self._where = describe(dsn)
        self._chain = chain_id
        self._sender = sender
        self.holder = holder
        self._lease_seconds = lease_seconds
        self._db_timeout = db_timeout
        self._lock = threading.RLock()
        self._closed = False
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._token = 0
        self._renewed_at = -math.inf
        self._watchdog = _Watchdog()
        try:
            self._init_schema()
            self._acquire(acquire_timeout)
        except BaseException:
            self._watchdog.stop()
            self._disconnect()
            raise

    # --- connection ----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection, reconnecting after a failure (the lease lives in the database)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        timeout_ms = max(1, int(self._db_timeout * 1000))
        try:
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=False,
                # libpq: whole seconds, at least 2.
                connect_timeout=max(2, math.ceil(self._db_timeout)),
                # Server side: a statement (lock waits included) that takes longer is cancelled.
                options=f"-c statement_timeout={timeout_ms} "
                f"-c idle_in_transaction_session_timeout={max(timeout_ms, 10_000)}",
                # Client side: unacknowledged data on a dead link fails the call.
                tcp_user_timeout=timeout_ms,
                keepalives=1,
                keepalives_idle=max(1, int(self._db_timeout)),
                keepalives_interval=1,
                keepalives_count=3,
                application_name="sentinel-router-journal",
            )
        except psycopg.Error as e:
            raise JournalUnavailable(f"journal {self._where}: cannot connect: {_first_line(e)}") from e
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """One transaction: committed on success, rolled back (and errors translated) otherwise."""
        with self._lock:
            if self._closed:
                raise JournalClosed(f"journal {self._where} is closed")
            conn = self._connection()
            self._watchdog.arm(conn.pgconn.socket, self._db_timeout + _CLIENT_GRACE_SECONDS)
            try:
                yield conn
                conn.commit()
            except BaseException as exc:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._disconnect()
                if isinstance(exc, psycopg.Error):
                    raise self._translate(exc, what) from exc
                raise
            finally:
                self._watchdog.disarm()

    def _translate(self, e: psycopg.Error, what: str) -> JournalError:
        if isinstance(e, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            return JournalCorrupt(f"journal {self._where}: tables are not ours ({what}): "
                                  f"{_first_line(e)}")
        if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._disconnect()
            return JournalUnavailable(f"journal {self._where}: {what} failed: {_first_line(e)}")
        return JournalUnavailable(f"journal {self._where}: {what} failed: {_first_line(e)}")

    # --- set-up ----------------------------------------------------------------------------

    def _init_schema(self) -> None:
        with self._transaction("create schema") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO sentinel_journal_info (key, value) VALUES (%s, %s), (%s, %s) "
                "ON CONFLICT (key) DO NOTHING",
                ("application", APPLICATION, "schema_version", str(SCHEMA_VERSION)),
            )
            info = dict(conn.execute("SELECT key, value FROM sentinel_journal_info").fetchall())
        if info.get("application") != APPLICATION:
            raise JournalCorrupt(
                f"journal {self._where}: sentinel_journal_info is not ours "
                f"(application {info.get('application')!r:.60})"
            )
        if info.get("schema_version") != str(SCHEMA_VERSION):
            raise JournalCorrupt(
                f"journal {self._where}: schema version {info.get('schema_version')!r:.20}, "
                f"this router reads version {SCHEMA_VERSION} only"
            )

    def _acquire(self, timeout: float | None) -> None:
        """Take the lease, polling until `timeout` (None: forever, a standby's wait).

        Raises:
            LeaseHeld: another holder's lease did not lapse within `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = min(1.0, max(0.05, self._lease_seconds / 10))
        while True:
            started = time.monotonic()
            with self._transaction("acquire lease") as conn:
                got = conn.execute(
                    _ACQUIRE, (self._chain, self._sender, self.holder, self._lease_seconds)
                ).fetchone()
                other = None if got else conn.execute(
                    "SELECT holder, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) "
                    "FROM sentinel_journal_lease WHERE chain_id = %s AND sender = %s",
                    (self._chain, self._sender),
                ).fetchone()
            if got:
                self._token = int(got[0])
                self._renewed_at = started
                return
            holder, left = (other or ("unknown", 0.0))
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"journal {self._where}: sender {self._sender} on chain {self._chain} is held "
                    f"by {holder}; its lease expires in {max(0.0, float(left)):.2f} s unless renewed",
                    holder=str(holder),
                    expires_in=max(0.0, float(left)),
                )
            wait = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)

    # --- the contract ---------------------------------------------------------------------------

    def _fence(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Lock our lease row and check it is still ours and unexpired, in the caller's transaction.

        Raises:
            LeaseLost: another holder's token is current, or ours lapsed (the caller rolls back).
        """
        row = conn.execute(
            "SELECT holder, token, expires_at > clock_timestamp() FROM sentinel_journal_lease "
            "WHERE chain_id = %s AND sender = %s FOR UPDATE",
            (self._chain, self._sender),
        ).fetchone()
        if row is None or row[0] != self.holder or row[1] != self._token or not row[2]:
            current = "nobody" if row is None else f"{row[0]} (token {row[1]})"
            state = "" if row is None or row[2] else ", lease lapsed"
            raise LeaseLost(
                f"journal {self._where}: lease of sender {self._sender} lost: our token "
                f"{self._token}, current holder {current}{state}; nothing written"
            )

    def write(self, rows: Sequence[IntentRow], sigs: Sequence[SignatureRow] = ()) -> None:
        encoded = [encode_intent(r) for r in rows]
        for sig in sigs:
            check_signature(sig)
        key = (self._chain, self._sender)
        with self._transaction("write") as conn:
            self._fence(conn)
            with conn.cursor() as cur:
                if rows:
                    cur.executemany(
                        _UPSERT_INTENT,
                        [
                            (*key, r.intent_id, js, r.nonce, r.state, r.tx_hash, r.landed_block,
                             r.landed_block_hash, r.landed_tx_hash, r.error, r.filler)
                            for r, js in zip(rows, encoded, strict=True)
                        ],
                    )
                wanted = sorted(unknown_intents(sigs, rows))
                if wanted:
                    found = {
                        r[0] for r in cur.execute(
                            "SELECT intent_id FROM sentinel_journal_intents "
                            "WHERE chain_id = %s AND sender = %s AND intent_id = ANY(%s)",
                            (*key, wanted),
                        ).fetchall()
                    }
                    if set(wanted) - found:
                        raise unknown_intent_error(set(wanted) - found)
                if sigs:
                    cur.executemany(
                        _INSERT_SIG,
                        [
                            (*key, s.intent_id, s.tx_hash, s.raw, s.nonce, s.max_fee_per_gas,
                             s.max_priority_fee_per_gas, s.kind)
                            for s in sigs
                        ],
                    )

    def _read(self, what: str, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._transaction(what) as conn:
            return conn.execute(sql, args).fetchall()

    def load(self) -> list[IntentRow]:
        rows = self._read(
            "load",
            f"SELECT {_INTENT_COLUMNS} FROM sentinel_journal_intents "
            "WHERE chain_id = %s AND sender = %s ORDER BY seq",
            (self._chain, self._sender),
        )
        return [decode_intent(self._where, r) for r in rows]

    def get(self, intent_id: str) -> IntentRow | None:
        rows = self._read(
            "get",
            f"SELECT {_INTENT_COLUMNS} FROM sentinel_journal_intents "
            "WHERE chain_id = %s AND sender = %s AND intent_id = %s",
            (self._chain, self._sender, intent_id),
        )
        return decode_intent(self._where, rows[0]) if rows else None

    def signatures(self, intent_id: str) -> list[SignatureRow]:
        rows = self._read(
            "signatures",
            f"SELECT {_SIG_COLUMNS} FROM sentinel_journal_signatures "
            "WHERE chain_id = %s AND sender = %s AND intent_id = %s ORDER BY seq",
            (self._chain, self._sender, intent_id),
        )
        return [decode_signature(self._where, r) for r in rows]

    def all_signatures(self) -> list[SignatureRow]:
        rows = self._read(
            "all_signatures",
            f"SELECT {_SIG_COLUMNS} FROM sentinel_journal_signatures "
            "WHERE chain_id = %s AND sender = %s ORDER BY seq",
            (self._chain, self._sender),
        )
        return [decode_signature(self._where, r) for r in rows]

    def meta_get(self, key: str) -> str | None:
        check_meta(key)
        rows = self._read(
            "meta_get",
            "SELECT value FROM sentinel_journal_meta "
            "WHERE chain_id = %s AND sender = %s AND key = %s",
            (self._chain, self._sender, key),
        )
        return str(rows[0][0]) if rows else None

    def meta_set(self, key: str, value: str) -> None:
        check_meta(key, value)
        with self._transaction("meta_set") as conn:
            self._fence(conn)
            conn.execute(
                "INSERT INTO sentinel_journal_meta (chain_id, sender, key, value) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (chain_id, sender, key) DO UPDATE SET value = EXCLUDED.value",
                (self._chain, self._sender, key, value),
            )

    def renew(self) -> None:
        started = time.monotonic()
        with self._transaction("renew") as conn:
            row = conn.execute(
                "UPDATE sentinel_journal_lease "
                "SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE chain_id = %s AND sender = %s AND holder = %s AND token = %s "
                "AND expires_at > clock_timestamp() RETURNING token",
                (self._lease_seconds, self._chain, self._sender, self.holder, self._token),
            ).fetchone()
        if row is None:
            self._renewed_at = -math.inf
            raise LeaseLost(
                f"journal {self._where}: lease of sender {self._sender} (token {self._token}) "
                "was taken over or lapsed before renewal"
            )
        # The database stamped the new expiry after we sent the request: counting from `started`
        # can only under-estimate what is left.
        self._renewed_at = started

    def lease_remaining(self) -> float:
        if self._closed:
            return 0.0
        left = self._renewed_at + self._lease_seconds * (1 - LEASE_MARGIN) - time.monotonic()
        return max(0.0, left)

    @property
    def fencing_token(self) -> int:
        return self._token

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                # Lapse our lease (keeping its token, so the next holder's is larger) so a
                # waiting standby takes over at its next poll.
                with self._transaction("release lease") as conn:
                    conn.execute(
                        "UPDATE sentinel_journal_lease SET expires_at = '-infinity' "
                        "WHERE chain_id = %s AND sender = %s AND holder = %s AND token = %s",
                        (self._chain, self._sender, self.holder, self._token),
                    )
            except JournalError:
                pass  # unreachable: the lease lapses on its own
            finally:
                self._closed = True
                self._watchdog.stop()
                self._disconnect()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
