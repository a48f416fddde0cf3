"""`python -m verify pcr`: exit codes and the one-line message for every bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from eif_support import build_raw, expected_pcrs, fix_crc, set_header_u16, set_header_u64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify._cli import main
from verify.eif import LocalEifSigner, write_eif
from verify.pcr import measure_eif

KERNEL, CMDLINE, RAMDISKS = b"K" * 100, b"console=ttyS0", [b"r0" * 10, b"r1" * 10]
SIGNER = LocalEifSigner.generate()
OFFSETS_AT, SIZES_AT = 28, 28 + 256


def good_image(signed: bool = False) -> bytes:
    """kernel@548, cmdline, metadata, ramdisk, ramdisk[, signature]."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        dest = Path(d) / "g.eif"
        write_eif(
            dest,
            kernel=KERNEL,
            cmdline=CMDLINE,
            ramdisks=RAMDISKS,
            signer=SIGNER if signed else None,
        )
        return dest.read_bytes()


GOOD = good_image()
GOOD_SIGNED = good_image(signed=True)
SEC1 = struct.unpack_from(">Q", GOOD, OFFSETS_AT + 8)[0]  # the cmdline section header


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _patched(data: bytes, at: int, new: bytes, recrc: bool = True) -> bytes:
    out = bytearray(data)
    out[at : at + len(new)] = new
    return fix_crc(out) if recrc else bytes(out)


def _with_cmdline_len(n: int) -> bytes:
    return build_raw([(1, b"k"), (2, b"c" * n), (3, b"r")])


def _bad_signature(body: bytes) -> bytes:
    data = bytearray(GOOD_SIGNED)
    sig_index = struct.unpack_from(">H", data, 26)[0] - 1
    sig_at = struct.unpack_from(">Q", data, OFFSETS_AT + 8 * sig_index)[0]
    del data[sig_at:]
    data += struct.pack(">HHQ", 4, 0, len(body)) + body
    struct.pack_into(">Q", data, SIZES_AT + 8 * sig_index, len(body))
    return fix_crc(data)


def _resigned_over_wrong_pcr0() -> bytes:
    from verify.eif_sign import build_signature_section

    return _bad_signature(build_signature_section(SIGNER, b"\x00" * 48))


BAD_EIFS: list[tuple[str, bytes, list[str]]] = [
    ("empty", b"", ["truncated header", "has 0 bytes"]),
    ("short-header", GOOD[:300], ["truncated header", "300 bytes", "offset 300"]),
    ("bad-magic", b"MZ\x90\x00" + GOOD[4:], ["bad magic", "b'MZ\\x90\\x00'", "offset 0"]),
    ("version-0", set_header_u16(GOOD, 4, 0), ["unsupported EIF version 0", "offset 4"]),
    ("version-5", set_header_u16(GOOD, 4, 5), ["unsupported EIF version 5", "offset 4"]),
    ("zero-sections", set_header_u16(GOOD, 26, 0), ["section count 0", "offset 26"]),
    ("33-sections", set_header_u16(GOOD, 26, 33), ["section count 33", "offset 26"]),
    ("count-too-high", set_header_u16(GOOD, 26, 6), ["lists 6 sections", "ends after 5"]),
    ("count-too-low", set_header_u16(GOOD, 26, 4), ["section slot 4", "section count 4"]),
    (
        "offset-disagrees",
        set_header_u64(GOOD, OFFSETS_AT + 8, SEC1 + 1),
        [f"section 1 at offset {SEC1 + 1}", f"starts at {SEC1}", "offset 36"],
    ),
    (
        "size-disagrees",
        set_header_u64(GOOD, SIZES_AT, 101),
        ["section header says 100 bytes", "lists 101", "offset 552"],
    ),
    ("truncated-section-header", GOOD[: SEC1 + 5], ["truncated section header", f"offset {SEC1}"]),
    ("truncated-body", GOOD[:-7], ["truncated section body", "section 4 (ramdisk)"]),
    ("trailing-bytes", fix_crc(GOOD + b"junk"), ["4 trailing bytes", f"offset {len(GOOD)}"]),
    (
        "unknown-type-6",
        _patched(GOOD, SEC1, b"\x00\x06"),
        ["unknown section type 6", f"section 1, at byte offset {SEC1}"],
    ),
    ("invalid-type-0", _patched(GOOD, SEC1, b"\x00\x00"), ["unknown section type 0"]),
    (
        "crc-mismatch",
        _patched(GOOD, len(GOOD) - 1, b"X", recrc=False),
        ["CRC32 mismatch", "offset 544"],
    ),
    (
        "two-kernels",
        build_raw([(1, b"k"), (1, b"k"), (2, b""), (3, b"r")]),
        ["more than 1 kernel", "section 1 (kernel)"],
    ),
    ("no-ramdisk", build_raw([(1, b"k"), (2, b"")]), ["no ramdisk section"]),
    (
        "metadata-not-json",
        build_raw([(1, b"k"), (2, b""), (5, b"{oops"), (3, b"r")]),
        ["metadata is not UTF-8 JSON", "section 2 (metadata)"],
    ),
    (
        "metadata-not-object",
        build_raw([(1, b"k"), (2, b""), (5, b"[1]"), (3, b"r")]),
        ["expected an object"],
    ),
    ("cmdline-over-limit", _with_cmdline_len((1 << 20) + 1), ["exceeds the limit of 1048576"]),
    ("signature-garbage", _bad_signature(b"\xff\xfe"), ["signature section does not parse"]),
    (
        "signature-wrong-pcr0",
        _resigned_over_wrong_pcr0(),
        ["does not verify", "different PCR0", "section 5 (signature)"],
    ),
]


