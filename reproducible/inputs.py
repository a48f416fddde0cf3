"""`python -m reproducible inputs export DIR`: every pinned input, with a manifest, in one directory.

A release publishes that directory next to its measurements, so the build stays reproducible after
the pinned versions leave the registries: `build --inputs DIR` (or a URL template pointing at a copy
of it) serves every input by its sha256.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reproducible.cache import Cache, sha256_file
from reproducible.errors import BuildError
from reproducible.fetch import fetch_all
from reproducible.lock import Lock
from reproducible.sources import MANIFEST, Pin, export_name, kind

SCHEMA = 1


@dataclass(frozen=True)
class Exported:
    manifest: Path
    count: int
    size: int


def export_inputs(lock: Lock, lock_path: Path, cache: Cache, dest: Path, *,
                  offline: bool = False, inputs: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> Exported:
    """Fetch every pin (as a build does) and copy it into `dest` with `manifest.json`.

    Raises:
        BuildError: an input cannot be fetched (see `fetch_all`), or `dest` cannot be written.
    """
    fetch_all(lock, cache, offline=offline, inputs=inputs, progress=progress)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {dest}: {e.strerror}") from e
    entries: list[dict[str, object]] = []
    total = 0
    pins: list[Pin] = [*lock.debs, *lock.wheels]
    for pin in pins:
        src = cache.get(pin.label, pin.sha256)
        assert src is not None  # fetch_all put it there
        name = export_name(pin)
        target = dest / name
        if not (target.is_file() and sha256_file(target) == pin.sha256):
            tmp = dest / f".{name}.part"
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise BuildError(f"cannot write {target}: {e.strerror}") from e
        size = target.stat().st_size
        total += size
        entries.append({"kind": kind(pin), "name": pin.name, "version": pin.version,
                        "filename": name, "sha256": pin.sha256, "size": size})
    doc = {"schema": SCHEMA, "lock_sha256": sha256_file(lock_path),
           "source_date_epoch": lock.source_date_epoch,
           "inputs": sorted(entries, key=lambda e: (str(e["kind"]), str(e["name"]), str(e["filename"])))}
    manifest = dest / MANIFEST
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Exported(manifest, len(entries), total)
