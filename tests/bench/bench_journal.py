"""The journal's cost on the submit path: `Router.submit` (sign, journal write ahead, first
broadcast accepted by a local anvil) with a SQLite journal, against the same submit with
`journal = "memory"`, interleaved in the same process and run.

Two SQLite records: `synchronous=NORMAL` (the default: WAL, survives a killed router; an OS crash
may drop the last commits) and `synchronous=FULL` (an fsync per write: survives power loss too).
The signer is in-process so that what differs between the two sides is the journal alone.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import Record, compare, tail_extra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from anvil_support import DEV_ADDR_0, DEV_KEY_0, start_anvil  # noqa: E402

N = int(os.environ.get("SENTINEL_BENCH_N", "4000")) // 4
BLOCKS = 8


async def _measure(journal_specs: dict[str, str], tmp: Path, n: int) -> dict[str, list[float]]:
    from enclave.keys import KeyOrigin, SigningKey
    from router.core import Router, RouterConfig
    from router.intent import Intent
    from router.journal import open_journal
    from router.signing import InProcessSigner

    anvil = start_anvil(args=["--no-mining"])
    routers: dict[str, Router] = {}
    try:
        for label, spec in journal_specs.items():
            sync = "full" if label.endswith("full") else "normal"
            journal = open_journal(spec, base_dir=tmp, chain_id=anvil.chain_id, sender=DEV_ADDR_0,
                                   sync=sync)
            cfg = RouterConfig(chain_id=anvil.chain_id, sender=DEV_ADDR_0,
                               rpc_urls=(anvil.rpc_url,), ws_url=anvil.ws_url,
                               presign_replacements=False, rebroadcast_after_seconds=3600,
                               fill_gaps=False)
            routers[label] = Router(cfg, InProcessSigner(SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)),
                                    journal=journal)
        # One sender, one nonce sequence: the routers take turns on their own accounts' view,
        # so each starts from what the chain (pool) says when it is its turn.
        out: dict[str, list[float]] = {k: [] for k in routers}
        per = max(1, n // BLOCKS)
        seq = 0
        for _ in range(BLOCKS):
            for label, router in routers.items():
                if not router._started:
                    await router.start()
                await router.nonces.sync(router.rpcs)
                for i in range(per + 5):
                    seq += 1
                    intent = Intent(to=(0xB0B0_0000 + seq).to_bytes(20, "big"), value=1,
                                    id=f"bench-{seq}")
                    t0 = time.perf_counter_ns()
                    await router.submit(intent)
                    t1 = time.perf_counter_ns()
                    if i >= 5:  # warm-up
                        out[label].append((t1 - t0) / 1000)
            anvil.rpc("evm_mine")  # keep the pool small
        return out
    finally:
        for router in routers.values():
            await router.close()
        anvil.stop()


def run() -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-journal-") as tmp:
        specs = {"memory": "memory", "sqlite-normal": "normal.sqlite",
                 "sqlite-full": "full.sqlite"}
        out = asyncio.run(_measure(specs, Path(tmp), N))
    base = out["memory"]
    return [
        compare("submit -> first broadcast accepted, journal sqlite WAL synchronous=NORMAL",
                out["sqlite-normal"], "submit, journal = memory", base,
                extra=tail_extra(out["sqlite-normal"], base, target=1.3)),
        compare("submit -> first broadcast accepted, journal sqlite WAL synchronous=FULL",
                out["sqlite-full"], "submit, journal = memory", base,
                extra=tail_extra(out["sqlite-full"], base)),
    ]
