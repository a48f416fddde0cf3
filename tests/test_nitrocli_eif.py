"""An EIF we write is byte-identical to the one nitro-cli would write for the same sections.

The reference below is written from nitro-cli's builder rules, not from our writer:
aws-nitro-enclaves-image-format `src/utils/mod.rs` (`EifBuilder`): the header's default_mem is
`1024 * 1024 * 1024` and default_cpus `2` (set in `EifBuilder::new`, never changed by nitro-cli's
`build-enclave`), version `CURRENT_VERSION` (4), `num_sections` = kernel + cmdline + metadata +
ramdisks (+ signature), offsets from `kernel_offset()`/`cmdline_offset()`/`metadata_offset()`/
`ramdisk_offset(i)`/`signature_offset()`, section flags 0, and `compute_crc()`: CRC-32/ISO-HDLC
over the header without its last 4 bytes, then each section header and body in file order.
The metadata body is `serde_json::to_vec(&EifIdentityInfo)` (verify.eif.encode_metadata).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from verify.eif import (
    LocalEifSigner,
    default_identity,
    encode_metadata,
    read_eif,
    read_section_bytes,
    write_eif,
)

HEADER_SIZE = 548  # EifHeader::size()
SECTION_HEADER_SIZE = 12  # EifSectionHeader::size()
KERNEL, CMDLINE, RAMDISK, SIGNATURE, METADATA = 1, 2, 3, 4, 5


def nitro_cli_eif(kernel: bytes, cmdline: bytes, metadata: bytes, ramdisks: list[bytes],
                  signature: bytes | None = None, flags: int = 0) -> bytes:
    """EifBuilder::write_to, rule by rule (see the module docstring)."""
    kernel_offset = HEADER_SIZE
    cmdline_offset = kernel_offset + SECTION_HEADER_SIZE + len(kernel)
    metadata_offset = cmdline_offset + SECTION_HEADER_SIZE + len(cmdline)

    def ramdisk_offset(i: int) -> int:
        return (metadata_offset + len(metadata) + SECTION_HEADER_SIZE
                + sum(len(r) + SECTION_HEADER_SIZE for r in ramdisks[:i]))

    offsets = [kernel_offset, cmdline_offset, metadata_offset]
    sizes = [len(kernel), len(cmdline), len(metadata)]
    offsets += [ramdisk_offset(i) for i in range(len(ramdisks))]
    sizes += [len(r) for r in ramdisks]
    sections = [(KERNEL, kernel), (CMDLINE, cmdline), (METADATA, metadata)]
    sections += [(RAMDISK, r) for r in ramdisks]
    if signature is not None:
        last = len(ramdisks) - 1
        offsets.append(ramdisk_offset(last) + SECTION_HEADER_SIZE + len(ramdisks[last]))
        sizes.append(len(signature))
        sections.append((SIGNATURE, signature))
    pad = 32 - len(offsets)
    header = (b".eif" + struct.pack(">HHQQHH", 4, flags, 1024 * 1024 * 1024, 2, 0, len(offsets))
              + struct.pack(">32Q", *offsets, *([0] * pad))
              + struct.pack(">32Q", *sizes, *([0] * pad))
              + struct.pack(">I", 0))
    body = b"".join(struct.pack(">HHQ", t, 0, len(b)) + b for t, b in sections)
    crc = zlib.crc32(body, zlib.crc32(header))
    return header + struct.pack(">I", crc) + body


def test_header_defaults_are_nitro_clis(tmp_path: Path) -> None:
    dest = tmp_path / "a.eif"
    write_eif(dest, kernel=b"k", cmdline=b"c", ramdisks=[b"r"])
    h = read_eif(dest).header
    assert (h.default_mem, h.default_cpus) == (1024 * 1024 * 1024, 2)


@pytest.mark.parametrize("ramdisks", [[b"bootstrap" * 10], [b"r0" * 50, b"r1" * 7, b""]])
def test_unsigned_eif_is_byte_identical_to_nitro_cli(tmp_path: Path, ramdisks: list[bytes]) -> None:
    identity = default_identity(image_name="x", image_version="1", custom_metadata={"b": 1, "a": 2})
    kernel, cmdline = b"\x7fELF" + bytes(range(256)) * 3, b"console=ttyS0 reboot=k"
    ours = tmp_path / "ours.eif"
    write_eif(ours, kernel=kernel, cmdline=cmdline, ramdisks=ramdisks, metadata=identity)
    expected = nitro_cli_eif(kernel, cmdline, encode_metadata(identity), ramdisks)
    got = ours.read_bytes()
    assert got[8:24] == struct.pack(">QQ", 1 << 30, 2)
    assert got == expected


def test_signed_eif_layout_is_nitro_clis(tmp_path: Path) -> None:
    """Signed: same layout and header; the signature body itself is ours (RFC 6979, so fixed)."""
    signer = LocalEifSigner.generate()
    kernel, cmdline, ramdisks = b"K" * 300, b"c", [b"R" * 100, b"S" * 10]
    ours = tmp_path / "signed.eif"
    image = write_eif(ours, kernel=kernel, cmdline=cmdline, ramdisks=ramdisks, signer=signer)
    assert image.signature is not None
    with open(ours, "rb") as f:
        signature = read_section_bytes(f, image.signature)
    expected = nitro_cli_eif(kernel, cmdline, encode_metadata(default_identity()), ramdisks,
                             signature)
    assert ours.read_bytes() == expected


def test_explicit_header_values_still_honoured(tmp_path: Path) -> None:
    dest = tmp_path / "a.eif"
    write_eif(dest, kernel=b"k", cmdline=b"c", ramdisks=[b"r"], default_mem=0, default_cpus=0)
    h = read_eif(dest).header
    assert (h.default_mem, h.default_cpus) == (0, 0)
