"""`nox -s fuzz -- [--seconds N] [--target NAME ...] [--keep-corpus]`: atheris at length.

For each target: seed a working corpus (build/fuzz/<target>/) from the target's seeds and the
committed regression inputs (tests/assets/fuzz/<target>/, known crashes left out), run atheris for
N seconds, and copy every crash, timeout or out-of-memory input it finds into
tests/assets/fuzz/<target>/ (where tests/fuzz/test_fuzz.py replays it: a new finding turns
`nox -s tests` red until it is fixed or listed in known_crashes.json). After a finding the run
resumes for the rest of its time. `--keep-corpus` also merges the inputs that reached new coverage
into the committed corpus (libFuzzer -merge=1: only inputs that add coverage).
Exit 1 if anything new was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fuzz.targets import CORPUS, ROOT, TARGETS

HARNESS = Path(__file__).with_name("atheris_main.py")
WORK = ROOT / "build" / "fuzz"
#: libFuzzer's per-input bounds: a hang past TIMEOUT_S seconds or RSS past RSS_MB is a finding.
TIMEOUT_S = 10
RSS_MB = 2048


def _known() -> set[str]:
    return set(json.loads((CORPUS / "known_crashes.json").read_text()))


def _seed(name: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    target = TARGETS[name]
    known = _known()
    for data in target.seeds():
        (work / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
    kept = CORPUS / name
    for path in sorted(kept.iterdir()) if kept.is_dir() else []:
        if f"{name}/{path.name}" not in known:
            shutil.copyfile(path, work / path.name)


def _run(name: str, seconds: float, keep_corpus: bool) -> list[Path]:
    target = TARGETS[name]
    work = WORK / name / "corpus"
    artifacts = WORK / name / "artifacts"
    _seed(name, work)
    artifacts.mkdir(parents=True, exist_ok=True)
    found: list[Path] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 1:
        before = set(artifacts.iterdir())
        proc = subprocess.run(
            [sys.executable, str(HARNESS), name, str(work), f"-max_total_time={int(left)}",
             f"-max_len={target.max_len}", f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_MB}",
             f"-artifact_prefix={artifacts}/", "-print_final_stats=1"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        new = sorted(set(artifacts.iterdir()) - before)
        for artifact in new:
            dest = CORPUS / name / artifact.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact, dest)
            found.append(dest)
            print(f"{name}: FOUND {artifact.name} -> {dest.relative_to(ROOT)}", flush=True)
        if proc.returncode != 0 and not new:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name}: atheris failed (exit {proc.returncode}) without an artifact")
        if proc.returncode == 0:
            break
    if keep_corpus:
        kept = CORPUS / name
        kept.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(HARNESS), name, "-merge=1", str(kept), str(work),
             f"-max_len={target.max_len}", f"-timeout={TIMEOUT_S}"],
            cwd=ROOT, capture_output=True, check=True,
        )  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nox -s fuzz --", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable")
    parser.add_argument("--keep-corpus", action="store_true",
                        help="merge new-coverage inputs into tests/assets/fuzz/<target>/")  # fmt: skip
    args = parser.parse_args(argv)
    found: list[Path] = []
    for name in args.target or sorted(TARGETS):
        t0 = time.monotonic()
        new = _run(name, args.seconds, args.keep_corpus)
        found += new
        print(f"{name}: {time.monotonic() - t0:.0f} s, {len(new)} new finding(s)", flush=True)
    if found:
        print(f"{len(found)} new finding(s) kept under tests/assets/fuzz/: list each in "
              "known_crashes.json (or fix it); tests/fuzz/test_fuzz.py replays them")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
