"""One published release as the deployment needs it: version, the PCRs to pin, the EIF's size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reproducible.deploy.errors import DebugMeasurements, DeployError, MissingPcrs
from verify.errors import MalformedMeasurements
from verify.measurements import load_measurements

__all__ = ["PINNED_PCRS", "Release", "load_release"]

#: PCRs every key policy pins: image (kernel, cmdline, ramdisks), kernel+boot ramdisk, application.
PINNED_PCRS = (0, 1, 2)
#: PCR8 (the signing certificate) is pinned too when the release is signed.
SIGNING_PCR = 8
#: EIF section header: type u16, flags u16, size u64 (verify/eif); sections' offsets point at it.
_SECTION_HEADER = 12


@dataclass(frozen=True)
class Release:
    """A release's PCRs (lower-case hex) and, when the file says, the EIF's size in bytes."""

    version: str
    pcrs: dict[int, str]
    eif_bytes: int | None
    source: str

    @property
    def pinned(self) -> tuple[int, ...]:
        """The PCR indices a key policy conditions on for this release."""
        return PINNED_PCRS + ((SIGNING_PCR,) if SIGNING_PCR in self.pcrs else ())


def _eif_bytes(sentinel: dict[str, object] | None) -> int | None:
    sections = sentinel.get("sections") if sentinel else None
    if not isinstance(sections, list) or not sections:
        return None
    ends = []
    for s in sections:
        if not isinstance(s, dict):
            return None
        offset, size = s.get("offset"), s.get("size")
        if not isinstance(offset, int) or not isinstance(size, int):
            return None
        ends.append(offset + _SECTION_HEADER + size)
    return max(ends)


def load_release(path: str | os.PathLike[str], eif: Path | None = None) -> Release:
    """Read a measurements file and refuse what no key should ever be bound to.

    Args:
        path: measurements/<version>.json (Sentinel's or nitro-cli's format).
        eif: the image itself, to size it when the file has no `Sentinel.sections`.

    Raises:
        DeployError: the file is malformed, or names no version.
        MissingPcrs: PCR0, PCR1 or PCR2 is absent.
        DebugMeasurements: PCR0-2 are all zero (a debug-mode enclave).
    """
    try:
        published = load_measurements(path)
    except MalformedMeasurements as e:
        raise DeployError(str(e)) from e
    name = published.source
    missing = [f"PCR{i}" for i in PINNED_PCRS if i not in published.pcrs]
    if missing:
        raise MissingPcrs(
            f"{name}: {', '.join(missing)} missing; a key policy must pin PCR0, PCR1 and PCR2"
        )
    zero = [f"PCR{i}" for i in sorted(published.pcrs) if not any(published.pcrs[i])]
    if any(not any(published.pcrs[i]) for i in PINNED_PCRS):
        raise DebugMeasurements(
            f"{name}: {', '.join(zero)} all zero: these are a debug-mode enclave's measurements, "
            "which any image reports; refusing to bind a key to them"
        )
    version = (published.sentinel or {}).get("version")
    if not isinstance(version, str) or not version:
        version = Path(name).stem
    size = eif.stat().st_size if eif is not None else _eif_bytes(published.sentinel)
    return Release(
        version=version,
        pcrs={i: v.hex() for i, v in sorted(published.pcrs.items())},
        eif_bytes=size,
        source=name,
    )
