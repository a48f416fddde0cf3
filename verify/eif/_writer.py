"""Deterministic EIF writer, laid out exactly as nitro-cli does.

Section order: kernel, cmdline, [metadata (v4)], ramdisks..., [signature]. Path sources are
streamed in chunks, so a ramdisk of any size never sits in memory. Identical inputs give identical
bytes: no timestamps, fixed metadata encoding, RFC 6979 signatures from `LocalEifSigner`.

The CRC covers the header, which holds the signature section's size, which depends on PCR0; so
bodies are written first, the header last, and the CRC is taken in one read-back pass (zlib.crc32
runs at several GiB/s, far faster than the SHA-384 the sections already cost).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from verify._crc import crc32  # ISA-L when installed: same values as zlib, several times faster
from verify.eif._format import (
    CRC_OFFSET,
    CURRENT_VERSION,
    HEADER_SIZE,
    MAX_SECTIONS,
    EifHeader,
    EifImage,
    SectionType,
    pack_section_header,
)
from verify.eif._metadata import default_identity, encode_metadata
from verify.eif._reader import read_eif
from verify.eif_sign import EifSigner, build_signature_section
from verify.errors import MalformedEif

__all__ = ["DEFAULT_CPUS", "DEFAULT_MEM", "DEFAULT_METADATA", "sign_eif", "write_eif"]

CHUNK_SIZE = 1 << 20
# nitro-cli's `EifBuilder::new` (aws-nitro-enclaves-image-format, src/utils/mod.rs) writes these
# into header bytes 8..24 whatever the sections are; writing the same makes our EIF byte-identical
# to nitro-cli's for the same sections. Nothing reads them at launch (run-enclave takes
# --memory/--cpu-count) and PCRs do not cover the header.
DEFAULT_MEM = 1024 * 1024 * 1024  # bytes
DEFAULT_CPUS = 2
ZERO48 = bytes(48)


class _DefaultMetadata:
    def __repr__(self) -> str:
        return "DEFAULT_METADATA"


#: Sentinel meaning "nitro-cli-shaped identity with fixed, reproducible values" (see
#: `default_identity`). Pass `metadata=None` to write no metadata section at all.
DEFAULT_METADATA: Any = _DefaultMetadata()


@dataclass(frozen=True)
class _FileSlice:
    """A section body inside an existing file (used when re-signing an EIF)."""

    path: Path
    offset: int
    size: int


Source = bytes | bytearray | memoryview | Path | _FileSlice


def _chunks(source: Source) -> Iterable[memoryview | bytes]:
    if isinstance(source, _FileSlice):
        with open(source.path, "rb") as f:
            f.seek(source.offset)
            remaining = source.size
            while remaining:
                chunk = f.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise MalformedEif(
                        "file shrank while being copied",
                        offset=source.offset + source.size - remaining,
                    )
                remaining -= len(chunk)
                yield chunk
        if not source.size:
            yield b""
    elif isinstance(source, Path):
        with open(source, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                yield chunk
    else:
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_SIZE):
            yield view[start : start + CHUNK_SIZE]
        if not view:
            yield b""


def _check_source(name: str, source: object) -> None:
    if isinstance(source, str):
        raise TypeError(f"{name}: pass bytes or a pathlib.Path, not str (ambiguous)")
    if not isinstance(source, bytes | bytearray | memoryview | Path):
        raise TypeError(f"{name}: expected bytes or pathlib.Path, got {type(source).__name__}")
    if isinstance(source, Path) and not source.is_file():
        raise FileNotFoundError(f"{name}: no such file: {source}")


def write_eif(
    dest: str | os.PathLike[str],
    *,
    kernel: bytes | Path,
    cmdline: bytes,
    ramdisks: Sequence[bytes | Path],
    metadata: dict[str, Any] | None = DEFAULT_METADATA,
    version: int = CURRENT_VERSION,
    signer: EifSigner | None = None,
    default_mem: int = DEFAULT_MEM,
    default_cpus: int = DEFAULT_CPUS,
    flags: int = 0,
) -> EifImage:
    """Write an EIF to `dest` (atomically: a temp file in the same directory, then rename).

    Args:
        kernel: the kernel image (bzImage / Image), as bytes or a Path streamed from disk.
        cmdline: kernel command line bytes, stored as-is (no terminating NUL, like nitro-cli).
        ramdisks: one or more initramfs images; the first is measured into PCR1, the rest PCR2.
        metadata: identity JSON for the v4 metadata section; default `default_identity()`;
            None writes no metadata section.
        version: EIF format version 1..4; metadata needs 4, a signature needs 3.
        signer: signs PCR0 and appends the signature section.
        default_mem, default_cpus: header bytes 8..24; nitro-cli's values (1 GiB, 2) by default.
        flags: header bytes 6..8 (bit 0: arm64).

    Returns:
        The written image's structure, read back from `dest`.

    Raises:
        ValueError: inconsistent arguments (no ramdisk, version too old for the sections...).
        TypeError: a source is neither bytes nor a Path.
        FileNotFoundError: a Path source does not exist.
    """
    if not 1 <= version <= CURRENT_VERSION:
        raise ValueError(f"version must be 1..{CURRENT_VERSION}, got {version}")
    if not ramdisks:
        raise ValueError("an EIF needs at least one ramdisk")
    if not isinstance(cmdline, bytes | bytearray):
        raise TypeError(f"cmdline: expected bytes, got {type(cmdline).__name__}")
    if b"\0" in cmdline:
        raise ValueError("cmdline must not contain NUL bytes")
    _check_source("kernel", kernel)
    for i, ramdisk in enumerate(ramdisks):
        _check_source(f"ramdisks[{i}]", ramdisk)
    if metadata is DEFAULT_METADATA:
        metadata = default_identity() if version >= 4 else None
    if metadata is not None and version < 4:
        raise ValueError(f"a metadata section needs EIF version 4, got {version}")
    if signer is not None and version < 3:
        raise ValueError(f"a signature section needs EIF version 3, got {version}")
    for name, value in (("default_mem", default_mem), ("default_cpus", default_cpus)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{name} must fit in u64, got {value}")
    if not 0 <= flags < 1 << 16:
        raise ValueError(f"flags must fit in u16, got {flags}")

    sections: list[tuple[SectionType, Source]] = [
        (SectionType.KERNEL, kernel),
        (SectionType.CMDLINE, bytes(cmdline)),
    ]
    if metadata is not None:
        sections.append((SectionType.METADATA, encode_metadata(metadata)))
    sections += [(SectionType.RAMDISK, r) for r in ramdisks]
    if len(sections) + (signer is not None) > MAX_SECTIONS:
        raise ValueError(f"too many sections (at most {MAX_SECTIONS})")

    return _write_atomically(
        Path(dest), sections, signer, version, default_mem, default_cpus, flags
    )


def sign_eif(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], signer: EifSigner
) -> EifImage:
    """Write a signed copy of the EIF `src` to `dest` (which may be `src` itself).

    Like `nitro-cli`'s signer: every section is kept as it is, a signature section over the
    image's PCR0 replaces any existing one at the end, and the header and CRC are rewritten. The
    result is byte-identical to `write_eif(..., signer=signer)` on the same inputs.

    Raises:
        MalformedInput: `src` is missing, or not a sound EIF (including a CRC mismatch).
        ValueError: `src` is older than version 3, which had no signature section.
    """
    from verify.pcr import measure_eif  # verify.pcr imports this package

    measured = measure_eif(src)
    if measured.crc_ok is False:
        measured.check_sound()  # raises MalformedEif naming the CRC mismatch
    image = measured.image
    if image.version < 3:
        raise ValueError(f"a signature section needs EIF version 3, got {image.version}")
    path = Path(src)
    sections: list[tuple[SectionType, Source]] = [
        (s.type, _FileSlice(path, s.body_offset, s.size))
        for s in image.sections
        if s.type is not SectionType.SIGNATURE
    ]
    h = image.header
    return _write_atomically(
        Path(dest), sections, signer, h.version, h.default_mem, h.default_cpus, h.flags
    )


def _write_atomically(
    dest: Path,
    sections: list[tuple[SectionType, Source]],
    signer: EifSigner | None,
    version: int,
    default_mem: int,
    default_cpus: int,
    flags: int,
) -> EifImage:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            _write_body(out, sections, signer, version, default_mem, default_cpus, flags)
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would surprise whoever ships the image
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return read_eif(dest)


def _write_body(
    out: BinaryIO,
    sections: list[tuple[SectionType, Source]],
    signer: EifSigner | None,
    version: int,
    default_mem: int,
    default_cpus: int,
    flags: int,
) -> None:
    out.write(bytes(HEADER_SIZE))
    offsets: list[int] = []
    sizes: list[int] = []
    pcr0 = hashlib.sha384()  # only needed to sign; verify.pcr measures independently
    for section_type, source in sections:
        offsets.append(out.tell())
        out.write(pack_section_header(section_type, 0))  # size patched once known
        size = 0
        measured = section_type in (SectionType.KERNEL, SectionType.CMDLINE, SectionType.RAMDISK)
        for chunk in _chunks(source):
            out.write(chunk)
            size += len(chunk)
            if measured and signer is not None:
                pcr0.update(chunk)
        sizes.append(size)
        end = out.tell()
        out.seek(offsets[-1])
        out.write(pack_section_header(section_type, size))
        out.seek(end)
    if signer is not None:
        pcr0_value = hashlib.sha384(ZERO48 + pcr0.digest()).digest()
        body = build_signature_section(signer, pcr0_value)
        offsets.append(out.tell())
        out.write(pack_section_header(SectionType.SIGNATURE, len(body)))
        out.write(body)
        sizes.append(len(body))

    pad = MAX_SECTIONS - len(offsets)
    header = EifHeader(
        version=version,
        flags=flags,
        default_mem=default_mem,
        default_cpus=default_cpus,
        num_sections=len(offsets),
        section_offsets=tuple(offsets) + (0,) * pad,
        section_sizes=tuple(sizes) + (0,) * pad,
        crc32=0,
    )
    raw = header.to_bytes()
    crc = crc32(raw[:CRC_OFFSET])
    out.flush()
    out.seek(HEADER_SIZE)
    while chunk := out.read(CHUNK_SIZE):
        crc = crc32(chunk, crc)
    out.seek(0)
    out.write(raw[:CRC_OFFSET] + crc.to_bytes(4, "big"))
