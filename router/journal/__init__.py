"""The router's durable intent journal: every intent, nonce and signature, written before broadcast.

Backends, chosen by `open_journal`'s spec:

- a file path: SQLite in WAL mode; exclusive per-sender ownership through a flock beside the file.
- `postgresql://…`: PostgreSQL (psycopg 3) for an active/standby pair; a lease row with a
  fencing token decides which router may write for a sender.
- `memory`: the same contract, nothing durable (`durable` is False).

A journal holds one (chain_id, sender); one database may hold several, keyed by both.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from ..errors import (
    InvalidRecord,
    JournalClosed,
    JournalCorrupt,
    JournalError,
    JournalUnavailable,
    LeaseHeld,
    LeaseLost,
)
from ._base import (
    KINDS,
    SCHEMA_VERSION,
    STATES,
    IntentRow,
    Journal,
    SignatureRow,
    check_chain_id,
    normalize_sender,
)

__all__ = [
    "KINDS",
    "DEFAULT_SYNC",
    "SCHEMA_VERSION",
    "STATES",
    "InvalidRecord",
    "IntentRow",
    "Journal",
    "JournalClosed",
    "JournalCorrupt",
    "JournalError",
    "JournalUnavailable",
    "LeaseHeld",
    "LeaseLost",
    "SignatureRow",
    "open_journal",
]

SYNC_MODES = ("full", "normal")
# NORMAL by default: on this project's reference machine (ext4 on a virtio disk) one write of one
# row + one signature took p50 ~3.9 ms with FULL (an fsync per commit) against ~0.17 ms with
# NORMAL (tests/journal_sync_cost.py). In WAL mode NORMAL loses nothing on a process crash
# (SIGKILL); only an OS crash or power loss of this machine may drop the last commits, and a
# transaction broadcast after such a commit would then be unknown to the restarted router.
# sync="full" closes that window at the cost above.
DEFAULT_SYNC = "normal"


def open_journal(
    spec: str,
    *,
    base_dir: Path,
    chain_id: int,
    sender: str,
    holder: str | None = None,
    lease_seconds: float = 5.0,
    acquire_timeout: float | None = 0.0,
    sync: str = DEFAULT_SYNC,
    db_timeout: float = 5.0,
) -> Journal:
    """Open (creating if needed) the journal of (chain_id, sender) and take its lease.

    Args:
        spec: "memory", "postgresql://…" (or "postgres://…"), or a file path, relative to
            `base_dir` unless absolute (SQLite).
        base_dir: where a relative file path is resolved (the config file's directory).
        chain_id: the chain the sender signs for.
        sender: the sending address ("0x…"; stored in lower case).
        holder: this router's name in lease messages; default host:pid:random.
        lease_seconds: PostgreSQL lease length; renew well within it (see `lease_remaining`).
        acquire_timeout: seconds to wait for the lease; 0 = fail at once; None = wait forever
            (a standby).
        sync: SQLite `synchronous` mode: "normal" (default; survives a process crash, may lose
            the last commits on an OS crash or power loss) or "full" (an fsync per commit:
            survives both, ~20x slower here; see DEFAULT_SYNC).
        db_timeout: PostgreSQL: statement timeout and connect timeout, seconds.

    Raises:
        InvalidRecord: an argument is out of range.
        LeaseHeld: another holder has the sender and did not let go within `acquire_timeout`.
        JournalCorrupt: the file/tables are unreadable, not ours, or of another schema version.
        JournalUnavailable: the database cannot be reached, created or written.
    """
    chain_id = check_chain_id(chain_id)
    key = normalize_sender(sender)
    if sync not in SYNC_MODES:
        raise InvalidRecord(f"journal sync {sync!r:.20}: expected one of {SYNC_MODES}")
    if not (isinstance(lease_seconds, int | float) and 0 < lease_seconds <= 3600):
        raise InvalidRecord(f"journal lease_seconds {lease_seconds!r:.20}: expected 0 < s <= 3600")
    if acquire_timeout is not None and not (
        isinstance(acquire_timeout, int | float) and acquire_timeout >= 0
    ):
        raise InvalidRecord(f"journal acquire_timeout {acquire_timeout!r:.20}: expected >= 0 or None")
    if not (isinstance(db_timeout, int | float) and 0 < db_timeout <= 600):
        raise InvalidRecord(f"journal db_timeout {db_timeout!r:.20}: expected 0 < s <= 600")
    if not isinstance(spec, str) or not spec:
        raise InvalidRecord("journal spec must be 'memory', a file path or a postgresql:// DSN")
    name = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    if spec == "memory":
        from ._memory import MemoryJournal

        return MemoryJournal()
    if spec.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is only needed where PostgreSQL is configured.
        from ._postgres import PostgresJournal

        return PostgresJournal(
            spec,
            chain_id=chain_id,
            sender=key,
            holder=name,
            lease_seconds=float(lease_seconds),
            acquire_timeout=acquire_timeout,
            db_timeout=float(db_timeout),
        )
    from ._sqlite import SqliteJournal

    path = Path(spec)
    if not path.is_absolute():
        path = Path(base_dir) / path
    return SqliteJournal(
        path, chain_id=chain_id, sender=key, holder=name, acquire_timeout=acquire_timeout,
        sync=sync,
    )
