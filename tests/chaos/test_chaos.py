"""The bounded chaos run `nox -s tests` includes (select it with `-m chaos`).

While the router has no durable journal (the config refuses `journal`), restarts are expected to
lose or duplicate intents: the test then runs as a non-strict xfail, and reports what it found.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import ChaosConfig, journal_supported, run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]


def test_bounded_chaos_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    supported, why = journal_supported(tmp_path)
    if not supported:
        request.applymarker(pytest.mark.xfail(
            strict=False, reason=f"no durable journal in this router yet ({why})"))
    seed = int(os.environ.get("SENTINEL_CHAOS_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    result = run_chaos(ChaosConfig.bounded(seed))
    print(result.line())
    for example in result.examples:
        print("  " + example)
    if not supported and not result.ok:
        # what today's router does, in the summary line (-rx) rather than only in captured output
        pytest.xfail(f"no durable journal ({why[:60]}...); found: {result.line()}")
    assert result.error is None, result.error
    assert result.faults_planned > 0 and sum(
        result.faults.get(k, 0) for k in ("router", "signer", "anvil", "reorg")) > 0
    assert (result.duplicates, result.lost, result.stalled) == (0, 0, 0), result.line()
    assert (result.unknown_status, result.mismatched, result.unexplained) == (0, 0, 0), (
        result.line())
    assert not result.nonce_gap, result.examples
