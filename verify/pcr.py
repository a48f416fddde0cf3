"""PCR0/1/2/8 of an EIF, exactly as nitro-cli computes them, streamed with bounded memory.

Each PCR is a TPM-style extend of one SHA-384 stream from 48 zero bytes:
``PCR = SHA384(0^48 || SHA384(data))`` where data is, in file order,

- PCR0: kernel || cmdline || every ramdisk (metadata and signature bodies are not measured),
- PCR1: kernel || cmdline || the first ramdisk,
- PCR2: the remaining ramdisks (the hash of nothing when there is only one),
- PCR8: the DER of the signing certificate, when a signature section exists.

Bytes are read once into a small pool of reusable buffers. A worker thread hashes the PCR0 stream
and keeps the CRC-32 (ISO-HDLC, i.e. zlib's) over everything but the header's CRC field, while
this thread reads and hashes PCR2 (hashlib and the CRC drop the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from verify._crc import RunningCrc
from verify.eif import (
    CRC_OFFSET,
    EifImage,
    EifLimits,
    EifReader,
    EifSection,
    SectionType,
    decode_metadata,
    open_eif,
)
from verify.eif_sign import SignatureSection, parse_signature_section, verify_pcr_signature
from verify.errors import MalformedEif, SignatureInvalid

__all__ = [
    "HASH_ALGORITHM",
    "EifMeasurements",
    "extend",
    "measure_eif",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How nitro-cli names the algorithm (Rust `Debug` of `Sha384`); kept verbatim in JSON output.
HASH_ALGORITHM = "Sha384 { ... }"
PCR_SIZE = 48
# About one L2 cache: this thread hashes each chunk right after copying it in, while it is hot.
CHUNK_SIZE = 1 << 20
PIPELINE_DEPTH = 8  # buffers in flight: memory is PIPELINE_DEPTH * CHUNK_SIZE, whatever the file


def extend(digest: bytes) -> bytes:
    """One TPM extend of a zeroed SHA-384 PCR with `digest`."""
    return hashlib.sha384(bytes(PCR_SIZE) + digest).digest()


@dataclass(frozen=True)
class EifMeasurements:
    """What `measure_eif` found. `crc_ok` is None for version-1 images (no CRC; the field must be
    zero, else `crc_ok` is False: a downgraded version)."""

    image: EifImage
    pcrs: dict[int, bytes]
    crc_expected: int
    crc_computed: int
    crc_ok: bool | None
    metadata: dict[str, Any] | None
    cmdline: bytes
    signature: SignatureSection | None
    signature_ok: bool | None
    signature_error: str | None

    @property
    def version(self) -> int:
        return self.image.version

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    def check_sound(self) -> None:
        """Raise unless the CRC matches and any signature verifies.

        Raises:
            MalformedEif: CRC mismatch (names the header's CRC field offset).
            SignatureInvalid: a signature section that parses but does not verify.
        """
        if self.crc_ok is False and self.version < 2:
            raise MalformedEif(
                f"a version-{self.version} image has no CRC32, yet its header carries "
                f"{self.crc_expected:08x}: the version field was altered (a downgrade skips the "
                "integrity check)",
                offset=CRC_OFFSET,
                section="header",
            )
        if self.crc_ok is False:
            raise MalformedEif(
                f"CRC32 mismatch: header says {self.crc_expected:08x}, contents give "
                f"{self.crc_computed:08x}",
                offset=CRC_OFFSET,
                section="header",
            )
        if self.signature_ok is False:
            section = self.image.signature
            assert section is not None
            raise SignatureInvalid(
                f"signature section ({section.label}, at byte offset {section.offset}) does not "
                f"verify: {self.signature_error}"
            )

    def describe(self) -> dict[str, Any]:
        """Exactly `nitro-cli describe-eif`'s JSON: its fields, order and value formats.

        From aws-nitro-enclaves-cli `src/common/json_output.rs` (`EifDescribeInfo`,
        `MetadataDescribeInfo`) and aws-nitro-enclaves-image-format `src/utils/eif_reader.rs`
        (`SignCertificateInfo`, `check_crc`): see `verify.eif.describe`.
        """
        from verify.eif.describe import describe_eif

        return describe_eif(self)


class _Lanes:
    """Two ordered hashing lanes over a bounded pool of read buffers.

    The worker lane is one thread; the main lane runs on the calling thread right after its read
    and CRC. Two threads, not three: the machines this runs on often have two cores, and a third
    thread only adds hand-offs.
    """

    def __init__(self, chunk_size: int, depth: int) -> None:
        self._free = [bytearray(chunk_size) for _ in range(depth)]
        self._inflight: deque[tuple[bytearray | None, Future[None] | None]] = deque()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="pcr")

    def buffer(self) -> bytearray:
        while not self._free:
            buf, fut = self._inflight.popleft()
            if fut is not None:
                fut.result()
            if buf is not None:
                self._free.append(buf)
        return self._free.pop()

    def submit(
        self,
        buf: bytearray | None,
        view: memoryview,
        on_worker: Callable[[memoryview], None] | None,
        on_main: Callable[[memoryview], None] | None,
    ) -> None:
        fut = self._worker.submit(on_worker, view) if on_worker is not None else None
        self._inflight.append((buf, fut))
        if on_main is not None:
            on_main(view)

    def on_worker(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker after everything submitted so far, and wait for it."""
        return self._worker.submit(fn).result()

    def close(self) -> None:
        try:
            while self._inflight:
                fut = self._inflight.popleft()[1]
                if fut is not None:
                    fut.result()
        finally:
            self._worker.shutdown(wait=True)


def _read_into(f: BinaryIO, view: memoryview, section: EifSection | None, pos: int) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise MalformedEif(
                f"truncated: the file ended {len(view) - got} bytes early (did it change while "
                "being read?)",
                offset=pos + got,
                section=section.label if section else "header",
            )
        got += n


def measure_eif(
    path: str | os.PathLike[str],
    *,
    limits: EifLimits | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> EifMeasurements:
    """Parse the EIF at `path`, stream every byte once, and compute PCRs, CRC and signature check.

    A CRC mismatch or a signature that does not verify is reported in the result (`crc_ok`,
    `signature_ok`); call `check_sound()` to turn them into errors.

    Raises:
        MalformedInput: the file is missing or unreadable.
        MalformedEif: structure that is not a sound EIF, or a metadata or signature section that
            does not parse (names section and byte offset).
    """
    with open_eif(path) as f:
        image = EifReader(limits).read(f, os.fstat(f.fileno()).st_size)
        if hasattr(os, "posix_fadvise"):  # one front-to-back pass: let the kernel read ahead
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return _measure_open(f, image, chunk_size)


def _measure_open(f: BinaryIO, image: EifImage, chunk_size: int) -> EifMeasurements:
    # PCR0 and PCR1 hash the same bytes until the second ramdisk (kernel, cmdline, first ramdisk
    # in nitro-cli's order), so one stream serves both until then; at that point PCR1 forks off
    # as a copy. Only bytes after it are hashed twice: into PCR0 on the worker, into PCR2 here.
    shared = hashlib.sha384()  # PCR0's stream; PCR1's too until `pcr1` forks
    pcr1: Any = None
    pcr2 = hashlib.sha384()
    small: dict[int, bytearray] = {}
    lanes = _Lanes(chunk_size, PIPELINE_DEPTH)
    try:
        f.seek(0)
        head = bytearray(CRC_OFFSET + 4)
        _read_into(f, memoryview(head), None, 0)
        crc = RunningCrc()
        lanes.submit(None, memoryview(head)[:CRC_OFFSET], crc.update, None)
        ramdisk_seen = 0
        for section in image.sections:
            sh = bytearray(section.body_offset - section.offset)
            _read_into(f, memoryview(sh), section, section.offset)
            lanes.submit(None, memoryview(sh), crc.update, None)
            t = section.type
            on_worker: Callable[[memoryview], None] = crc.update
            on_main: Callable[[memoryview], None] | None = None
            if t in _MEASURED:
                to_pcr2 = t is SectionType.RAMDISK and ramdisk_seen > 0
                ramdisk_seen += t is SectionType.RAMDISK
                if to_pcr2 and pcr1 is None:
                    pcr1 = lanes.on_worker(shared.copy)
                on_worker = crc.and_then(shared.update)
                if to_pcr2:
                    on_main = pcr2.update
                elif pcr1 is not None:  # kernel or cmdline after the fork: unusual, but measured
                    on_main = pcr1.update
            keep = t in (SectionType.CMDLINE, SectionType.METADATA, SectionType.SIGNATURE)
            if keep:
                small[section.index] = bytearray()
            remaining, pos = section.size, section.body_offset
            while remaining:
                buf = lanes.buffer()
                n = min(remaining, len(buf))
                view = memoryview(buf)[:n]
                _read_into(f, view, section, pos)
                if keep:
                    small[section.index] += view
                lanes.submit(buf, view, on_worker, on_main)
                remaining -= n
                pos += n
    finally:
        lanes.close()

    pcr0 = shared
    if pcr1 is None:
        pcr1 = shared
    pcrs = {0: extend(pcr0.digest()), 1: extend(pcr1.digest()), 2: extend(pcr2.digest())}
    header = image.header
    if header.version >= 2:
        crc_ok: bool | None = crc.value == header.crc32
    else:
        # Version 1 predates the CRC, so its field is zero. A non-zero one means the version was
        # lowered to skip the check (a downgrade), which check_sound() refuses.
        crc_ok = None if header.crc32 == 0 else False

    metadata = None
    if (meta_section := image.metadata) is not None:
        try:
            metadata = decode_metadata(bytes(small[meta_section.index]))
        except ValueError as e:
            raise MalformedEif(
                str(e), offset=meta_section.body_offset, section=meta_section.label
            ) from e

    signature = None
    signature_ok = None
    signature_error = None
    if (sig_section := image.signature) is not None:
        try:
            signature = parse_signature_section(bytes(small[sig_section.index]))
        except ValueError as e:
            raise MalformedEif(
                f"signature section does not parse: {e}",
                offset=sig_section.body_offset,
                section=sig_section.label,
            ) from e
        pcrs[8] = extend(hashlib.sha384(signature.certificate_der).digest())
        try:
            verify_pcr_signature(signature, pcrs)
            signature_ok = True
        except SignatureInvalid as e:
            signature_ok, signature_error = False, str(e)
    logger.debug(
        "measured %s: crc %08x, pcrs %s", image, crc.value, {k: v.hex() for k, v in pcrs.items()}
    )
    return EifMeasurements(
        image=image,
        pcrs=pcrs,
        crc_expected=header.crc32,
        crc_computed=crc.value,
        crc_ok=crc_ok,
        metadata=metadata,
        cmdline=bytes(small[image.cmdline.index]),
        signature=signature,
        signature_ok=signature_ok,
        signature_error=signature_error,
    )


_MEASURED = frozenset({SectionType.KERNEL, SectionType.CMDLINE, SectionType.RAMDISK})
