"""The Enclave Image File layout: fixed big-endian header, typed sections, and the parsed model.

Byte layout (as `nitro-cli` writes it)::

    EifHeader (548 bytes, big-endian)
      0  magic            4s   b".eif"
      4  version          u16  1..4 (2 added the CRC, 3 the signature section, 4 metadata)
      6  flags            u16  bit 0: arm64
      8  default_mem      u64
     16  default_cpus     u64
     24  reserved         u16
     26  num_sections     u16
     28  section_offsets  32 x u64  (offset of each section *header*)
    284  section_sizes    32 x u64  (size of each section *body*)
    540  unused           u32
    544  eif_crc32        u32  CRC-32/ISO-HDLC over everything in the file except these 4 bytes
    then, per section: EifSectionHeader (type u16, flags u16, size u64) followed by the body.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "CURRENT_VERSION",
    "EIF_MAGIC",
    "FLAG_ARCH_ARM64",
    "HEADER_SIZE",
    "MAX_SECTIONS",
    "SECTION_HEADER_SIZE",
    "EifHeader",
    "EifImage",
    "EifLimits",
    "EifSection",
    "SectionType",
]

EIF_MAGIC = b".eif"
MAX_SECTIONS = 32
CURRENT_VERSION = 4
FLAG_ARCH_ARM64 = 0x1

_HEADER = struct.Struct(f">4sHHQQHH{MAX_SECTIONS}Q{MAX_SECTIONS}QII")
_SECTION_HEADER = struct.Struct(">HHQ")
HEADER_SIZE = _HEADER.size
SECTION_HEADER_SIZE = _SECTION_HEADER.size
assert HEADER_SIZE == 548 and SECTION_HEADER_SIZE == 12

#: Byte offsets of header fields, so errors can point at the exact byte.
FIELD_OFFSETS = {
    "magic": 0,
    "version": 4,
    "flags": 6,
    "default_mem": 8,
    "default_cpus": 16,
    "reserved": 24,
    "num_sections": 26,
    "section_offsets": 28,
    "section_sizes": 28 + 8 * MAX_SECTIONS,
    "unused": 28 + 16 * MAX_SECTIONS,
    "eif_crc32": 32 + 16 * MAX_SECTIONS,
}
CRC_OFFSET = FIELD_OFFSETS["eif_crc32"]


class SectionType(enum.IntEnum):
    """Section type codes; 0 is the reference's `EifSectionInvalid` and never valid in a file."""

    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class EifHeader:
    """The 548-byte EIF header, decoded. `section_offsets`/`section_sizes` always hold 32 entries."""

    version: int
    flags: int
    default_mem: int
    default_cpus: int
    num_sections: int
    section_offsets: tuple[int, ...]
    section_sizes: tuple[int, ...]
    crc32: int
    reserved: int = 0
    unused: int = 0
    magic: bytes = EIF_MAGIC

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            self.magic,
            self.version,
            self.flags,
            self.default_mem,
            self.default_cpus,
            self.reserved,
            self.num_sections,
            *self.section_offsets,
            *self.section_sizes,
            self.unused,
            self.crc32,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EifHeader:
        """Decode exactly 548 bytes; field validation is the reader's job."""
        if len(data) != HEADER_SIZE:
            raise ValueError(f"EIF header needs {HEADER_SIZE} bytes, got {len(data)}")
        fields = _HEADER.unpack(data)
        magic, version, flags, mem, cpus, reserved, num = fields[:7]
        offsets = tuple(fields[7 : 7 + MAX_SECTIONS])
        sizes = tuple(fields[7 + MAX_SECTIONS : 7 + 2 * MAX_SECTIONS])
        unused, crc = fields[-2:]
        return cls(
            version=version,
            flags=flags,
            default_mem=mem,
            default_cpus=cpus,
            num_sections=num,
            section_offsets=offsets,
            section_sizes=sizes,
            crc32=crc,
            reserved=reserved,
            unused=unused,
            magic=magic,
        )

    @property
    def is_arm64(self) -> bool:
        return bool(self.flags & FLAG_ARCH_ARM64)


def pack_section_header(section_type: int, size: int, flags: int = 0) -> bytes:
    return _SECTION_HEADER.pack(section_type, flags, size)


def unpack_section_header(data: bytes) -> tuple[int, int, int]:
    """(type, flags, size) of a 12-byte section header; the type is not validated here."""
    return _SECTION_HEADER.unpack(data)


@dataclass(frozen=True)
class EifSection:
    """Where one section lives in the file. `offset` is the section header, `body_offset` its data."""

    index: int
    type: SectionType
    flags: int
    offset: int
    size: int

    @property
    def body_offset(self) -> int:
        return self.offset + SECTION_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.body_offset + self.size

    @property
    def label(self) -> str:
        return f"section {self.index} ({self.type.label})"


@dataclass(frozen=True)
class EifLimits:
    """Bounds for hostile input: small sections are read into memory, so they get a ceiling.

    Kernel and ramdisks are only ever streamed, so they are bounded by the file size alone.
    """

    max_cmdline: int = 1 << 20  # bytes
    max_metadata: int = 1 << 20  # bytes
    max_signature: int = 1 << 20  # bytes

    def max_for(self, section_type: SectionType) -> int | None:
        return {
            SectionType.CMDLINE: self.max_cmdline,
            SectionType.METADATA: self.max_metadata,
            SectionType.SIGNATURE: self.max_signature,
        }.get(section_type)


@dataclass(frozen=True)
class EifImage:
    """A structurally sound EIF: header plus its sections in file order."""

    header: EifHeader
    sections: tuple[EifSection, ...]
    file_size: int

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_signed(self) -> bool:
        return any(s.type is SectionType.SIGNATURE for s in self.sections)

    def of_type(self, section_type: SectionType) -> tuple[EifSection, ...]:
        return tuple(s for s in self.sections if s.type is section_type)

    @property
    def kernel(self) -> EifSection:
        return self.of_type(SectionType.KERNEL)[0]

    @property
    def cmdline(self) -> EifSection:
        return self.of_type(SectionType.CMDLINE)[0]

    @property
    def ramdisks(self) -> tuple[EifSection, ...]:
        return self.of_type(SectionType.RAMDISK)

    @property
    def metadata(self) -> EifSection | None:
        found = self.of_type(SectionType.METADATA)
        return found[0] if found else None

    @property
    def signature(self) -> EifSection | None:
        found = self.of_type(SectionType.SIGNATURE)
        return found[0] if found else None