@pytest.mark.parametrize(
    ("data", "needles"), [c[1:] for c in BAD_EIFS], ids=[c[0] for c in BAD_EIFS]
)
def test_bad_eif_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, needles: list[str]
) -> None:
    path = tmp_path / "bad.eif"
    path.write_bytes(data)
    rc, out, err = run(capsys, "pcr", str(path))
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(error_lines) == 1, err
    for needle in needles:
        assert needle in error_lines[0]
    assert "Traceback" not in err


def test_missing_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "pcr", str(tmp_path / "nope.eif"))
    assert rc == 2 and "no such EIF file" in err and "nope.eif" in err
    rc, _, err = run(capsys, "pcr", str(tmp_path))
    assert rc == 2 and "is a directory" in err


def test_good_image_exit_0_and_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.eif"
    path.write_bytes(GOOD_SIGNED)
    rc, out, err = run(capsys, "pcr", str(path))
    assert rc == 0 and out == ""
    want = expected_pcrs(KERNEL, CMDLINE, RAMDISKS, SIGNER.certificate_pem)
    for i, v in want.items():
        assert f"PCR{i}" in err and v.hex() in err
    assert "verifies" in err


def test_json_has_describe_eif_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.eif"
    path.write_bytes(GOOD_SIGNED)
    rc, out, _ = run(capsys, "pcr", str(path), "--json")
    doc = json.loads(out)
    assert rc == 0
    want = expected_pcrs(KERNEL, CMDLINE, RAMDISKS, SIGNER.certificate_pem)
    assert doc["EifVersion"] == 4
    assert doc["Measurements"] == {
        "HashAlgorithm": "Sha384 { ... }",
        **{f"PCR{i}": v.hex() for i, v in want.items()},
    }
    assert doc["IsSigned"] is True and doc["CheckCRC"] is True and doc["SignatureCheck"] is True
    assert doc["ImageName"] == "sentinel" and "BuildTime" in doc["Metadata"]
    path.write_bytes(GOOD)
    doc = json.loads(run(capsys, "pcr", str(path), "--json")[1])
    assert (
        doc["IsSigned"] is False
        and "SignatureCheck" not in doc
        and "PCR8" not in doc["Measurements"]
    )


def _measurements(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))
    return p


def test_measurements_match_exit_0_nitro_cli_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.eif"
    path.write_bytes(GOOD)
    want = expected_pcrs(KERNEL, CMDLINE, RAMDISKS)
    # `nitro-cli build-enclave` prints {"Measurements": {...}}
    built = {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            **{f"PCR{i}": v.hex() for i, v in want.items()},
        }
    }
    rc, _, err = run(
        capsys, "pcr", str(path), "--measurements", str(_measurements(tmp_path, built))
    )
    assert rc == 0 and "OK: every PCR" in err
    # our own --json (describe-eif shape) fed back in
    described = run(capsys, "pcr", str(path), "--json")[1]
    (tmp_path / "d.json").write_text(described)
    assert run(capsys, "pcr", str(path), "--measurements", str(tmp_path / "d.json"))[0] == 0


