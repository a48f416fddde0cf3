"""verify.measurements: the published file format, nitro-cli's JSON, and PCR diffs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verify.eif import write_eif
from verify.errors import MalformedMeasurements
from verify.measurements import (
    PcrDiff,
    describe_sections,
    diff_pcrs,
    dump_measurements,
    load_measurements,
    measurements_document,
)
from verify.pcr import measure_eif

P = {0: b"\x00" * 48, 1: b"\x01" * 48, 2: b"\x02" * 48}


def test_document_round_trips_through_a_file(tmp_path: Path) -> None:
    doc = measurements_document(
        P, sentinel={"version": "0.1.0", "mode": "development", "source_date_epoch": 0}
    )
    assert doc["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"
    assert doc["Sentinel"]["schema"] == 1
    data = dump_measurements(doc, tmp_path / "m.json")
    assert data == dump_measurements(json.loads(data)) and data.endswith(b"\n")
    loaded = load_measurements(tmp_path / "m.json")
    assert loaded.pcrs == P and loaded.sentinel is not None
    assert loaded.sentinel["version"] == "0.1.0" and loaded.source == str(tmp_path / "m.json")


def test_nitro_cli_build_enclave_output_is_accepted() -> None:
    # The shape `nitro-cli build-enclave` prints (upper-case hex is tolerated).
    out = {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": "AB" * 48,
            "PCR1": "cd" * 48,
            "PCR2": "ef" * 48,
        }
    }
    loaded = load_measurements(json.dumps(out).encode())
    assert loaded.pcrs == {0: b"\xab" * 48, 1: b"\xcd" * 48, 2: b"\xef" * 48}
    assert loaded.sentinel is None


def test_diff_names_only_differing_pcrs_and_absent_ones() -> None:
    actual = {0: P[0], 1: b"\x09" * 48, 2: P[2]}
    assert diff_pcrs(P, actual) == [PcrDiff(1, P[1], b"\x09" * 48)]
    assert diff_pcrs(P, actual, indices=[0, 2]) == []
    assert diff_pcrs({8: b"\x08" * 48}, actual) == [PcrDiff(8, b"\x08" * 48, None)]
    assert "got absent" in PcrDiff(8, b"\x08" * 48, None).describe()


def test_rejects_wrong_sizes_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PCR0 must be 48 bytes"):
        measurements_document({0: b"short"})
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(MalformedMeasurements, match="larger than"):
        load_measurements(big)
    with pytest.raises(MalformedMeasurements, match="PCR32"):
        load_measurements(json.dumps({"Measurements": {"PCR32": "00" * 48}}).encode())


def test_measured_image_matches_its_own_document(tmp_path: Path) -> None:
    image = write_eif(tmp_path / "a.eif", kernel=b"k", cmdline=b"c", ramdisks=[b"r0", b"r1"])
    m = measure_eif(tmp_path / "a.eif")
    doc = measurements_document(m.pcrs, sentinel={"sections": describe_sections(image)})
    loaded = load_measurements(dump_measurements(doc))
    assert diff_pcrs(loaded.pcrs, m.pcrs) == []
    assert [s["type"] for s in loaded.sentinel["sections"]] == [  # type: ignore[index]
        "kernel",
        "cmdline",
        "metadata",
        "ramdisk",
        "ramdisk",
    ]
