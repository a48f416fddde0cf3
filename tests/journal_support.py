"""Sample rows and a child-process writer for the journal tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from router.journal import IntentRow, SignatureRow

SENDER = "0x" + "ab" * 20
CHAIN = 31337
ROOT = Path(__file__).resolve().parent.parent


def h(tag: str) -> bytes:
    """A distinct 32-byte hash per tag."""
    return hashlib.sha256(tag.encode()).digest()


def row(i: int, **kw: object) -> IntentRow:
    fields: dict[str, object] = {
        "intent_id": f"id-{i}",
        "intent": {"to": "0x" + "11" * 20, "value": i, "data": "0x", "gas": 21_000, "id": f"id-{i}"},
        "nonce": i,
        "state": "pending",
        "tx_hash": h(f"tx-{i}"),
    }
    fields.update(kw)
    return IntentRow(**fields)  # type: ignore[arg-type]


def sig(i: int, kind: str = "first", **kw: object) -> SignatureRow:
    fields: dict[str, object] = {
        "intent_id": f"id-{i}",
        "tx_hash": h(f"tx-{i}-{kind}"),
        "raw": b"\x02" + h(f"raw-{i}-{kind}"),
        "nonce": i,
        "max_fee_per_gas": 30_000_000_000 + i,
        "max_priority_fee_per_gas": 1_000_000_000,
        "kind": kind,
    }
    fields.update(kw)
    return SignatureRow(**fields)  # type: ignore[arg-type]


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from journal_support import row, sig, SENDER, CHAIN
from router.journal import open_journal
j = open_journal({spec!r}, base_dir=Path({base!r}), chain_id=CHAIN, sender=SENDER,
                 holder="child", lease_seconds={lease!r}, sync={sync!r})
for i in range({n!r}):
    j.write([row(i)], [sig(i)])
    if {renew!r}:
        j.renew()
print("written", flush=True)
while True:
    time.sleep(0.1)
    if {renew!r}:
        j.renew()
"""


def start_writer(
    spec: str, base: Path, n: int, *, sync: str = "full", lease: float = 5.0, renew: bool = False
) -> subprocess.Popen[str]:
    """A child process that writes rows id-0..id-{n-1} (one write each), prints "written", and
    keeps the journal open (renewing if asked) until killed."""
    code = _CHILD.format(
        tests=str(Path(__file__).parent), spec=spec, base=str(base), n=n, sync=sync,
        lease=lease, renew=renew,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "written":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"writer child failed: {line!r} {err[-2000:]}")
    return proc
