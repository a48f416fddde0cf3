"""Bring every pinned input into the content-addressed cache from the first source that has
it (or refuse, naming it); the sources are described in `reproducible.sources`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from reproducible import apt as apt_mod
from reproducible import pypi
from reproducible.cache import Cache
from reproducible.errors import ArtifactMismatch, FetchError, InputUnavailable, OfflineMiss
from reproducible.lock import DebPin, Lock, WheelPin
from reproducible.sources import (
    InputsDir,
    Pin,
    UrlTemplate,
    unpack_inputs_archive,
    url_templates,
)

log = logging.getLogger(__name__)
P = TypeVar("P", DebPin, WheelPin)


@dataclass(frozen=True)
class Fetched:
    """Paths (inside the cache) of every pinned input, verified against the lock."""

    debs: dict[str, Path]  # by package name
    wheels: dict[str, Path]  # by wheel filename


def make_apt(lock: Lock, cache: Cache) -> apt_mod.Apt:
    sources = apt_mod.derive_sources(lock.debian.suites)
    return apt_mod.Apt(cache.root / "apt", sources, lock.debian.architecture)


def fetch_all(
    lock: Lock,
    cache: Cache,
    *,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
    inputs: Path | None = None,
    archives: list[UrlTemplate] | None = None,
) -> Fetched:
    """Every deb and wheel of the lock, tried from each source in turn until one serves bytes
    with the pinned sha256: the cache, the `inputs` directory, the registries (apt, pip), then
    the `archives` (default: `sources.url_templates()`). `offline` stops after `inputs`.

    Raises:
        ArtifactMismatch: a cached artifact does not hash to its pin; or the registry's bytes do
            not and no other source is configured.
        OfflineMiss: `offline` and an input is in neither the cache nor `inputs`.
        VersionVanished / FetchError: the registry cannot provide a pin and no other source is
            configured.
        InputUnavailable: no configured source has an input (every source's answer is named).
    """
    got: dict[str, Path] = {}  # by sha256
    pins: list[Pin] = [*lock.debs, *lock.wheels]
    missing = []
    for pin in pins:
        p = cache.get(pin.label, pin.sha256)
        if p is None:
            missing.append(pin)
        else:
            got[pin.sha256] = p
    tried: dict[str, list[str]] = {pin.sha256: [f"cache {cache.root}: absent"] for pin in missing}
    if missing and inputs is not None:
        with ExitStack() as stack:
            root = inputs
            if inputs.is_file():  # an oci-archive: only the blobs still missing are unpacked
                root = unpack_inputs_archive(inputs, {p.sha256 for p in missing},
                                             stack.enter_context(cache.scratch("inputs-")))
            files = InputsDir(root).files()
            for pin in list(missing):
                src = files.get(pin.sha256)
                if src is None or not src.is_file():
                    tried[pin.sha256].append(f"--inputs {inputs}: absent")
                    continue
                try:
                    got[pin.sha256] = cache.put(pin.label, pin.sha256, src,
                                                where=f"--inputs {inputs}")
                    missing.remove(pin)
                except ArtifactMismatch as e:
                    tried[pin.sha256].append(str(e))
    if offline and missing:
        where = f"the cache ({cache.root})" + (f" or --inputs {inputs}" if inputs else "")
        # Each input with its sha256 and, when --inputs had bytes for it, why they were refused.
        raise OfflineMiss(f"--offline, but not in {where}: " + "; ".join(
            f"{p.label} (sha256 {p.sha256})" + "".join(f": {t}" for t in tried[p.sha256][1:])
            for p in missing))
    if archives is None:
        archives = url_templates()
    others = inputs is not None or bool(archives)
    if missing:
        missing = _from_registries(lock, cache, missing, got, tried, progress,
                                   reraise=not others)
    for archive in archives:
        if not missing:
            break
        if progress:
            progress(f"{archive.label} ({len(missing)} inputs)")
        with cache.scratch("archive-") as tmp:
            for pin in list(missing):
                dest = tmp / pin.sha256
                try:
                    archive.download(pin, dest)
                    got[pin.sha256] = cache.put(pin.label, pin.sha256, dest,
                                                where=archive.url(pin))
                    missing.remove(pin)
                except (FetchError, ArtifactMismatch) as e:
                    tried[pin.sha256].append(f"{archive.label}: {e}")
    if missing:
        raise InputUnavailable(
            "no source has " + "; ".join(
                f"{p.label} (sha256 {p.sha256}): " + "; ".join(tried[p.sha256]) for p in missing)
        )
    return Fetched({d.name: got[d.sha256] for d in lock.debs},
                   {w.filename: got[w.sha256] for w in lock.wheels})


def _from_registries(lock: Lock, cache: Cache, missing: list[Pin], got: dict[str, Path],
                     tried: dict[str, list[str]], progress: Callable[[str], None] | None, *,
                     reraise: bool) -> list[Pin]:
    """Try apt and pip for `missing`; what they cannot serve is returned (or, with `reraise`,
    their error is raised as before there were other sources)."""
    debs = [p for p in missing if isinstance(p, DebPin)]
    wheels = [p for p in missing if isinstance(p, WheelPin)]
    left: list[Pin] = []
    if debs:
        if progress:
            progress(f"apt-get download ({len(debs)} packages)")
        apt = make_apt(lock, cache)
        with cache.locked("apt"), cache.scratch("apt-") as tmp:
            def apt_batch(batch: list[DebPin]) -> None:
                res = apt.download([(d.name, d.version) for d in batch], tmp)
                for d in batch:
                    got[d.sha256] = cache.put(d.label, d.sha256, res[(d.name, d.version)])

            left += _in_batches(debs, apt_batch, "the Debian mirror", tried, reraise=reraise)
    if wheels:
        if progress:
            progress(f"pip download ({len(wheels)} wheels)")
        with cache.scratch("pip-") as tmp:
            def pip_batch(batch: list[WheelPin]) -> None:
                res = pypi.download(lock.python, batch, tmp)
                for w in batch:
                    got[w.sha256] = cache.put(w.label, w.sha256, res[w.filename])

            left += _in_batches(wheels, pip_batch, "the package index", tried, reraise=reraise)
    return left


def _in_batches(pins: list[P], download: Callable[[list[P]], None], source: str,
                tried: dict[str, list[str]], *, reraise: bool) -> list[P]:
    """One registry call for all pins; when it fails (a version left the registry), one call
    each, so the rest still come from it. Returns the pins it could not serve (their errors noted
    in `tried`), or with `reraise` raises the first error as before there were other sources."""
    left: list[P] = []
    batches = [pins]
    for batch in batches:
        try:
            download(batch)
        except (FetchError, ArtifactMismatch) as e:
            if reraise:
                raise
            if len(batch) > 1:
                batches.extend([p] for p in batch)
                continue
            tried[batch[0].sha256].append(f"{source}: {e}")
            left.append(batch[0])
    return left


def refresh(lock: Lock, cache: Cache) -> Lock:
    """Re-resolve the lock's roots to the registries' current versions (for `nox -s lock`).

    Raises:
        FetchError: a root cannot be resolved.
    """
    apt = make_apt(lock, cache)
    debs: list[DebPin] = []
    with cache.locked("apt"):
        apt.update()
        for role, roots in (("kernel", lock.debian.kernel), ("bootstrap", lock.debian.bootstrap),
                            ("runtime", lock.debian.runtime)):
            for name in roots:
                rec = apt.candidate(name)
                # A kernel metapackage carries no files: pin the versioned image it points at.
                if role == "kernel" and name.startswith("linux-image-") and rec.depends:
                    image = [d for d in rec.depends if d.startswith("linux-image-")]
                    if len(image) == 1:
                        rec = apt.candidate(image[0])
                debs.append(DebPin(rec.name, rec.version, rec.sha256, role))
    with cache.scratch("resolve-") as tmp:
        wheels = pypi.resolve(lock.python, tmp)
        for w in wheels:
            cache.put(w.label, w.sha256, tmp / w.filename)
    if not wheels:
        raise FetchError("pip resolved no wheels")
    return lock.with_pins(debs, wheels)
