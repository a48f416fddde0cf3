"""`python -m verify enclave`: nitro-cli describe-enclaves JSON against published measurements."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from attestation_support import run_cli

from verify.measurements import dump_measurements, measurements_document

ROOT = Path(__file__).resolve().parents[1]
PCRS = {i: hashlib.sha384(f"published pcr{i}".encode()).digest() for i in (0, 1, 2)}


def described(pcrs: dict[int, bytes], **fields: Any) -> dict[str, Any]:
    """One enclave as `nitro-cli describe-enclaves` prints it."""
    entry = {
        "EnclaveName": "sentinel",
        "EnclaveID": "i-0123456789abcdef0-enc0123456789abcdef",
        "ProcessID": 4242,
        "EnclaveCID": 16,
        "NumberOfCPUs": 2,
        "CPUIDs": [1, 3],
        "MemoryMiB": 1024,
        "State": "RUNNING",
        "Flags": "NONE",
        "Measurements": {"HashAlgorithm": "Sha384 { ... }",
                         **{f"PCR{i}": v.hex() for i, v in pcrs.items()}},
    }
    entry.update(fields)
    return entry


@pytest.fixture
def measurements(tmp_path: Path) -> Path:
    path = tmp_path / "m.json"
    dump_measurements(measurements_document(PCRS), path)
    return path


def run(measurements: Path, enclaves: object, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verify", "enclave", "--measurements", str(measurements), "--json",
         *extra],
        input=enclaves if isinstance(enclaves, str) else json.dumps(enclaves),
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


def failed(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    report = json.loads(result.stdout)
    return [[c["name"] for c in e["checks"] if not c["ok"]] for e in report["enclaves"]]


def test_matching_enclave_from_stdin(measurements: Path) -> None:
    result = run(measurements, [described(PCRS)])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    assert [c["name"] for c in report["enclaves"][0]["checks"]] == ["state", "mode", "PCR0", "PCR1", "PCR2"]


def test_each_enclave_compared(measurements: Path) -> None:
    other = {**PCRS, 2: bytes(48)}
    result = run(measurements, [described(PCRS), described(other, EnclaveID="i-1-enc2")])
    assert result.returncode == 1
    assert failed(result) == [[], ["PCR2"]]
    assert "PCR2: expected" in result.stderr


def test_debug_mode_and_stopped_enclaves_fail(measurements: Path) -> None:
    zeros = {i: bytes(48) for i in PCRS}
    result = run(measurements, [described(zeros, Flags="DEBUG_MODE", State="TERMINATING")])
    assert result.returncode == 1
    assert failed(result) == [["state", "mode", "PCR0", "PCR1", "PCR2"]]


def test_explicit_pcrs(measurements: Path, tmp_path: Path) -> None:
    path = tmp_path / "describe.json"
    path.write_text(json.dumps([described({**PCRS, 1: bytes(48)})]))
    code, out, _ = run_cli("enclave", "--measurements", str(measurements), "--describe", str(path),
                           "--pcrs", "0,2", "--json")
    assert code == 0
    assert [c["name"] for c in json.loads(out)["enclaves"][0]["checks"]][2:] == ["PCR0", "PCR2"]


def test_no_enclave_running(measurements: Path) -> None:
    result = run(measurements, [])
    assert result.returncode == 1 and "no enclave is running" in result.stderr


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("not json", "not UTF-8 JSON"),
        ("{}", "must be a JSON array"),
        ('[{"State": "RUNNING"}]', "lacks EnclaveID or State"),
        (json.dumps([described(PCRS, Measurements=None)]), "has no Measurements"),
        (json.dumps([described({0: b"x" * 48}) | {"Measurements": {"PCR0": "zz"}}]),
         "PCR0 must be 96 hex digits"),
    ],
    ids=["garbage", "object", "no id", "no measurements", "bad pcr"],
)
def test_malformed_describe_output(measurements: Path, stdin: str, message: str) -> None:
    result = run(measurements, stdin)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_pcr_not_in_measurements(measurements: Path) -> None:
    result = run(measurements, [described(PCRS)], "--pcrs", "0,8")
    assert result.returncode == 2 and "no expected value for PCR 8" in result.stderr


def test_runs_nitro_cli_when_stdin_is_a_terminal(measurements: Path, tmp_path: Path) -> None:
    """No piped input: the command runs `nitro-cli describe-enclaves` itself.

    nitro-cli cannot exist on this machine, so a stand-in on PATH prints what the real one prints
    for one running enclave (and fails on any other subcommand); stdin is a real pseudo-terminal.
    """
    import os
    import pty

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "describe.json").write_text(json.dumps([described(PCRS)]))
    script = bin_dir / "nitro-cli"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = describe-enclaves ] && exec cat {tmp_path / "describe.json"}\n'
        "echo unexpected arguments >&2; exit 64\n"
    )
    script.chmod(0o755)
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "verify", "enclave", "--measurements", str(measurements), "--json"],
            stdin=secondary, capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
    finally:
        os.close(primary)
        os.close(secondary)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["enclaves"][0]["id"] == "i-0123456789abcdef0-enc0123456789abcdef"
