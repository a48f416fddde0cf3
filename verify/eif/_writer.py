"""Deterministic EIF writer, laid out exactly as nitro-cli does.

Section order: kernel, cmdline, [metadata (v4)], ramdisks..., [signature]. Every byte is written
once, through a `HashingSink`: the CRC (and, for `write_measured_eif`, the PCR streams and each
ramdisk's SHA-256) are taken on worker threads as the bytes go out, so a ramdisk of any size never
sits in memory and is never read back to be hashed. A ramdisk may even be produced while it is
written (`StreamedSection`): an image builder streams its cpio straight into the EIF.

Identical inputs give identical bytes: no timestamps, fixed metadata encoding, RFC 6979
signatures from `LocalEifSigner`. The header, which holds the signature section's size (it depends
on PCR0), is written last; its CRC is joined to the streamed one with `crc32_combine`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from verify._crc import RunningCrc, crc32, crc32_combine
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
from verify.eif.sink import ByteSink, HashingSink
from verify.eif_sign import EifSigner, build_signature_section
from verify.errors import MalformedEif

__all__ = ["DEFAULT_CPUS", "DEFAULT_MEM", "DEFAULT_METADATA", "StreamedSection", "WrittenEif",
           "sign_eif", "write_eif", "write_measured_eif"]

CHUNK_SIZE = 1 << 20
# nitro-cli's `EifBuilder::new` (aws-nitro-enclaves-image-format, src/utils/mod.rs) writes these
# into header bytes 8..24 whatever the sections are; writing the same makes our EIF byte-identical
# to nitro-cli's for the same sections. Nothing reads them at launch (run-enclave takes
# --memory/--cpu-count) and PCRs do not cover the header.
DEFAULT_MEM = 1024 * 1024 * 1024  # bytes
DEFAULT_CPUS = 2


class _DefaultMetadata:
    def __repr__(self) -> str:
        return "DEFAULT_METADATA"


#: Sentinel meaning "nitro-cli-shaped identity with fixed, reproducible values" (see
#: `default_identity`). Pass `metadata=None` to write no metadata section at all.
DEFAULT_METADATA: Any = _DefaultMetadata()


@dataclass(frozen=True)
class StreamedSection:
    """A section body produced while the EIF is written: `produce(sink)` writes exactly `size`
    bytes into the sink (the size goes into the section header before the body)."""

    size: int
    produce: Callable[[ByteSink], object] = field(repr=False)


@dataclass(frozen=True)
class WrittenEif:
    """What `write_measured_eif` wrote: the structure, the PCRs (0, 1, 2, and 8 when signed)
    computed from the bytes as they were written, each ramdisk's SHA-256, the file's SHA-256."""

    image: EifImage
    pcrs: dict[int, bytes]
    ramdisk_sha256: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class _FileSlice:
    """A section body inside an existing file (used when re-signing an EIF)."""

    path: Path
    offset: int
    size: int


Source = bytes | bytearray | memoryview | Path | _FileSlice | StreamedSection


def _check_source(name: str, source: object) -> None:
    if isinstance(source, str):
        raise TypeError(f"{name}: pass bytes or a pathlib.Path, not str (ambiguous)")
    if not isinstance(source, bytes | bytearray | memoryview | Path | StreamedSection):
        raise TypeError(f"{name}: expected bytes, pathlib.Path or StreamedSection, "
                        f"got {type(source).__name__}")
    if isinstance(source, Path) and not source.is_file():
        raise FileNotFoundError(f"{name}: no such file: {source}")
    if isinstance(source, StreamedSection) and not 0 <= source.size < 1 << 64:
        raise ValueError(f"{name}: size must fit in u64, got {source.size}")


def write_eif(
    dest: str | os.PathLike[str],
    *,
    kernel: bytes | Path,
    cmdline: bytes,
    ramdisks: Sequence[bytes | Path | StreamedSection],
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
        ramdisks: one or more initramfs images (bytes, a Path, or a `StreamedSection` produced
            during the write); the first is measured into PCR1, the rest PCR2.
        metadata: identity JSON for the v4 metadata section; default `default_identity()`;
            None writes no metadata section.
        version: EIF format version 1..4; metadata needs 4, a signature needs 3.
        signer: signs PCR0 and appends the signature section.
        default_mem, default_cpus: header bytes 8..24; nitro-cli's values (1 GiB, 2) by default.
        flags: header bytes 6..8 (bit 0: arm64).

    Returns:
        The written image's structure, read back from `dest`.

    Raises:
        ValueError: inconsistent arguments (no ramdisk, version too old for the sections...), or
            a source that gave another number of bytes than its size (nothing is left at `dest`).
        TypeError: a source is neither bytes, a Path nor a StreamedSection.
        FileNotFoundError: a Path source does not exist.
        Exception: whatever a `StreamedSection.produce` raises (nothing is left at `dest`).
    """
    sections = _plan(kernel, cmdline, ramdisks, metadata, version, signer, default_mem,
                     default_cpus, flags)
    return _write_atomically(Path(dest), sections, signer, version, default_mem, default_cpus,
                             flags, measure=False).image


