"""write_measured_eif: bytes, PCRs and digests taken while writing equal a separate measurement.

Sources of every kind (bytes, files, sections produced during the write) and sizes around the
sink's batch and chunk sizes; a producer that lies about its size or fails leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from pathlib import Path

import pytest

from verify._crc import _combine, crc32_combine
from verify.eif import (
    HashingSink,
    LocalEifSigner,
    StreamedSection,
    write_eif,
    write_measured_eif,
)
from verify.eif.sink import BATCH, CHUNK
from verify.pcr import measure_eif

SIZES = [0, 1, 4095, BATCH - 1, BATCH, BATCH + 1, CHUNK + 3, 3 * CHUNK + 7]


def _streamed(data: bytes, piece: int) -> StreamedSection:
    """A section produced in `piece`-byte writes, with big pieces copied from a file range."""

    def produce(sink) -> None:  # type: ignore[no-untyped-def]
        i = 0
        while i < len(data):
            sink.write(data[i : i + piece])
            i += piece

    return StreamedSection(len(data), produce)


def _from_file(tmp: Path, data: bytes) -> StreamedSection:
    path = tmp / f"range-{len(data)}"
    path.write_bytes(b"HEAD" + data + b"TAIL")

    def produce(sink) -> None:  # type: ignore[no-untyped-def]
        fd = os.open(path, os.O_RDONLY)
        try:
            assert sink.copy_range(fd, 4, len(data)) == len(data)
        finally:
            os.close(fd)

    return StreamedSection(len(data), produce)


@pytest.mark.parametrize("seed", range(6))
def test_measured_write_equals_measuring_the_file(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 3)
    datas = [rng.randbytes(rng.choice(SIZES)) for _ in range(n)]
    kernel = rng.randbytes(rng.choice(SIZES[1:]))
    signer = LocalEifSigner.generate() if seed % 2 else None
    kinds = []
    ramdisks: list[bytes | Path | StreamedSection] = []
    for i, d in enumerate(datas):
        kind = rng.choice(["bytes", "path", "streamed", "range"])
        kinds.append(kind)
        if kind == "bytes":
            ramdisks.append(d)
        elif kind == "path":
            p = tmp_path / f"r{i}"
            p.write_bytes(d)
            ramdisks.append(p)
        elif kind == "streamed":
            ramdisks.append(_streamed(d, rng.choice([7, 4096, BATCH + 5])))
        else:
            ramdisks.append(_from_file(tmp_path, d))
    kpath = tmp_path / "kernel"
    kpath.write_bytes(kernel)
    common = dict(cmdline=b"console=ttyS0 seed=%d" % seed, signer=signer,
                  metadata=None if seed == 4 else {"seed": seed})
    written = write_measured_eif(tmp_path / "m.eif", kernel=kpath, ramdisks=ramdisks, **common)
    plain = write_eif(tmp_path / "p.eif", kernel=kernel, ramdisks=datas, **common)

    raw = (tmp_path / "m.eif").read_bytes()
    assert raw == (tmp_path / "p.eif").read_bytes(), kinds
    m = measure_eif(tmp_path / "m.eif")
    assert m.crc_ok is True
    assert written.pcrs == m.pcrs
    assert set(written.pcrs) == ({0, 1, 2, 8} if signer else {0, 1, 2})
    assert written.sha256 == hashlib.sha256(raw).hexdigest()
    assert written.ramdisk_sha256 == tuple(hashlib.sha256(d).hexdigest() for d in datas)
    assert written.image == plain == m.image
    if signer:
        m.check_sound()


def test_producer_giving_fewer_bytes_than_declared_leaves_nothing(tmp_path: Path) -> None:
    short = StreamedSection(100, lambda sink: sink.write(b"x" * 99))
    with pytest.raises(ValueError, match="gave 99 bytes, not the 100"):
        write_measured_eif(tmp_path / "a.eif", kernel=b"k", cmdline=b"c", ramdisks=[short])
    assert list(tmp_path.iterdir()) == []


def test_producer_failing_leaves_nothing(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    def produce(sink) -> None:  # type: ignore[no-untyped-def]
        sink.write(b"x" * (3 * BATCH))
        raise Boom("layer digest mismatch")

    (tmp_path / "a.eif").write_bytes(b"previous image")
    with pytest.raises(Boom):
        write_eif(tmp_path / "a.eif", kernel=b"k", cmdline=b"c",
                  ramdisks=[b"r", StreamedSection(3 * BATCH, produce)])
    assert [p.name for p in tmp_path.iterdir()] == ["a.eif"]
    assert (tmp_path / "a.eif").read_bytes() == b"previous image"


def test_streamed_section_size_must_fit_u64(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fit in u64"):
        write_eif(tmp_path / "a.eif", kernel=b"k", cmdline=b"c",
                  ramdisks=[StreamedSection(-1, lambda sink: None)])


def test_sink_feeds_each_lane_in_order(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 123)
    src = tmp_path / "src"
    src.write_bytes(data)
    a, b, c = hashlib.sha256(), hashlib.sha384(), hashlib.sha256()
    with open(tmp_path / "out", "wb") as f, HashingSink(f, lanes=2, depth=2) as sink:
        sink.route([a.update], [b.update])
        sink.write(data[:10])
        fd = os.open(src, os.O_RDONLY)
        try:
            assert sink.copy_range(fd, 10, len(data) - 10 - 100) == len(data) - 110
            sink.route([c.update])  # the last 100 bytes go to c alone
            assert sink.copy_range(fd, len(data) - 100, 1000) == 100  # short: end of file
        finally:
            os.close(fd)
        sink.drain()
    assert (tmp_path / "out").read_bytes() == data
    assert a.digest() == hashlib.sha256(data[:-100]).digest()
    assert b.digest() == hashlib.sha384(data[:-100]).digest()
    assert c.digest() == hashlib.sha256(data[-100:]).digest()


def test_sink_refuses_more_lanes_than_it_has(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as f, HashingSink(f, lanes=1) as sink:
        with pytest.raises(ValueError, match="2 lanes routed, the sink has 1"):
            sink.route([len], [len])


@pytest.mark.parametrize("len2", [0, 1, 3, 4096, 1 << 20, (1 << 33) + 5])
def test_crc32_combine_matches_zlib(len2: int) -> None:
    a = os.urandom(777)
    if len2 <= 1 << 20:
        b = os.urandom(len2)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b)
        assert _combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b)
    else:  # the pure-Python fallback agrees with ISA-L's on lengths too big to hash here
        assert _combine(12345, 678, len2) == crc32_combine(12345, 678, len2)
