"""`python -m verify attestation --signer-address / --public-key`: a customer ties the PCRs of a
signer's document to the key that signs (the real signer with the NSM emulator, the real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from anvil_support import DEV_ADDR_0, ROOT
from signer_support import running_signer

from enclave.nsm.emulator import EmulatedNsm
from router.signer_client import SignerClient
from verify.attestation import PublicKeyMismatch, SignerAddressEquals, parse_document

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes, bytes]:
    """(document file, root PEM file, nonce, signer public key) from a real signer's ATTEST."""
    tmp = tmp_path_factory.mktemp("binding")
    # PCR0..2 all set: zeros there would be a debug-mode enclave, which verify refuses.
    nsm = EmulatedNsm(pcrs={i: bytes([i + 1]) * 48 for i in (0, 1, 2)})
    nonce = bytes(range(16))
    with running_signer(tmp, nsm=nsm) as server:
        with SignerClient.connect(str(server.address), spin_us=0) as client:
            doc = client.attest(nonce=nonce)
            key = client.address().public_key
    (tmp / "doc.bin").write_bytes(doc)
    (tmp / "unbound.bin").write_bytes(nsm.attestation(nonce=nonce, user_data=None, public_key=None))
    (tmp / "root.pem").write_bytes(nsm.root_pem)
    return tmp / "doc.bin", tmp / "root.pem", nonce, key


def _verify(doc: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verify", "attestation", str(doc), "--root", str(root), "--json",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _check(r: subprocess.CompletedProcess[str], name: str) -> dict[str, object]:
    return next(c for c in json.loads(r.stdout)["checks"] if c["name"] == name)


def test_signer_address_binding_passes(signed) -> None:
    doc, root, nonce, key = signed
    r = _verify(doc, root, "--signer-address", DEV_ADDR_0, "--nonce", nonce.hex(),
                "--public-key", key.hex())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _check(r, "signer_address")["ok"] and _check(r, "public_key")["ok"]
    assert json.loads(r.stdout)["attestation"]["public_key"] == key.hex()


def test_other_signer_address_fails(signed) -> None:
    doc, root, _, _ = signed
    other = "0x" + "11" * 20
    r = _verify(doc, root, "--signer-address", other)
    assert r.returncode == 1, r.stderr
    detail = str(_check(r, "signer_address")["message"])
    assert DEV_ADDR_0.lower() in detail and other in detail
    r = _verify(doc, root, "--public-key", "04" + "00" * 64)
    assert r.returncode == 1 and not _check(r, "public_key")["ok"]


def test_document_without_key_fails(signed) -> None:
    doc, root, _, _ = signed
    r = _verify(doc.parent / "unbound.bin", root, "--signer-address", DEV_ADDR_0)
    assert r.returncode == 1, r.stderr
    assert "uncompressed secp256k1 key" in str(_check(r, "signer_address")["message"])


@pytest.mark.parametrize("value", ["0x1234", "0xzz" + "00" * 19], ids=["short", "not-hex"])
def test_malformed_signer_address_exits_2(signed, value: str) -> None:
    doc, root, _, _ = signed
    r = _verify(doc, root, "--signer-address", value)
    assert r.returncode == 2 and "--signer-address" in r.stderr and "Traceback" not in r.stderr


def test_check_object(signed) -> None:
    doc, _, _, key = signed
    document = parse_document(doc.read_bytes()).document
    SignerAddressEquals(bytes.fromhex(DEV_ADDR_0[2:])).verify(document)
    with pytest.raises(PublicKeyMismatch, match="binds the key of address"):
        SignerAddressEquals(bytes(20)).verify(document)
    with pytest.raises(ValueError, match="20 bytes"):
        SignerAddressEquals(bytes(19))
    assert len(key) == 65
