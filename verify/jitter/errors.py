"""Errors of `verify jitter`: bad options from the user, or a requested loop that cannot be built."""

from __future__ import annotations

from verify.errors import MalformedInput, VerifyError

__all__ = ["InvalidJitterOption", "LoopUnavailable"]


class InvalidJitterOption(MalformedInput):
    """A CPU the process may not use, a duration or threshold out of range (exit 2)."""


class LoopUnavailable(VerifyError):
    """`--loop compiled` was asked for but no C compiler or cffi is available here (exit 2)."""

    exit_code = 2
