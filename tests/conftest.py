from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import Anvil, start_anvil
from hypothesis import settings

# CI must be reproducible: the same examples on every run (a red CI blocks landing, so a new
# counterexample is found locally, where the random profile runs, and pinned as a test).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture
def asset() -> object:
    """asset(name) -> Path of a checked-in binary test input under tests/assets/."""

    def _asset(name: str) -> Path:
        path = ASSETS / name
        if not path.exists():
            raise FileNotFoundError(path)
        return path

    return _asset


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """A fresh real anvil on a free loopback port, stopped after the test."""
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def paused_anvil() -> Iterator[Anvil]:
    """A fresh anvil that mines only on `evm_mine` (what is pending stays pending)."""
    node = start_anvil(args=["--no-mining"])
    try:
        yield node
    finally:
        node.stop()
