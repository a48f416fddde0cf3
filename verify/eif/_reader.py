"""Structural reader for EIFs: checks the header against the sections actually in the file.

Only headers are read here (a few hundred bytes); section bodies are streamed by `copy_section`,
`iter_section_chunks` and `verify.pcr`, so memory does not grow with the image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from verify.eif._format import (
    CURRENT_VERSION,
    EIF_MAGIC,
    FIELD_OFFSETS,
    HEADER_SIZE,
    MAX_SECTIONS,
    SECTION_HEADER_SIZE,
    EifHeader,
    EifImage,
    EifLimits,
    EifSection,
    SectionType,
    unpack_section_header,
)
from verify.errors import MalformedEif, MalformedInput

__all__ = ["EifReader", "copy_section", "iter_section_chunks", "read_eif", "read_section_bytes"]

CHUNK_SIZE = 1 << 20


class EifReader:
    """Parse an EIF's header and section table from an open binary file.

    Checks, in order: (1) the file holds a whole header; (2) magic; (3) a version this tool knows;
    (4) a section count in 1..32; (5) every section header sits at the offset the header lists, has
    a known type and the size the header lists, and its body fits in the file; (6) unused table
    slots are zero and nothing trails the last section; (7) the section mix is one a Nitro enclave
    boots: one kernel, one cmdline, at least one ramdisk, at most one metadata and one signature.
    """

    def __init__(self, limits: EifLimits | None = None) -> None:
        self.limits = limits or EifLimits()

    def read(self, fileobj: BinaryIO, file_size: int | None = None) -> EifImage:
        """Parse `fileobj` (positioned anywhere; seeks freely).

        Raises:
            MalformedEif: the bytes are not a sound EIF; the message names section and offset.
        """
        if file_size is None:
            file_size = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(0)
        raw = _read_exact_or_none(fileobj, HEADER_SIZE)
        if raw is None:
            raise MalformedEif(
                f"truncated header: the file has {file_size} bytes, an EIF header needs "
                f"{HEADER_SIZE}",
                offset=file_size,
                section="header",
            )
        header = EifHeader.from_bytes(raw)
        self._check_header(header)
        sections = self._walk_sections(fileobj, header, file_size)
        self._check_mix(sections)
        return EifImage(header=header, sections=tuple(sections), file_size=file_size)

    def read_path(self, path: str | os.PathLike[str]) -> EifImage:
        """Open and parse the EIF at `path`.

        Raises:
            MalformedInput: missing or unreadable file.
            MalformedEif: not a sound EIF.
        """
        with open_eif(path) as f:
            return self.read(f, os.fstat(f.fileno()).st_size)

    def _check_header(self, header: EifHeader) -> None:
        if header.magic != EIF_MAGIC:
            raise MalformedEif(
                f"bad magic {header.magic!r} (expected {EIF_MAGIC!r}): not an EIF file",
                offset=FIELD_OFFSETS["magic"],
                section="header",
            )
        if not 1 <= header.version <= CURRENT_VERSION:
            raise MalformedEif(
                f"unsupported EIF version {header.version} (this tool reads 1..{CURRENT_VERSION})",
                offset=FIELD_OFFSETS["version"],
                section="header",
            )
        if not 1 <= header.num_sections <= MAX_SECTIONS:
            raise MalformedEif(
                f"section count {header.num_sections} out of range 1..{MAX_SECTIONS}",
                offset=FIELD_OFFSETS["num_sections"],
                section="header",
            )
        for i in range(header.num_sections, MAX_SECTIONS):
            if header.section_offsets[i] or header.section_sizes[i]:
                raise MalformedEif(
                    f"header lists section slot {i} (offset {header.section_offsets[i]}, size "
                    f"{header.section_sizes[i]}) beyond its section count {header.num_sections}",
                    offset=FIELD_OFFSETS["section_offsets"] + 8 * i,
                    section="header",
                )

    def _walk_sections(
        self, fileobj: BinaryIO, header: EifHeader, file_size: int
    ) -> list[EifSection]:
        sections: list[EifSection] = []
        pos = HEADER_SIZE
        for i in range(header.num_sections):
            listed_offset = header.section_offsets[i]
            listed_size = header.section_sizes[i]
            if pos >= file_size:
                raise MalformedEif(
                    f"truncated: the header lists {header.num_sections} sections but the file "
                    f"ends after {i} ({file_size} bytes)",
                    offset=file_size,
                    section=f"section {i}",
                )
            if listed_offset != pos:
                raise MalformedEif(
                    f"header lists section {i} at offset {listed_offset}, but it starts at {pos}",
                    offset=FIELD_OFFSETS["section_offsets"] + 8 * i,
                    section="header",
                )
            if pos + SECTION_HEADER_SIZE > file_size:
                raise MalformedEif(
                    f"truncated section header: {file_size - pos} of {SECTION_HEADER_SIZE} "
                    "bytes present",
                    offset=pos,
                    section=f"section {i}",
                )
            fileobj.seek(pos)
            raw = fileobj.read(SECTION_HEADER_SIZE)
            if len(raw) != SECTION_HEADER_SIZE:  # the file shrank while we read it
                raise MalformedEif("truncated section header", offset=pos, section=f"section {i}")
            type_code, flags, size = unpack_section_header(raw)
            try:
                section_type = SectionType(type_code)
            except ValueError:
                section_type = SectionType.INVALID
            if section_type is SectionType.INVALID:
                raise MalformedEif(
                    f"unknown section type {type_code} (expected 1..5: kernel, cmdline, ramdisk, "
                    "signature, metadata)",
                    offset=pos,
                    section=f"section {i}",
                )
            section = EifSection(index=i, type=section_type, flags=flags, offset=pos, size=size)
            if size != listed_size:
                raise MalformedEif(
                    f"section header says {size} bytes but the EIF header lists {listed_size}",
                    offset=pos + 4,
                    section=section.label,
                )
            if section.end > file_size:
                raise MalformedEif(
                    f"truncated section body: needs {size} bytes, only "
                    f"{file_size - section.body_offset} present",
                    offset=section.body_offset,
                    section=section.label,
                )
            cap = self.limits.max_for(section_type)
            if cap is not None and size > cap:
                raise MalformedEif(
                    f"{section_type.label} section of {size} bytes exceeds the limit of {cap}",
                    offset=pos + 4,
                    section=section.label,
                )
            sections.append(section)
            pos = section.end
        if pos != file_size:
            raise MalformedEif(
                f"{file_size - pos} trailing bytes after the last of {header.num_sections} "
                "sections listed in the header",
                offset=pos,
                section="trailer",
            )
        return sections

    def _check_mix(self, sections: list[EifSection]) -> None:
        def count(t: SectionType) -> list[EifSection]:
            return [s for s in sections if s.type is t]

        for t, lo, hi in (
            (SectionType.KERNEL, 1, 1),
            (SectionType.CMDLINE, 1, 1),
            (SectionType.RAMDISK, 1, MAX_SECTIONS),
            (SectionType.METADATA, 0, 1),
            (SectionType.SIGNATURE, 0, 1),
        ):
            found = count(t)
            if len(found) > hi:
                extra = found[hi]
                raise MalformedEif(
                    f"more than {hi} {t.label} section(s)", offset=extra.offset, section=extra.label
                )
            if len(found) < lo:
                raise MalformedEif(f"no {t.label} section", section="section table")


def open_eif(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an EIF for reading, turning OS errors into `MalformedInput` (exit 2, one line)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        raise MalformedInput(f"no such EIF file: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise MalformedInput(f"{os.fspath(path)} is a directory, not an EIF file") from None
    except OSError as e:
        raise MalformedInput(f"cannot open EIF file {os.fspath(path)}: {e.strerror}") from e
    return f


def read_eif(path: str | os.PathLike[str], limits: EifLimits | None = None) -> EifImage:
    """Parse the EIF at `path` (header and section table only; bodies are not read).

    Raises:
        MalformedInput: missing or unreadable file.
        MalformedEif: not a sound EIF.
    """
    return EifReader(limits).read_path(path)


def iter_section_chunks(
    fileobj: BinaryIO, section: EifSection, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield a section's body in chunks of at most `chunk_size` bytes.

    Raises:
        MalformedEif: the file ended before the body did.
    """
    fileobj.seek(section.body_offset)
    remaining = section.size
    while remaining:
        chunk = fileobj.read(min(chunk_size, remaining))
        if not chunk:
            raise MalformedEif(
                f"truncated section body: {remaining} bytes missing",
                offset=section.end - remaining,
                section=section.label,
            )
        remaining -= len(chunk)
        yield chunk


def copy_section(path: str | os.PathLike[str], section: EifSection, dest_fileobj: BinaryIO) -> int:
    """Copy one section body of the EIF at `path` into `dest_fileobj`, in chunks; returns bytes.

    Raises:
        MalformedEif: the file is missing or shorter than the section.
    """
    written = 0
    with open_eif(path) as f:
        for chunk in iter_section_chunks(f, section):
            dest_fileobj.write(chunk)
            written += len(chunk)
    return written


def read_section_bytes(fileobj: BinaryIO, section: EifSection) -> bytes:
    """A whole small section (cmdline, metadata, signature; the reader bounds their sizes)."""
    return b"".join(iter_section_chunks(fileobj, section))


def _read_exact_or_none(fileobj: BinaryIO, n: int) -> bytes | None:
    data = fileobj.read(n)
    return data if len(data) == n else None
