"""Errors of `verify audit`: only the caller's input can be malformed; the host's files never are."""

from __future__ import annotations

from verify.errors import MalformedInput

__all__ = ["MalformedHostTree", "MalformedCpuList"]


class MalformedHostTree(MalformedInput):
    """`--root` is neither a captured directory nor a readable capture tar."""


class MalformedCpuList(MalformedInput):
    """A CPU list given by the user (`--cpus`) does not parse."""
