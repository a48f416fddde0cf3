"""Independent EIF helpers for tests: a second, minimal implementation of the format written
straight from the layout (struct, hashlib, zlib), so tests never check verify.eif against itself.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Sequence

HEADER = 548
CRC_AT = 544


def tpm_extend(data: bytes) -> bytes:
    """PCR = SHA384(0^48 || SHA384(data))."""
    return hashlib.sha384(b"\x00" * 48 + hashlib.sha384(data).digest()).digest()


def expected_pcrs(
    kernel: bytes, cmdline: bytes, ramdisks: Sequence[bytes], cert_pem: bytes | None = None
) -> dict[int, bytes]:
    pcrs = {
        0: tpm_extend(kernel + cmdline + b"".join(ramdisks)),
        1: tpm_extend(kernel + cmdline + ramdisks[0]),
        2: tpm_extend(b"".join(ramdisks[1:])),
    }
    if cert_pem is not None:
        pcrs[8] = tpm_extend(pem_to_der(cert_pem))
    return pcrs


def pem_to_der(pem: bytes) -> bytes:
    lines = pem.decode().strip().splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    return base64.b64decode("".join(lines[1:-1]))


def crc_of(data: bytes) -> int:
    """CRC-32/ISO-HDLC over the whole file except the header's CRC field."""
    return zlib.crc32(data[CRC_AT + 4 :], zlib.crc32(data[:CRC_AT]))


def fix_crc(data: bytes | bytearray) -> bytes:
    out = bytearray(data)
    out[CRC_AT : CRC_AT + 4] = struct.pack(">I", crc_of(bytes(out)))
    return bytes(out)


def build_raw(
    sections: Sequence[tuple[int, bytes]],
    *,
    version: int = 4,
    flags: int = 0,
    default_mem: int = 0,
    default_cpus: int = 0,
) -> bytes:
    """An EIF assembled by hand: header, then (type, flags=0, size) + body for each section."""
    offsets, sizes, body = [], [], bytearray()
    for section_type, data in sections:
        offsets.append(HEADER + len(body))
        sizes.append(len(data))
        body += struct.pack(">HHQ", section_type, 0, len(data)) + data
    pad = 32 - len(sections)
    header = (
        b".eif"
        + struct.pack(">HHQQHH", version, flags, default_mem, default_cpus, 0, len(sections))
        + struct.pack(">32Q", *(offsets + [0] * pad))
        + struct.pack(">32Q", *(sizes + [0] * pad))
        + struct.pack(">II", 0, 0)
    )
    assert len(header) == HEADER
    return fix_crc(header + bytes(body))


def set_header_u16(data: bytes, offset: int, value: int, *, recrc: bool = True) -> bytes:
    out = bytearray(data)
    out[offset : offset + 2] = struct.pack(">H", value)
    return fix_crc(out) if recrc else bytes(out)


def set_header_u64(data: bytes, offset: int, value: int, *, recrc: bool = True) -> bytes:
    out = bytearray(data)
    out[offset : offset + 8] = struct.pack(">Q", value)
    return fix_crc(out) if recrc else bytes(out)


def section_offsets(data: bytes) -> list[int]:
    count = struct.unpack_from(">H", data, 26)[0]
    return list(struct.unpack_from(f">{count}Q", data, 28))
