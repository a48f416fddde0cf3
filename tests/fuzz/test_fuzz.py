"""Bounded fuzzing of every hostile-input parser, and replay of the inputs fuzzing has kept.

Property (tests/fuzz/targets.py): any input parses or raises the module's own documented error;
never another exception, never a hang past `HANG_BOUND_S`, never more than the target's peak
allocation. hypothesis mutates real seeds here for a few seconds per target (derandomized under
CI=true: tests/conftest.py's "ci" profile); `nox -s fuzz -- --seconds N` runs atheris at length and
adds what it finds to tests/assets/fuzz/<target>/, which `test_corpus_input` replays one file a test.
Inputs that crash today are listed in tests/assets/fuzz/known_crashes.json with their finding and
expected to fail (strict: the fix must remove the entry).
"""

from __future__ import annotations

import json
import os
import signal
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutate import inputs
from fuzz.targets import CORPUS, TARGETS, Target, corpus_files

#: No single input may take longer than this (a hang bound, not a speed target).
HANG_BOUND_S = 10.0
#: Examples per target in `nox -s tests`: 2-4 s each on the idle 2-core machine (SENTINEL_FUZZ_SCALE
#: multiplies them).
EXAMPLES = {"wire": 400, "attestation": 400, "cose": 300, "eif": 250, "policy": 300, "cms": 200}
_SCALE = float(os.environ.get("SENTINEL_FUZZ_SCALE", "1"))
#: "target/file" -> {"raises": exception name, "finding": what is wrong}: inputs that crash today.
KNOWN: dict[str, dict[str, str]] = json.loads((CORPUS / "known_crashes.json").read_text())
_BUILTIN_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError,
                   "IndexError": IndexError, "RecursionError": RecursionError,
                   "OverflowError": OverflowError, "AttributeError": AttributeError}  # fmt: skip


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no parser's `except Exception` swallows it."""


@contextmanager
def hang_bound(seconds: float = HANG_BOUND_S) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"input took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fuzz(target: Target, examples: int) -> None:
    strategy = inputs(target.seeds(), target.tokens, target.max_len)

    @settings(
        max_examples=max(1, int(examples * _SCALE)),
        deadline=None,  # timing is not the property; the hang bound is
        suppress_health_check=list(HealthCheck),
        database=None,  # found inputs are kept in tests/assets/fuzz/, not a local cache
    )
    @given(data=strategy)
    def run(data: bytes) -> None:
        with hang_bound():
            target.run(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str) -> None:
    _fuzz(TARGETS[name], EXAMPLES[name])


def _corpus() -> list[object]:
    params: list[object] = []
    for name in sorted(TARGETS):
        for path in corpus_files(name):
            key = f"{name}/{path.name}"
            marks = []
            if key in KNOWN:
                known = KNOWN[key]
                raises = _BUILTIN_ERRORS[known["raises"]]
                marks = [pytest.mark.xfail(strict=True, raises=raises, reason=known["finding"])]
            params.append(pytest.param(name, path, id=key, marks=marks))
    return params


@pytest.mark.parametrize(("name", "path"), _corpus())
def test_corpus_input(name: str, path: Path) -> None:
    target = TARGETS[name]
    tracemalloc.start()
    try:
        with hang_bound():
            target.run(path.read_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= target.peak_mib << 20, f"peak allocation {peak >> 20} MiB"


def test_known_crashes_name_committed_inputs() -> None:
    for key, known in KNOWN.items():
        assert (CORPUS / key).is_file(), key
        assert known["raises"] in _BUILTIN_ERRORS and known["finding"].strip(), key


@pytest.mark.parametrize("name", sorted(set(TARGETS) - {"cose"}))
def test_a_seed_parses(name: str) -> None:
    """Seeds must get deep: at least one parses cleanly (cose's need a signature we lack)."""
    target = TARGETS[name]
    errors = []
    for seed in target.seeds():
        try:
            target.parse(seed)
            return
        except target.allowed() as e:
            errors.append(str(e))
    pytest.fail(f"no {name} seed parses: {errors}")


def test_property_fails_on_a_foreign_exception() -> None:
    def parse(data: bytes) -> None:
        if data == b"boom":
            raise KeyError("not the documented error")
        raise ValueError("documented")

    target = Target("t", parse, lambda: (ValueError,), lambda: [b"x"], (), ())
    target.run(b"other")  # the documented error passes
    with pytest.raises(KeyError):
        target.run(b"boom")


def test_hang_bound_interrupts_a_loop() -> None:
    with pytest.raises(Hang), hang_bound(0.05):
        while True:
            pass


@given(st.just(b""))
def test_empty_input_everywhere(data: bytes) -> None:
    for target in TARGETS.values():
        target.run(data)
