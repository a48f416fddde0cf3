"""One atheris (libFuzzer) run of one target: `python tests/fuzz/atheris_main.py TARGET [libFuzzer args]`.

Started by `python -m fuzz` (the `nox -s fuzz` driver), one process per target; the target's
modules are instrumented for coverage. A finding makes libFuzzer write `crash-<sha1>` (or
`timeout-`, `oom-`) under -artifact_prefix and exit non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `fuzz` and the supports

from fuzz.targets import TARGETS  # noqa: E402


def main() -> None:
    target = TARGETS[sys.argv.pop(1)]
    with atheris.instrument_imports(include=list(target.modules)):
        for module in target.modules:
            __import__(module)
    target.seeds()  # build caches (keys, files) before the clock starts
    atheris.Setup(sys.argv, target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