def write_measured_eif(
    dest: str | os.PathLike[str],
    *,
    kernel: bytes | Path,
    cmdline: bytes,
    ramdisks: Sequence[bytes | Path | StreamedSection],
    metadata: dict[str, Any] | None = DEFAULT_METADATA,
    version: int = CURRENT_VERSION,
    signer: EifSigner | None = None,
    default_mem: int = DEFAULT_MEM,
    default_cpus: int = DEFAULT_CPUS,
    flags: int = 0,
) -> WrittenEif:
    """`write_eif`, and the image's PCRs, ramdisk SHA-256s and file SHA-256 with it.

    The PCR streams are hashed from the bytes as they are written, on worker threads, so a big
    image costs no second read to measure; the file's SHA-256 needs the finished header and so
    reads the file back once (from the page cache, just written). The values are those
    `verify.pcr.measure_eif` gives for the written file.

    Raises:
        As `write_eif`.
    """
    sections = _plan(kernel, cmdline, ramdisks, metadata, version, signer, default_mem,
                     default_cpus, flags)
    return _write_atomically(Path(dest), sections, signer, version, default_mem, default_cpus,
                             flags, measure=True)


def _plan(
    kernel: bytes | Path,
    cmdline: bytes,
    ramdisks: Sequence[bytes | Path | StreamedSection],
    metadata: dict[str, Any] | None,
    version: int,
    signer: EifSigner | None,
    default_mem: int,
    default_cpus: int,
    flags: int,
) -> list[tuple[SectionType, Source]]:
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
    return sections


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
        Path(dest), sections, signer, h.version, h.default_mem, h.default_cpus, h.flags,
        measure=False,
    ).image


def _write_atomically(
    dest: Path,
    sections: list[tuple[SectionType, Source]],
    signer: EifSigner | None,
    version: int,
    default_mem: int,
    default_cpus: int,
    flags: int,
    *,
    measure: bool,
) -> WrittenEif:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            pcrs, ramdisk_sha = _write_body(out, sections, signer, version, default_mem,
                                            default_cpus, flags, measure=measure)
            sha256 = _sha256_of(out) if measure else ""
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would surprise whoever ships the image
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return WrittenEif(read_eif(dest), pcrs, ramdisk_sha, sha256)


def _sha256_of(f: BinaryIO) -> str:
    f.flush()
    h = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    pos = 0
    fd = f.fileno()
    while n := os.preadv(fd, [view], pos):
        h.update(view[:n])
        pos += n
    return h.hexdigest()


def _source_size(source: Source) -> int:
    if isinstance(source, _FileSlice | StreamedSection):
        return source.size
    if isinstance(source, Path):
        return source.stat().st_size
    return memoryview(source).nbytes


