"""The Enclave Image File (EIF) format of AWS Nitro Enclaves: model, reader and writer.

Byte-compatible with nitro-cli (aws-nitro-enclaves-image-format). PCRs live in `verify.pcr`,
signatures in `verify.eif_sign`.
"""

from __future__ import annotations

from verify.eif._format import (
    CRC_OFFSET,
    CURRENT_VERSION,
    EIF_MAGIC,
    FLAG_ARCH_ARM64,
    HEADER_SIZE,
    MAX_SECTIONS,
    SECTION_HEADER_SIZE,
    EifHeader,
    EifImage,
    EifLimits,
    EifSection,
    SectionType,
)
from verify.eif._metadata import decode_metadata, default_identity, encode_metadata
from verify.eif._reader import (
    EifReader,
    copy_section,
    iter_section_chunks,
    open_eif,
    read_eif,
    read_section_bytes,
)
from verify.eif._writer import (
    DEFAULT_CPUS,
    DEFAULT_MEM,
    DEFAULT_METADATA,
    StreamedSection,
    WrittenEif,
    sign_eif,
    write_eif,
    write_measured_eif,
)
from verify.eif.sink import ByteSink, HashingSink
from verify.eif_sign import EifSigner, LocalEifSigner

__all__ = [
    "CRC_OFFSET",
    "ByteSink",
    "CURRENT_VERSION",
    "DEFAULT_CPUS",
    "DEFAULT_MEM",
    "DEFAULT_METADATA",
    "EIF_MAGIC",
    "FLAG_ARCH_ARM64",
    "HEADER_SIZE",
    "MAX_SECTIONS",
    "SECTION_HEADER_SIZE",
    "EifHeader",
    "EifImage",
    "EifLimits",
    "EifReader",
    "EifSection",
    "EifSigner",
    "HashingSink",
    "LocalEifSigner",
    "SectionType",
    "StreamedSection",
    "WrittenEif",
    "copy_section",
    "decode_metadata",
    "default_identity",
    "encode_metadata",
    "iter_section_chunks",
    "open_eif",
    "read_eif",
    "read_section_bytes",
    "sign_eif",
    "write_eif",
    "write_measured_eif",
]
