"""The intent journal's contract on all three backends, and SQLite's file, lock and durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from journal_support import CHAIN, SENDER, h, row, sig, start_writer

from router.journal import (
    IntentRow,
    InvalidRecord,
    Journal,
    JournalClosed,
    JournalCorrupt,
    JournalUnavailable,
    LeaseHeld,
    open_journal,
)

# The real-PostgreSQL fixtures (postgres, pg_dsn).
pytest_plugins = ["postgres_support"]

Opener = Callable[..., Journal]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Opener]:
    """(name, open(**kw)): opens the same journal again on each call (memory: a new one)."""
    if request.param == "memory":
        spec = "memory"
    elif request.param == "sqlite":
        spec = "journal.sqlite"
    else:
        spec = request.getfixturevalue("pg_dsn")
    opened: list[Journal] = []

    def _open(**kw: object) -> Journal:
        args: dict[str, object] = {"chain_id": CHAIN, "sender": SENDER}
        args.update(kw)
        j = open_journal(spec, base_dir=tmp_path, **args)  # type: ignore[arg-type]
        opened.append(j)
        return j

    request.addfinalizer(lambda: [j.close() for j in opened])
    return request.param, _open


def _full_rows() -> tuple[list[IntentRow], list]:  # type: ignore[type-arg]
    rows = [
        row(0),
        row(1, state="landed", landed_block=2**40, landed_block_hash=h("b"),
            landed_tx_hash=h("tx-1-bump")),
        row(2, state="failed", error="insufficient funds for gas * price + value: ünïcode"),
        row(3, state="replaced", intent={"nested": {"list": [1, "x", None, True]}, "big": 2**200}),
        row(4, state="cancelled", filler=True, nonce=2**63 - 1),
    ]
    sigs = [sig(0)] + [sig(1, kind) for kind in ("first", "bump", "resign", "move", "cancel",
                                                  "filler", "standby")]
    sigs.append(sig(3, max_fee_per_gas=2**256 - 1, max_priority_fee_per_gas=0))
    return rows, sigs


def test_round_trip_every_field(backend: tuple[str, Opener]) -> None:
    name, open_ = backend
    j = open_.__call__()
    assert j.durable == (name != "memory")
    rows, sigs = _full_rows()
    j.write(rows[:3], sigs[:4])
    j.write(rows[3:], sigs[4:])
    j.meta_set("genesis", "0x" + "cd" * 32)
    j.meta_set("genesis", "0x" + "ef" * 32)
    if name != "memory":
        j.close()
        j = open_()
    assert j.load() == rows
    assert [r.intent_id for r in j.load()] == [f"id-{i}" for i in range(5)]
    for r in rows:
        assert j.get(r.intent_id) == r
    assert j.get("nope") is None
    assert j.signatures("id-1") == [s for s in sigs if s.intent_id == "id-1"]
    assert j.signatures("id-4") == []
    assert j.all_signatures() == sigs
    assert j.meta_get("genesis") == "0x" + "ef" * 32
    assert j.meta_get("absent") is None


def test_upsert_keeps_first_write_order(backend: tuple[str, Opener]) -> None:
    _, open_ = backend
    j = open_()
    j.write([row(5), row(3), row(9)])
    landed = row(3, state="landed", landed_block=7, landed_block_hash=h("b7"),
                 landed_tx_hash=h("tx-3"))
    j.write([landed, row(1)])
    assert [r.intent_id for r in j.load()] == ["id-5", "id-3", "id-9", "id-1"]
    assert j.get("id-3") == landed


def test_failed_write_leaves_nothing(backend: tuple[str, Opener]) -> None:
    _, open_ = backend
    j = open_()
    j.write([row(0)], [sig(0)])
    # The rows and the first signatures are valid; the last signature names an unknown intent,
    # which is found inside the transaction after the upserts ran: all of it must roll back.
    with pytest.raises(InvalidRecord, match="id-77"):
        j.write([row(0, state="landed"), row(1), row(2)], [sig(1), sig(2), sig(77)])
    assert j.load() == [row(0)]
    assert j.all_signatures() == [sig(0)]


def test_duplicate_signature_is_ignored(backend: tuple[str, Opener]) -> None:
    _, open_ = backend
    j = open_()
    j.write([row(0)], [sig(0), sig(0)])
    j.write([row(0)], [sig(0), sig(0, "bump")])
    # Same hash, other content: the first stored wins (a hash names one transaction).
    j.write([], [sig(0, raw=b"\x02other")])
    assert j.signatures("id-0") == [sig(0), sig(0, "bump")]


@pytest.mark.parametrize(
    ("rows", "sigs", "match"),
    [
        ([row(0, state="mined")], [], "state 'mined'"),
        ([row(0, tx_hash=b"\x00" * 31)], [], "tx_hash must be 32 bytes"),
        ([row(0, nonce=-1)], [], "nonce -1"),
        ([row(0, landed_block_hash=b"x")], [], "landed_block_hash"),
        ([row(0, intent={"x": b"bytes"})], [], "not JSON-serialisable"),
        ([row(0, intent_id="")], [], "intent_id must be a non-empty"),
        ([row(0)], [sig(0, kind="second")], "kind 'second'"),
        ([row(0)], [sig(0, max_fee_per_gas=2**256)], "max_fee_per_gas"),
        ([row(0)], [sig(0, raw=b"")], "raw must be non-empty"),
    ],
)
def test_bad_record_is_refused(
    backend: tuple[str, Opener], rows: list[IntentRow], sigs: list, match: str  # type: ignore[type-arg]
) -> None:
    _, open_ = backend
    j = open_()
    with pytest.raises(InvalidRecord, match=match):
        j.write(rows, sigs)
    assert j.load() == [] and j.all_signatures() == []


def test_closed_journal_refuses(backend: tuple[str, Opener]) -> None:
    _, open_ = backend
    j = open_()
    j.close()
    j.close()  # idempotent
    with pytest.raises(JournalClosed):
        j.write([row(0)])
    with pytest.raises(JournalClosed):
        j.load()
    assert j.lease_remaining() == 0.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sync": "off"}, "sync 'off'"),
        ({"sender": "a/b"}, "sender"),
        ({"chain_id": 0}, "chain_id"),
        ({"acquire_timeout": -1}, "acquire_timeout"),
        ({"lease_seconds": 0}, "lease_seconds"),
    ],
)
def test_bad_open_arguments(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"chain_id": CHAIN, "sender": SENDER}
    args.update(kw)
    with pytest.raises(InvalidRecord, match=match):
        open_journal("j.sqlite", base_dir=tmp_path, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_one_database_holds_several_senders(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = "j.sqlite" if kind == "sqlite" else request.getfixturevalue("pg_dsn")
    other = "0x" + "CD" * 20
    a = open_journal(spec, base_dir=tmp_path, chain_id=CHAIN, sender=SENDER)
    b = open_journal(spec, base_dir=tmp_path, chain_id=CHAIN, sender=other)
    c = open_journal(spec, base_dir=tmp_path, chain_id=1, sender=SENDER)
    try:
        a.write([row(0)], [sig(0)])
        b.write([row(0, state="failed"), row(1)])
        a.meta_set("k", "a")
        c.meta_set("k", "c")
        assert a.load() == [row(0)]
        assert b.load() == [row(0, state="failed"), row(1)]
        assert c.load() == [] and c.all_signatures() == []
        assert (a.meta_get("k"), b.meta_get("k"), c.meta_get("k")) == ("a", None, "c")
        # The sender key is case-insensitive for 0x addresses.
        with pytest.raises(LeaseHeld):
            open_journal(spec, base_dir=tmp_path, chain_id=CHAIN, sender="0x" + SENDER[2:].upper())
    finally:
        for j in (a, b, c):
            j.close()


# --- SQLite ---------------------------------------------------------------------------------


def _sqlite(tmp_path: Path, **kw: object) -> Journal:
    args: dict[str, object] = {"chain_id": CHAIN, "sender": SENDER}
    args.update(kw)
    return open_journal("j.sqlite", base_dir=tmp_path, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1), (None, 1)])
def test_sqlite_is_wal_with_the_chosen_sync(tmp_path: Path, sync: str | None, level: int) -> None:
    j = _sqlite(tmp_path, **({} if sync is None else {"sync": sync}))
    try:
        db = j._db  # type: ignore[attr-defined]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        j.close()


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    """Pending intents are trading intentions no node has seen yet: the journal, its WAL and its
    lock file are readable by their owner only, whatever the umask."""
    old = os.umask(0o022)
    try:
        j = _sqlite(tmp_path)
        try:
            j.write([row(1)], [sig(1)])
            files = [p for p in tmp_path.iterdir() if p.is_file()]
            assert {p.suffix for p in files} >= {".sqlite", ".lock"}
            assert any(p.name.endswith("-wal") for p in files)
            for p in files:
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
        finally:
            j.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sqlite_survives_sigkill(tmp_path: Path, sync: str) -> None:
    n = 50
    child = start_writer("j.sqlite", tmp_path, n, sync=sync)
    child.send_signal(signal.SIGKILL)
    child.wait()
    j = _sqlite(tmp_path, acquire_timeout=5)
    try:
        assert j.load() == [row(i) for i in range(n)]
        assert j.all_signatures() == [sig(i) for i in range(n)]
    finally:
        j.close()


def test_sqlite_second_opener_gets_lease_held(tmp_path: Path) -> None:
    first = _sqlite(tmp_path, holder="router-a")
    with pytest.raises(LeaseHeld, match="router-a") as info:
        _sqlite(tmp_path, holder="router-b")
    assert info.value.holder.startswith("router-a") and info.value.expires_in is None
    started = time.monotonic()
    with pytest.raises(LeaseHeld):
        _sqlite(tmp_path, acquire_timeout=0.3)
    assert time.monotonic() - started >= 0.3
    # A waiter gets it once the holder closes.
    timer = threading.Timer(0.2, first.close)
    timer.start()
    second = _sqlite(tmp_path, acquire_timeout=10)
    try:
        assert second.fencing_token > first.fencing_token
    finally:
        timer.join()
        second.close()


def test_sqlite_lock_is_freed_by_sigkill(tmp_path: Path) -> None:
    child = start_writer("j.sqlite", tmp_path, 1)
    try:
        with pytest.raises(LeaseHeld, match="child"):
            _sqlite(tmp_path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    j = _sqlite(tmp_path)  # at once: no stale lock
    try:
        assert j.load() == [row(0)]
    finally:
        j.close()


def test_sqlite_garbage_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite").write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(JournalCorrupt, match=str(tmp_path / "j.sqlite")):
        _sqlite(tmp_path)


def test_sqlite_truncated_file_is_corrupt(tmp_path: Path) -> None:
    j = _sqlite(tmp_path)
    j.write([row(i, intent={"pad": "x" * 3000}) for i in range(100)])
    j.close()
    path = tmp_path / "j.sqlite"
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(JournalCorrupt, match=str(path)):
        j = _sqlite(tmp_path)
        try:
            j.load()
        finally:
            j.close()


def test_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "j.sqlite")
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(JournalCorrupt, match="not a Sentinel router journal"):
        _sqlite(tmp_path)


def test_sqlite_schema_version_mismatch(tmp_path: Path) -> None:
    _sqlite(tmp_path).close()
    db = sqlite3.connect(tmp_path / "j.sqlite")
    db.execute("UPDATE journal_info SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(JournalCorrupt, match="schema version '99'"):
        _sqlite(tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [("intent", "{not json", "id-1"), ("state", "mined", "id-1"), ("tx_hash", b"short", "id-1")],
)
def test_sqlite_row_that_does_not_decode(
    tmp_path: Path, column: str, value: object, match: str
) -> None:
    j = _sqlite(tmp_path)
    j.write([row(0), row(1)])
    j.close()
    db = sqlite3.connect(tmp_path / "j.sqlite")
    db.execute(f"UPDATE intents SET {column} = ? WHERE intent_id = 'id-1'", (value,))
    db.commit()
    db.close()
    j = _sqlite(tmp_path)
    try:
        assert j.get("id-0") == row(0)
        with pytest.raises(JournalCorrupt, match=match):
            j.load()
    finally:
        j.close()


def test_sqlite_directory_missing_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(JournalUnavailable, match="no-such-dir"):
        open_journal("no-such-dir/j.sqlite", base_dir=tmp_path, chain_id=CHAIN, sender=SENDER)
