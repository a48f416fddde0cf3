"""EIF layout: the writer's bytes against a hand-assembled EIF, reader model, extraction."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
from eif_support import HEADER, build_raw, crc_of, section_offsets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.eif import (
    EifHeader,
    LocalEifSigner,
    SectionType,
    copy_section,
    default_identity,
    encode_metadata,
    read_eif,
    write_eif,
)

KERNEL = bytes(range(256)) * 40
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on"
KERNEL_T, CMDLINE_T, RAMDISK_T, SIGNATURE_T, METADATA_T = 1, 2, 3, 4, 5


def test_header_is_548_bytes_big_endian() -> None:
    header = EifHeader(
        version=4,
        flags=1,
        default_mem=5,
        default_cpus=6,
        num_sections=2,
        section_offsets=(548, 600) + (0,) * 30,
        section_sizes=(40, 8) + (0,) * 30,
        crc32=0xDEADBEEF,
    )
    raw = header.to_bytes()
    assert len(raw) == 548
    assert raw[:4] == b".eif"
    assert struct.unpack_from(">HHQQHH", raw, 4) == (4, 1, 5, 6, 0, 2)
    assert struct.unpack_from(">2Q", raw, 28) == (548, 600)
    assert struct.unpack_from(">2Q", raw, 28 + 256) == (40, 8)
    assert raw[-4:] == bytes.fromhex("deadbeef")
    assert EifHeader.from_bytes(raw) == header
    assert header.is_arm64


@pytest.mark.parametrize("n_ramdisks", [1, 2, 3])
def test_v3_unsigned_bytes_equal_hand_assembled(tmp_path: Path, n_ramdisks: int) -> None:
    ramdisks = [bytes([i]) * (1000 + i) for i in range(n_ramdisks)]
    dest = tmp_path / "a.eif"
    write_eif(dest, kernel=KERNEL, cmdline=CMDLINE, ramdisks=ramdisks, version=3, metadata=None)
    expected = build_raw(
        [(KERNEL_T, KERNEL), (CMDLINE_T, CMDLINE)] + [(RAMDISK_T, r) for r in ramdisks],
        version=3,
        default_mem=1 << 30,  # write_eif's defaults are nitro-cli's
        default_cpus=2,
    )
    assert dest.read_bytes() == expected


def test_v4_layout_puts_metadata_after_cmdline(tmp_path: Path) -> None:
    meta = default_identity(image_name="sentinel", image_version="9.9.9")
    dest = tmp_path / "a.eif"
    write_eif(
        dest,
        kernel=KERNEL,
        cmdline=CMDLINE,
        ramdisks=[b"r0", b"r1"],
        metadata=meta,
        default_mem=1 << 30,
        default_cpus=2,
    )
    meta_bytes = encode_metadata(meta)
    expected = build_raw(
        [
            (KERNEL_T, KERNEL),
            (CMDLINE_T, CMDLINE),
            (METADATA_T, meta_bytes),
            (RAMDISK_T, b"r0"),
            (RAMDISK_T, b"r1"),
        ],
        version=4,
        default_mem=1 << 30,
        default_cpus=2,
    )
    assert dest.read_bytes() == expected


def test_metadata_json_matches_nitro_cli_shape() -> None:
    meta = default_identity(docker_info={"b": 1, "a": {"z": 0, "y": 1}}, custom_metadata={"k": "v"})
    raw = encode_metadata(meta)
    assert b" " not in raw.replace(b"Unknown", b"")  # compact, like serde_json::to_vec
    parsed = json.loads(raw)
    assert list(parsed) == [
        "ImageName",
        "ImageVersion",
        "BuildMetadata",
        "DockerInfo",
        "CustomMetadata",
    ]
    assert list(parsed["BuildMetadata"]) == [
        "BuildTime",
        "BuildTool",
        "BuildToolVersion",
        "OperatingSystem",
        "KernelVersion",
    ]
    # serde_json::Value maps are BTreeMaps: sorted keys at every depth
    assert raw.index(b'"a"') < raw.index(b'"b"') and raw.index(b'"y"') < raw.index(b'"z"')


def test_signed_image_ends_with_signature_and_crc_covers_it(tmp_path: Path) -> None:
    dest = tmp_path / "s.eif"
    image = write_eif(
        dest, kernel=KERNEL, cmdline=CMDLINE, ramdisks=[b"x" * 10], signer=LocalEifSigner.generate()
    )
    data = dest.read_bytes()
    assert [s.type for s in image.sections] == [
        SectionType.KERNEL,
        SectionType.CMDLINE,
        SectionType.METADATA,
        SectionType.RAMDISK,
        SectionType.SIGNATURE,
    ]
    assert image.sections[-1].end == len(data) == image.file_size
    assert section_offsets(data) == [s.offset for s in image.sections]
    assert struct.unpack_from(">I", data, 544)[0] == crc_of(data)


def test_output_is_deterministic_also_when_signed(tmp_path: Path) -> None:
    signer = LocalEifSigner.generate()
    ramdisk = tmp_path / "r.cpio"
    ramdisk.write_bytes(os.urandom(300_000))
    outs = []
    for name in ("a.eif", "b.eif"):
        write_eif(
            tmp_path / name,
            kernel=KERNEL,
            cmdline=CMDLINE,
            ramdisks=[ramdisk, b"app"],
            signer=signer,
        )
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]


def test_path_sources_stream_to_the_same_bytes_as_bytes_sources(tmp_path: Path) -> None:
    big = os.urandom(3 * (1 << 20) + 17)  # spans several writer chunks
    (tmp_path / "k").write_bytes(KERNEL)
    (tmp_path / "r").write_bytes(big)
    write_eif(tmp_path / "p.eif", kernel=tmp_path / "k", cmdline=b"", ramdisks=[tmp_path / "r"])
    write_eif(tmp_path / "b.eif", kernel=KERNEL, cmdline=b"", ramdisks=[big])
    assert (tmp_path / "p.eif").read_bytes() == (tmp_path / "b.eif").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_copy_section_extracts_each_body(tmp_path: Path) -> None:
    ramdisks = [b"first" * 1000, b"", b"third"]
    dest = tmp_path / "a.eif"
    image = write_eif(dest, kernel=KERNEL, cmdline=CMDLINE, ramdisks=ramdisks)
    bodies = []
    for section in image.ramdisks:
        out = io.BytesIO()
        assert copy_section(dest, section, out) == section.size
        bodies.append(out.getvalue())
    assert bodies == ramdisks
    out = io.BytesIO()
    copy_section(dest, image.kernel, out)
    assert out.getvalue() == KERNEL


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ramdisks": []}, ValueError, "at least one ramdisk"),
        ({"version": 5}, ValueError, "version must be 1..4"),
        ({"version": 3, "metadata": {"ImageName": "x"}}, ValueError, "metadata section needs"),
        ({"version": 2, "metadata": None, "signer": "S"}, ValueError, "signature section needs"),
        ({"cmdline": b"a\0b"}, ValueError, "NUL"),
        ({"kernel": "/path/as/str"}, TypeError, "not str"),
        ({"ramdisks": [Path("/nonexistent/ramdisk")]}, FileNotFoundError, "ramdisks\\[0\\]"),
        ({"ramdisks": [b"r"] * 32}, ValueError, "too many sections"),
        ({"default_mem": -1}, ValueError, "default_mem"),
    ],
    ids=[
        "no-ramdisk",
        "version-5",
        "v3-metadata",
        "v2-signer",
        "nul-cmdline",
        "str-kernel",
        "missing-ramdisk",
        "too-many",
        "negative-mem",
    ],
)
def test_writer_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    args = {"kernel": KERNEL, "cmdline": CMDLINE, "ramdisks": [b"r"]}
    if kwargs.get("signer") == "S":
        kwargs = {**kwargs, "signer": LocalEifSigner.generate()}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        write_eif(tmp_path / "x.eif", **args)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_old_versions_read(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        raw = build_raw([(KERNEL_T, b"k"), (CMDLINE_T, b""), (RAMDISK_T, b"r")], version=version)
        (tmp_path / "old.eif").write_bytes(raw)
        image = read_eif(tmp_path / "old.eif")
        assert image.version == version and image.metadata is None and not image.is_signed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kernel=st.binary(max_size=3000),
    cmdline=st.binary(max_size=200).filter(lambda b: b"\0" not in b),
    ramdisks=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    version=st.sampled_from([3, 4]),
    flags=st.integers(0, 1),
    mem=st.integers(0, 2**64 - 1),
)
def test_round_trip_random_sections(
    tmp_path: Path,
    kernel: bytes,
    cmdline: bytes,
    ramdisks: list[bytes],
    version: int,
    flags: int,
    mem: int,
) -> None:
    dest = tmp_path / "rt.eif"
    write_eif(
        dest,
        kernel=kernel,
        cmdline=cmdline,
        ramdisks=ramdisks,
        version=version,
        flags=flags,
        default_mem=mem,
    )
    image = read_eif(dest)
    assert (image.version, image.header.flags, image.header.default_mem) == (version, flags, mem)
    data = dest.read_bytes()
    got = {t: [data[s.body_offset : s.end] for s in image.of_type(t)] for t in SectionType}
    assert got[SectionType.KERNEL] == [kernel]
    assert got[SectionType.CMDLINE] == [cmdline]
    assert got[SectionType.RAMDISK] == ramdisks
    assert len(got[SectionType.METADATA]) == (1 if version == 4 else 0)
    assert image.file_size == len(data) > HEADER
