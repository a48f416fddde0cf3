"""`python -m verify attestation`: exit codes, JSON, input forms; end to end with the NSM emulator."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from attestation_support import run_cli
from cryptography import x509

from enclave.nsm.emulator import EmulatedNsm, EmulatorCa
from verify.attestation import DOCUMENT_TIME, AttestationVerifier, ChainInvalid, UnsafeNoOp
from verify.measurements import dump_measurements, measurements_document

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets" / "attestation"
EVERVAULT = ASSETS / "evervault_beta_valid_2022.bin"
ETERNIS = ASSETS / "eternis_example_2024.bin"
T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
# The chain is checked now unless --at says otherwise: archived documents pass their own time.
EVERVAULT_AT = "2022-10-13T08:58:02.136Z"
ETERNIS_AT = "2024-09-09T19:49:12.400Z"
PCRS = {i: hashlib.sha384(f"image pcr{i}".encode()).digest() for i in (0, 1, 2)}


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verify", "attestation", *args],
        input=None if stdin is None else stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def evervault_measurements(tmp_path: Path, **changes: bytes) -> Path:
    from verify.attestation import parse_document

    pcrs = dict(parse_document(EVERVAULT.read_bytes()).document.pcrs)
    published = {i: pcrs[i] for i in (0, 1, 2, 8)}
    for key, value in changes.items():
        published[int(key.removeprefix("pcr"))] = value
    path = tmp_path / "measurements.json"
    dump_measurements(measurements_document(published), path)
    return path


# --- real documents through the real process --------------------------------------------------


def test_real_document_verified_with_measurements_json(tmp_path: Path) -> None:
    measurements = evervault_measurements(tmp_path)
    result = cli(str(EVERVAULT), "--measurements", str(measurements), "--json", "--at", EVERVAULT_AT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == ["cose", "alg", "payload", "certificates", "chain", "timestamp", "signature",
                     "PCR0", "PCR1", "PCR2", "PCR8", "debug-mode"]
    assert report["validated_at"] == "2022-10-13T08:58:02.136000+00:00"
    assert report["attestation"]["pcrs"]["8"].startswith("8790eb3c")
    assert "OK" in result.stderr and "Traceback" not in result.stderr


def test_pcr_mismatch_exit_1_names_the_pcr(tmp_path: Path) -> None:
    measurements = evervault_measurements(tmp_path, pcr2=bytes(48))
    result = cli(str(EVERVAULT), "--measurements", str(measurements), "--json", "--at", EVERVAULT_AT)
    assert result.returncode == 1
    failed = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert [(c["name"], c["error"]) for c in failed] == [("PCR2", "PcrMismatch")]
    assert "PCR2: got d8f114da" in failed[0]["message"]
    assert "PCR2" in result.stderr and "FAILED" in result.stderr


def test_explicit_pcr_selection(tmp_path: Path) -> None:
    measurements = evervault_measurements(tmp_path, pcr2=bytes(48))
    code, out, _ = run_cli("attestation", str(EVERVAULT), "--measurements", str(measurements),
                            "--pcrs", "0,1,8", "--json", "--at", EVERVAULT_AT)
    assert code == 0
    assert [c["name"] for c in json.loads(out)["checks"]][-4:] == ["PCR0", "PCR1", "PCR8", "debug-mode"]
    code, _, err = run_cli("attestation", str(EVERVAULT), "--measurements", str(measurements),
                            "--pcrs", "0,4")
    assert code == 2 and "no expected value for PCR 4" in err


def test_base64_on_stdin_and_nonce() -> None:
    text = base64.b64encode(ETERNIS.read_bytes())
    # The Eternis document comes from a debug-mode enclave (PCR0 zero).
    ok = cli("-", "--at", ETERNIS_AT, "--allow-debug", "--nonce", "00" * 19 + "01", "--user-data",
             "1220c682bc6c814a6748f490c8c8e48e5c40c505e5c99b0b617b85cdc71d236f2a381220" + "00" * 32,
             stdin=text)
    assert ok.returncode == 0, ok.stderr
    wrong = cli("-", "--at", ETERNIS_AT, "--allow-debug", "--nonce", "00" * 19 + "02", "--json",
                stdin=text)
    assert wrong.returncode == 1
    assert [c["name"] for c in json.loads(wrong.stdout)["checks"] if not c["ok"]] == ["nonce"]


def test_after_leaf_expiry_and_max_age() -> None:
    code, out, _ = run_cli("attestation", str(ETERNIS), "--at", "2024-09-09T22:49:13Z", "--json",
                           "--allow-no-policy", "--allow-debug")
    assert code == 1
    assert [c["name"] for c in json.loads(out)["checks"] if not c["ok"]] == ["chain"]
    code, _, _ = run_cli("attestation", str(ETERNIS), "--at", "2024-09-09T19:50:00Z", "--max-age", "60",
                         "--allow-debug")
    assert code == 0
    code, out, _ = run_cli("attestation", str(ETERNIS), "--at", "2024-09-09T19:51:00Z",
                            "--max-age", "60", "--json", "--allow-debug")
    assert code == 1
    assert [c["name"] for c in json.loads(out)["checks"] if not c["ok"]] == ["freshness"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.bin", "--allow-no-policy"], "cannot read missing.bin"),
        ([str(ETERNIS), "--nonce", "zz"], "--nonce: not hex"),
        ([str(ETERNIS), "--at", "yesterday"], "not an ISO 8601 time"),
        ([str(ETERNIS), "--at", "2024-09-09T19:50:00"], "has no time zone"),
        ([str(ETERNIS), "--pcrs", "0"], "--pcrs needs --measurements"),
        ([str(ETERNIS), "--root", "missing.pem"], "cannot read root certificate"),
        ([str(ETERNIS), "--max-age", "-1"], "must not be negative"),
        ([str(ETERNIS), "--measurements", "missing.json"], "no such measurements file"),
    ],
    ids=["no file", "bad nonce", "bad time", "naive time", "pcrs alone", "no root", "negative age",
         "no measurements"],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    code, out, err = run_cli("attestation", *args)
    assert code == 2
    assert message in err and "Traceback" not in err and out == ""


def test_garbage_input_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "doc.bin"
    path.write_bytes(ETERNIS.read_bytes()[:100])
    code, out, err = run_cli("attestation", str(path), "--json", "--allow-no-policy")
    assert code == 2
    report = json.loads(out)
    assert report["checks"] == [{"name": "cose", "ok": False, "error": "MalformedAttestation",
                                 "message": report["checks"][0]["message"]}]
    assert "not valid CBOR" in report["checks"][0]["message"]


# --- end to end with the NSM emulator --------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> EmulatedNsm:
    return EmulatedNsm(ca=EmulatorCa.generate(now=T), pcrs=PCRS, clock=lambda: T)


def test_emulator_document_end_to_end(emulator: EmulatedNsm, tmp_path: Path) -> None:
    document = emulator.attestation(user_data=b"router", nonce=b"\x01" * 32, public_key=None)
    (tmp_path / "doc.bin").write_bytes(document)
    (tmp_path / "root.pem").write_bytes(emulator.root_pem)
    dump_measurements(measurements_document(PCRS), tmp_path / "m.json")
    common = [str(tmp_path / "doc.bin"), "--root", str(tmp_path / "root.pem"),
              "--measurements", str(tmp_path / "m.json"), "--json", "--at", T.isoformat()]
    ok = cli(*common, "--nonce", "01" * 32, "--user-data", b"router".hex())
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["attestation"]["module_id"].startswith("i-emulated")
    assert report["root_sha256"] != "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

    bad = cli(*common, "--nonce", "02" * 32)
    assert bad.returncode == 1
    assert [c["name"] for c in json.loads(bad.stdout)["checks"] if not c["ok"]] == ["nonce"]

    # The AWS root (the default) never accepts an emulator document.
    aws = cli(str(tmp_path / "doc.bin"), "--json", "--allow-no-policy", "--at", T.isoformat())
    assert aws.returncode == 1
    assert [c["name"] for c in json.loads(aws.stdout)["checks"] if not c["ok"]] == ["chain"]


def test_emulator_document_pcr_mismatch(emulator: EmulatedNsm, tmp_path: Path) -> None:
    document = emulator.attestation(user_data=None, nonce=None, public_key=b"pk")
    (tmp_path / "doc.bin").write_bytes(document)
    (tmp_path / "root.pem").write_bytes(emulator.root_pem)
    dump_measurements(measurements_document({**PCRS, 1: bytes(48)}), tmp_path / "m.json")
    code, out, _ = run_cli("attestation", str(tmp_path / "doc.bin"), "--root", str(tmp_path / "root.pem"),
                            "--measurements", str(tmp_path / "m.json"), "--json", "--at", T.isoformat())
    assert code == 1
    assert [c["name"] for c in json.loads(out)["checks"] if not c["ok"]] == ["PCR1"]


def test_emulator_documents_through_the_library(emulator: EmulatedNsm) -> None:
    root = x509.load_pem_x509_certificate(emulator.root_pem)
    verifier = AttestationVerifier(root=root, now=DOCUMENT_TIME)
    for i in range(3):
        verified = verifier.verify(emulator.attestation(user_data=None, nonce=bytes([i]), public_key=None),
                                   UnsafeNoOp())
        assert verified.document.nonce == bytes([i]) and verified.pcrs[0] == PCRS[0]
    with pytest.raises(ChainInvalid):
        AttestationVerifier.aws_nitro(now=DOCUMENT_TIME).verify(
            emulator.attestation(user_data=None, nonce=None, public_key=None), UnsafeNoOp()
        )


AT_TEST_PKI = "2025-03-01T12:00:05Z"  # inside attestation_support's 3-hour signing certificate


def test_document_text_is_never_read_as_markup(tmp_path: Path) -> None:
    """module_id is chosen by whoever made the document; the report prints it literally."""
    from attestation_support import TestPki, make_document

    pki = TestPki.generate("markup")
    (tmp_path / "root.pem").write_bytes(pki.root_pem)
    (tmp_path / "doc.bin").write_bytes(make_document(pki, module_id="[/] [bold]i-x[/bold] [red]"))
    code, _, err = run_cli("attestation", str(tmp_path / "doc.bin"), "--root", str(tmp_path / "root.pem"),
                           "--allow-no-policy", "--at", AT_TEST_PKI)
    assert code == 0, err
    assert "[/] [bold]i-x[/bold] [red]" in err