def test_pcr_mismatch_exit_1_names_each_pcr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.eif"
    path.write_bytes(GOOD)
    want = expected_pcrs(KERNEL, CMDLINE, RAMDISKS)
    wrong = {0: want[0], 1: b"\x01" * 48, 2: b"\x02" * 48}
    doc = {
        "Measurements": {f"PCR{i}": v.hex() for i, v in wrong.items()},
        "Sentinel": {"schema": 1, "version": "0.1.0"},
    }
    rc, out, err = run(
        capsys, "pcr", str(path), "--json", "--measurements", str(_measurements(tmp_path, doc))
    )
    assert rc == 1
    assert f"PCR1: expected {'01' * 48}, got {want[1].hex()}" in err
    assert f"PCR2: expected {'02' * 48}, got {want[2].hex()}" in err
    assert "PCR0:" not in err and "error: PCR1, PCR2 differ" in err
    comparison = json.loads(out)["Comparison"]
    assert comparison["Matches"] is False
    assert [d["PCR"] for d in comparison["Differences"]] == [1, 2]


def test_pcr8_expected_but_image_unsigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.eif"
    path.write_bytes(GOOD)
    pcrs = measure_eif(path).pcrs
    doc = {"Measurements": {**{f"PCR{i}": v.hex() for i, v in pcrs.items()}, "PCR8": "ab" * 48}}
    rc, _, err = run(capsys, "pcr", str(path), "--measurements", str(_measurements(tmp_path, doc)))
    assert rc == 1 and f"PCR8: expected {'ab' * 48}, got absent" in err


BAD_MEASUREMENTS = [
    ("not-json", b"{nope", "not UTF-8 JSON"),
    ("no-measurements", b'{"PCR0": "00"}', 'a "Measurements" member'),
    ("list", b"[]", 'a "Measurements" member'),
    ("short-pcr", b'{"Measurements": {"PCR0": "abcd"}}', "PCR0 must be 96 hex digits"),
    (
        "sha256",
        json.dumps(
            {"Measurements": {"HashAlgorithm": "Sha256 { ... }", "PCR0": "00" * 48}}
        ).encode(),
        "is not SHA-384",
    ),
    (
        "odd-key",
        json.dumps({"Measurements": {"PCR0": "00" * 48, "Extra": 1}}).encode(),
        "unexpected key 'Extra'",
    ),
    ("no-pcrs", b'{"Measurements": {"HashAlgorithm": "Sha384 { ... }"}}', "holds no PCR values"),
    (
        "bad-schema",
        json.dumps({"Measurements": {"PCR0": "00" * 48}, "Sentinel": {"schema": 9}}).encode(),
        "schema 9 is not supported",
    ),
]


@pytest.mark.parametrize(
    ("content", "needle"), [c[1:] for c in BAD_MEASUREMENTS], ids=[c[0] for c in BAD_MEASUREMENTS]
)
def test_bad_measurements_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str
) -> None:
    path = tmp_path / "g.eif"
    path.write_bytes(GOOD)
    m = tmp_path / "m.json"
    m.write_bytes(content)
    rc, _, err = run(capsys, "pcr", str(path), "--measurements", str(m))
    assert rc == 2 and needle in err and str(m) in err


def test_missing_measurements_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.eif"
    path.write_bytes(GOOD)
    rc, _, err = run(capsys, "pcr", str(path), "--measurements", str(tmp_path / "none.json"))
    assert rc == 2 and "no such measurements file" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pcr")[0] == 2
    assert run(capsys, "pcr", "a.eif", "--bogus")[0] == 2
    assert run(capsys)[0] == 2


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, len(GOOD_SIGNED) - 1))
def test_any_truncation_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int
) -> None:
    path = tmp_path / "t.eif"
    path.write_bytes(GOOD_SIGNED[:cut])
    rc, _, err = run(capsys, "pcr", str(path))
    assert rc == 2 and err.startswith("error: ")


def test_real_process_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.eif", tmp_path / "bad.eif"
    good.write_bytes(GOOD)
    bad.write_bytes(GOOD[:1000])
    ok = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", str(good), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["CheckCRC"] is True
    fail = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fail.returncode == 2 and fail.stdout == ""
    assert fail.stderr.count("\n") == 1 and "truncated" in fail.stderr
    assert "Traceback" not in fail.stderr


def test_cbor_of_signature_fixture_is_sane() -> None:
    # Guards the fixtures above: the signed image really carries a signature section.
    sig_index = struct.unpack_from(">H", GOOD_SIGNED, 26)[0] - 1
    at = struct.unpack_from(">Q", GOOD_SIGNED, OFFSETS_AT + 8 * sig_index)[0]
    assert struct.unpack_from(">H", GOOD_SIGNED, at)[0] == 4
    assert isinstance(cbor2.loads(GOOD_SIGNED[at + 12 :]), list)
