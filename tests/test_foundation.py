"""The foundation's own checks: packages import, the bench harness computes what it says."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from _harness import compare, percentile  # noqa: E402


@pytest.mark.parametrize("name", ["verify", "reproducible", "enclave", "router"])
def test_packages_import(name: str) -> None:
    assert importlib.import_module(name).__name__ == name


def test_percentile_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_compare_ratio() -> None:
    rec = compare("x", [2.0, 2.0, 2.0], "base", [1.0, 1.0, 1.0])
    assert rec.ratio == 2.0 and rec.baseline_p50 == 1.0


def test_anvil_answers(anvil) -> None:  # type: ignore[no-untyped-def]
    assert int(str(anvil.rpc("eth_chainId")), 16) == 31337
