"""Named checks run in order, either stopping at the first failure or collecting every outcome.

Library calls raise at the first failure (`fail_fast=True`); reports and the CLI collect a
`CheckResult` for every check so a person or CI sees each one by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from verify.errors import MalformedInput, VerifyError

__all__ = ["FAILED", "CheckResult", "CheckRunner", "exit_code", "results_json"]

T = TypeVar("T")


class _Failed:
    def __repr__(self) -> str:
        return "FAILED"


#: What `CheckRunner.run` returns for a check that failed (when not failing fast).
FAILED: Final = _Failed()


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check; `error` is None when it passed."""

    name: str
    error: VerifyError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CheckRunner:
    fail_fast: bool
    results: list[CheckResult] = field(default_factory=list)

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> T | _Failed:
        """Run one check; its `VerifyError` is raised (fail_fast) or recorded under `name`."""
        try:
            out = fn(*args)
        except VerifyError as e:
            if self.fail_fast:
                raise
            self.results.append(CheckResult(name, e))
            return FAILED
        self.results.append(CheckResult(name))
        return out

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)


def exit_code(results: list[CheckResult] | tuple[CheckResult, ...]) -> int:
    """0 all passed; 2 when some input was malformed; else 1 (also for an empty list)."""
    errors = [r.error for r in results if r.error is not None]
    if not errors:
        return 0 if results else 1
    return 2 if any(isinstance(e, MalformedInput) for e in errors) else 1


def results_json(results: list[CheckResult] | tuple[CheckResult, ...]) -> list[dict[str, Any]]:
    """The `checks` array of `--json` outputs."""
    return [
        {
            "name": r.name,
            "ok": r.ok,
            "error": None if r.error is None else type(r.error).__name__,
            "message": None if r.error is None else r.error.diagnostics(),
        }
        for r in results
    ]
