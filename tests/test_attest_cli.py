"""Fetch an attestation document from a running signer: `router attest`, `verify attestation
--signer` (fetch with a fresh nonce and verify in one step), `enclave emulator-root` (the root to
check emulator documents with), and repeated --measurements on `verify attestation`/`enclave`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from signer_support import ROOT, running_signer

from enclave.nsm.ca import EmulatorCa
from enclave.nsm.emulator import EmulatedNsm
from verify.attestation import AttestationVerifier, NonceEquals, parse_document

PCRS = {0: b"\x10" * 48, 1: b"\x11" * 48, 2: b"\x12" * 48}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A signer whose emulated NSM signs with the CA in tmp/ca; root.pem from emulator-root."""
    out = _run("enclave", "emulator-root", "--ca", str(tmp_path / "ca"), "--out",
               str(tmp_path / "root.pem"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "created" in out.stderr
    nsm = EmulatedNsm(ca=EmulatorCa.load(tmp_path / "ca"), pcrs=PCRS)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Measurements": {f"PCR{i}": v.hex() for i, v in PCRS.items()}}))
    with running_signer(tmp_path, nsm=nsm) as server:
        yield str(server.address), tmp_path / "root.pem", good


def test_emulator_root_is_stable_and_checks_documents(env: tuple[str, Path, Path],
                                                      tmp_path: Path) -> None:
    signer, root, _ = env
    again = _run("enclave", "emulator-root", "--ca", str(tmp_path / "ca"), "--out",
                 str(tmp_path / "root2.pem"))  # fmt: skip
    assert again.returncode == 0 and "using" in again.stderr
    assert (tmp_path / "root2.pem").read_bytes() == root.read_bytes()
    bad = _run("enclave", "emulator-root", "--ca", str(tmp_path / "ca"), "--out",
               str(tmp_path / "no" / "dir" / "r.pem"))  # fmt: skip
    assert bad.returncode == 2 and "--out" in bad.stderr and "Traceback" not in bad.stderr


def test_router_attest_fetches_a_document(env: tuple[str, Path, Path], tmp_path: Path) -> None:
    signer, root, good = env
    doc = tmp_path / "doc.cbor"
    out = _run("router", "attest", "--signer", signer, "--nonce", "ab" * 16, "--out", str(doc))
    assert out.returncode == 0, out.stderr
    from cryptography import x509

    verified = AttestationVerifier(root=x509.load_pem_x509_certificate(root.read_bytes())).verify(
        doc.read_bytes(), NonceEquals(bytes.fromhex("ab" * 16))
    )
    assert verified.document.nonce == bytes.fromhex("ab" * 16)
    # base64 on stdout without --out; the random nonce is reported
    out = _run("router", "attest", "--signer", signer, "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    fetched = parse_document(base64.b64decode(answer["document"]))
    assert fetched.document.nonce == bytes.fromhex(answer["nonce"]) and len(answer["nonce"]) == 64
    # and verify attestation checks it with that nonce
    check = _run("verify", "attestation", str(doc), "--root", str(root), "--measurements",
                 str(good), "--nonce", "ab" * 16)  # fmt: skip
    assert check.returncode == 0, check.stderr
    bad = _run("router", "attest", "--signer", signer, "--nonce", "xyz")
    assert bad.returncode == 2 and "--nonce: not hex" in bad.stderr


def test_verify_attestation_signer_one_step(env: tuple[str, Path, Path], tmp_path: Path) -> None:
    signer, root, good = env
    out = _run("verify", "attestation", "--signer", signer, "--root", str(root),
               "--measurements", str(good), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verified"] and report["measurements"]["matched"] == str(good)
    names = [c["name"] for c in report["checks"]]
    assert "nonce" in names  # mandatory with --signer
    assert len(report["attestation"]["nonce"]) == 64
    # a second run uses another nonce
    again = json.loads(_run("verify", "attestation", "--signer", signer, "--root", str(root),
                            "--measurements", str(good), "--json").stdout)  # fmt: skip
    assert again["attestation"]["nonce"] != report["attestation"]["nonce"]


@pytest.mark.parametrize(
    "args,match",
    [
        (["--nonce", "00"], "--nonce with --signer"),
        (["DOC"], "not both"),
    ],
    ids=["nonce", "doc-and-signer"],
)
def test_verify_attestation_signer_errors(env: tuple[str, Path, Path], args: list[str],
                                          match: str) -> None:
    signer, root, good = env
    out = _run("verify", "attestation", *args, "--signer", signer, "--root", str(root),
               "--measurements", str(good))  # fmt: skip
    assert out.returncode == 2 and match in out.stderr and "Traceback" not in out.stderr


def test_verify_attestation_signer_unreachable(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"Measurements": {"PCR0": "00" * 48}}))
    out = _run("verify", "attestation", "--signer", f"unix:{tmp_path / 'absent.sock'}",
               "--measurements", str(tmp_path / "m.json"), "--timeout", "1")  # fmt: skip
    assert out.returncode == 2 and "cannot connect" in out.stderr and "Traceback" not in out.stderr
    out = _run("verify", "attestation", "--signer", "udp:x", "--measurements",
               str(tmp_path / "m.json"))  # fmt: skip
    assert out.returncode == 2 and "signer address" in out.stderr


def test_rolling_deploy_attestation_any_file(env: tuple[str, Path, Path], tmp_path: Path) -> None:
    signer, root, good = env
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"Measurements": {"PCR0": "aa" * 48, "PCR1": "bb" * 48}}))
    out = _run("verify", "attestation", "--signer", signer, "--root", str(root),
               "--measurements", str(old), "--measurements", str(good), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["measurements"] == {"matched": str(good),
                                                      "files": [str(old), str(good)]}  # fmt: skip
    out = _run("verify", "attestation", "--signer", signer, "--root", str(root),
               "--measurements", str(old), "--json")  # fmt: skip
    assert out.returncode == 1
    assert json.loads(out.stdout)["measurements"]["matched"] is None
    out = _run("verify", "attestation", "--signer", signer, "--root", str(root),
               "--measurements", str(old), "--measurements", str(old))  # fmt: skip
    assert out.returncode == 2 and "given twice" in out.stderr


def test_rolling_deploy_enclave_any_file(tmp_path: Path) -> None:
    pcrs = {f"PCR{i}": v.hex() for i, v in PCRS.items()}
    described = [{"EnclaveID": "i-1-enc-1", "State": "RUNNING", "Flags": "NONE",
                  "Measurements": pcrs}]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(described))
    (tmp_path / "new.json").write_text(json.dumps({"Measurements": pcrs}))
    (tmp_path / "old.json").write_text(json.dumps({"Measurements": {**pcrs, "PCR0": "cc" * 48}}))
    out = subprocess.run(
        [sys.executable, "-m", "verify", "enclave", "--measurements", str(tmp_path / "old.json"),
         "--measurements", str(tmp_path / "new.json"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        input=(tmp_path / "d.json").read_text(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["enclaves"][0]["measurements_matched"] == str(tmp_path / "new.json")
