"""Builder speed: the cpio writer against a plain byte copy, a warm build against one SHA-384 pass.

- cpio: 2,000 files of 16 KiB (32 MiB) from disk through `write_cpio` vs concatenating the same files
  (the floor for any archive writer).
- warm build: `python -m reproducible build` internals with every input cached vs hashing the
  resulting EIF once with SHA-384 (what measuring it must cost anyway). Skipped when the cache lacks
  the pinned inputs: benchmarks never download.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

from _harness import Record, compare
from rich.console import Console

from reproducible.build import BuildOptions, run_build
from reproducible.cache import Cache
from reproducible.cpio import write_cpio
from reproducible.errors import OfflineMiss
from reproducible.fetch import fetch_all
from reproducible.lock import load_lock
from reproducible.tree import Tree


def _ms(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _cpio_records(tmp: Path) -> list[Record]:
    src = tmp / "src"
    src.mkdir()
    files = []
    for i in range(2000):
        p = src / f"f{i:04d}"
        p.write_bytes(os.urandom(16384))
        files.append(p)
    tree = Tree()
    for i, p in enumerate(files):
        tree.add_file(f"d{i % 37}/{p.name}", source=p)
    dest = tmp / "out.cpio"

    def archive() -> None:
        with open(dest, "wb") as f:
            write_cpio(tree, f, mtime=0)

    def concat() -> None:
        with open(dest, "wb") as f:
            for p in files:
                f.write(p.read_bytes())

    archive()
    concat()
    a, b = _ms(archive, 7), _ms(concat, 7)
    return [compare("cpio_write_32MiB_2000_files", a, "concat_same_files", b, unit="ms")]


def _build_records(tmp: Path) -> list[Record]:
    lock = load_lock()
    try:
        fetch_all(lock, Cache(), offline=True)
    except OfflineMiss:
        return []
    console = Console(file=io.StringIO())
    out = tmp / "b"
    result = run_build(BuildOptions(out=out, offline=True), console)

    def build() -> None:
        run_build(BuildOptions(out=out, offline=True), console)

    def sha384_pass() -> None:
        import hashlib

        h = hashlib.sha384()
        with open(result.eif, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)

    b = _ms(build, 3)
    base = _ms(sha384_pass, 3)
    return [compare("warm_build_total", b, "sha384_of_the_eif", base, unit="ms",
                    extra={"eif_bytes": float(result.eif.stat().st_size)})]


def run() -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="bench-build-") as d:
        return _cpio_records(Path(d)) + _build_records(Path(d))