def _copy_source(sink: HashingSink, source: Source, size: int) -> None:
    """Write `source`'s body, which must be `size` bytes."""
    start = sink.position
    if isinstance(source, StreamedSection):
        source.produce(sink)
    elif isinstance(source, Path | _FileSlice):
        path = source if isinstance(source, Path) else source.path
        offset = 0 if isinstance(source, Path) else source.offset
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            got = sink.copy_range(fd, offset, size)
            grown = isinstance(source, Path) and os.fstat(fd).st_size != size
        finally:
            os.close(fd)
        if isinstance(source, _FileSlice) and got != size:
            raise MalformedEif("file shrank while being copied", offset=offset + got)
        if got != size or grown:
            raise ValueError(f"{path} changed size while being copied ({size} bytes expected)")
    else:
        view = memoryview(source).cast("B")
        for i in range(0, len(view), CHUNK_SIZE):
            sink.write(bytes(view[i : i + CHUNK_SIZE]))
    written = sink.position - start
    if written != size:
        raise ValueError(f"a section source gave {written} bytes, not the {size} it declared")


_MEASURED = frozenset({SectionType.KERNEL, SectionType.CMDLINE, SectionType.RAMDISK})


def _write_body(
    out: BinaryIO,
    sections: list[tuple[SectionType, Source]],
    signer: EifSigner | None,
    version: int,
    default_mem: int,
    default_cpus: int,
    flags: int,
    *,
    measure: bool,
) -> tuple[dict[int, bytes], tuple[str, ...]]:
    from verify.pcr import extend  # verify.pcr imports this package

    out.write(bytes(HEADER_SIZE))
    offsets: list[int] = []
    sizes: list[int] = []
    crc = RunningCrc()
    # PCR0 and PCR1 hash the same bytes until the second ramdisk (kernel, cmdline, first
    # ramdisk), so one stream serves both until PCR1 forks off there, as in verify.pcr.
    shared = hashlib.sha384()
    pcr1: Any = None
    pcr2 = hashlib.sha384()
    ramdisk_sha: list[Any] = []
    hash_pcrs = measure or signer is not None
    with HashingSink(out, lanes=2) as sink:
        for section_type, source in sections:
            size = _source_size(source)
            offsets.append(HEADER_SIZE + sink.position)
            sizes.append(size)
            sink.route([crc.update])
            sink.write(pack_section_header(section_type, size))
            lane_a: list[Any] = [crc.update]
            lane_b: list[Any] = []
            if hash_pcrs and section_type in _MEASURED:
                is_ramdisk = section_type is SectionType.RAMDISK
                to_pcr2 = is_ramdisk and len(ramdisk_sha) > 0
                if to_pcr2 and pcr1 is None:
                    sink.drain()
                    pcr1 = shared.copy()
                lane_a.insert(0, shared.update)
                if to_pcr2:
                    lane_b.append(pcr2.update)
                elif pcr1 is not None:  # kernel or cmdline after the fork: unusual, but measured
                    lane_b.append(pcr1.update)
            if section_type is SectionType.RAMDISK:
                ramdisk_sha.append(hashlib.sha256())
                if measure:
                    lane_b.append(ramdisk_sha[-1].update)
            sink.route(lane_a, lane_b)
            _copy_source(sink, source, size)
        sink.drain()
        pcrs: dict[int, bytes] = {}
        if hash_pcrs:
            pcrs = {0: extend(shared.digest()), 1: extend((pcr1 or shared).digest()),
                    2: extend(pcr2.digest())}
        if signer is not None:
            body = build_signature_section(signer, pcrs[0])
            offsets.append(HEADER_SIZE + sink.position)
            sizes.append(len(body))
            sink.route([crc.update])
            sink.write(pack_section_header(SectionType.SIGNATURE, len(body)))
            sink.write(body)
            sink.drain()
            pcrs[8] = extend(hashlib.sha384(_certificate_der(signer)).digest())
        body_size = sink.position

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
    value = crc32_combine(crc32(raw[:CRC_OFFSET]), crc.value, body_size)
    out.seek(0)
    out.write(raw[:CRC_OFFSET] + value.to_bytes(4, "big"))
    out.flush()
    return pcrs, tuple(h.hexdigest() for h in ramdisk_sha) if measure else ()


def _certificate_der(signer: EifSigner) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(signer.certificate_pem).public_bytes(Encoding.DER)
