from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import Anvil, start_anvil

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
