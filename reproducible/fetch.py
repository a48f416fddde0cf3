"""Bring every pinned input into the content-addressed cache (or refuse, naming it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reproducible import apt as apt_mod
from reproducible import pypi
from reproducible.cache import Cache
from reproducible.errors import FetchError, OfflineMiss
from reproducible.lock import DebPin, Lock, WheelPin

log = logging.getLogger(__name__)


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
) -> Fetched:
    """Every deb and wheel of the lock, from the cache or downloaded into it.

    Raises:
        ArtifactMismatch: a cached or downloaded artifact does not hash to its pin.
        OfflineMiss: `offline` and an input is not cached.
        VersionVanished / FetchError: the registry cannot provide a pin.
    """
    debs: dict[str, Path] = {}
    wheels: dict[str, Path] = {}
    missing_debs: list[DebPin] = []
    missing_wheels: list[WheelPin] = []
    for d in lock.debs:
        p = cache.get(d.label, d.sha256)
        if p is None:
            missing_debs.append(d)
        else:
            debs[d.name] = p
    for w in lock.wheels:
        p = cache.get(w.label, w.sha256)
        if p is None:
            missing_wheels.append(w)
        else:
            wheels[w.filename] = p
    if offline and (missing_debs or missing_wheels):
        names = [d.label for d in missing_debs] + [w.label for w in missing_wheels]
        raise OfflineMiss("--offline, but not in the cache " f"({cache.root}): " + ", ".join(names))
    if missing_debs:
        if progress:
            progress(f"apt-get download ({len(missing_debs)} packages)")
        apt = make_apt(lock, cache)
        with cache.locked("apt"), cache.scratch("apt-") as tmp:
            got = apt.download([(d.name, d.version) for d in missing_debs], tmp)
            for d in missing_debs:
                debs[d.name] = cache.put(d.label, d.sha256, got[(d.name, d.version)])
    if missing_wheels:
        if progress:
            progress(f"pip download ({len(missing_wheels)} wheels)")
        with cache.scratch("pip-") as tmp:
            got_w = pypi.download(lock.python, missing_wheels, tmp)
            for w in missing_wheels:
                wheels[w.filename] = cache.put(w.label, w.sha256, got_w[w.filename])
    return Fetched(debs, wheels)


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
