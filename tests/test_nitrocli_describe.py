"""`verify pcr --json` is `nitro-cli describe-eif`'s object; `pcr --signing-certificate/--input`
are nitro-cli's `pcr`; `--measurements` may be repeated (rolling deploy).

The field list is tests/assets/nitrocli/describe-eif.fields.json, written from nitro-cli's source
(its `_source` says where); the values are computed here independently with `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from verify.eif import LocalEifSigner, default_identity, write_eif

ROOT = Path(__file__).resolve().parent.parent
FIELDS = json.loads((ROOT / "tests/assets/nitrocli/describe-eif.fields.json").read_text())


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verify", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _signer() -> tuple[LocalEifSigner, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    issuer = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Org"),
        x509.NameAttribute(NameOID.COMMON_NAME, "eif signer"),
    ])  # fmt: skip
    cert = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2026, 11, 12, 13, 14, 15, tzinfo=dt.UTC))
            .sign(key, hashes.SHA384()))  # fmt: skip
    return LocalEifSigner(key, cert.public_bytes(serialization.Encoding.PEM)), cert


def _pcr(data: bytes) -> str:
    return hashlib.sha384(bytes(48) + hashlib.sha384(data).digest()).hexdigest()


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, x509.Certificate, Path]:
    tmp = tmp_path_factory.mktemp("describe")
    signer, cert = _signer()
    eif = tmp / "signed.eif"
    write_eif(eif, kernel=b"kernel" * 50, cmdline=b"console=ttyS0", ramdisks=[b"r0", b"r1"],
              signer=signer, metadata=default_identity(
                  image_name="img", image_version="2", docker_info={"Id": "sha256:x"},
                  custom_metadata={"team": "blue", "n": 3}))  # fmt: skip
    pem = tmp / "cert.pem"
    pem.write_bytes(signer.certificate_pem)
    return eif, cert, pem


def test_signed_describe_is_nitro_clis(signed: tuple[Path, x509.Certificate, Path]) -> None:
    eif, cert, _ = signed
    out = _verify("pcr", str(eif), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc) == FIELDS["EifDescribeInfo"]
    for key, kind in FIELDS["EifDescribeInfo.types"].items():
        assert type(doc[key]).__name__ == kind, key
    assert list(doc["Measurements"]) == FIELDS["Measurements.signed"]
    assert doc["Measurements"]["HashAlgorithm"] == FIELDS["HashAlgorithm"]
    assert doc["Measurements"]["PCR8"] == _pcr(cert.public_bytes(serialization.Encoding.DER))
    info = doc["SigningCertificate"]
    assert list(info) == FIELDS["SignCertificateInfo"]
    for key, pattern in FIELDS["SignCertificateInfo.formats"].items():
        assert re.fullmatch(pattern, info[key]), (key, info[key])
    assert info["IssuerName"] == {"commonName": "eif signer", "countryName": "US",
                                  "organizationName": "Example Org"}  # fmt: skip
    assert list(info["IssuerName"]) == sorted(info["IssuerName"])  # a BTreeMap
    assert info["Algorithm"] == "ecdsa-with-SHA384"
    assert (info["NotBefore"], info["NotAfter"]) == ("Mar  4 05:06:07 2025 GMT",
                                                     "Nov 12 13:14:15 2026 GMT")  # fmt: skip
    assert info["Signature"] == ":".join(f"{b:02X}" for b in cert.signature)
    assert doc["CheckCRC"] is True and doc["SignatureCheck"] is True
    assert list(doc["Metadata"]) == FIELDS["MetadataDescribeInfo"] + ["n", "team"]
    assert (doc["Metadata"]["team"], doc["Metadata"]["n"]) == ("blue", 3)
    assert FIELDS["MetadataDescribeInfo.flattened"] not in doc["Metadata"]
    assert "Comparison" not in doc  # ours only with --measurements


def test_unsigned_v1_crc_is_a_bool(tmp_path: Path) -> None:
    eif = tmp_path / "v1.eif"
    write_eif(eif, kernel=b"k", cmdline=b"c", ramdisks=[b"r"], version=1, metadata=None)
    data = bytearray(eif.read_bytes())
    data[544:548] = bytes(4)  # version 1 predates the CRC: its field is zero
    eif.write_bytes(bytes(data))
    out = _verify("pcr", str(eif), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc) == [k for k in FIELDS["EifDescribeInfo"]
                         if k not in FIELDS["EifDescribeInfo.optional"]]  # fmt: skip
    assert list(doc["Measurements"]) == FIELDS["Measurements.unsigned"]
    # nitro-cli compares the header's field (zero in version 1) with the computed CRC.
    assert doc["CheckCRC"] is False


def test_pcr_of_signing_certificate_equals_eifs_pcr8(
    signed: tuple[Path, x509.Certificate, Path], tmp_path: Path
) -> None:
    eif, _, pem = signed
    pcr8 = json.loads(_verify("pcr", str(eif), "--json").stdout)["Measurements"]["PCR8"]
    out = _verify("pcr", "--signing-certificate", str(pem), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"PCR8": pcr8}
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    out = _verify("pcr", "--signing-certificate", str(bad))
    assert out.returncode == 2 and "not a PEM or DER X.509 certificate" in out.stderr
    out = _verify("pcr", "--signing-certificate", str(tmp_path / "absent.pem"))
    assert out.returncode == 2 and "absent.pem" in out.stderr and "Traceback" not in out.stderr


def test_pcr_of_input_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    (tmp_path / "f").write_bytes(data)
    out = _verify("pcr", "--input", str(tmp_path / "f"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"PCR": _pcr(data)}
    out = _verify("pcr", "--input", str(tmp_path / "f"), "--signing-certificate", "x")
    assert out.returncode == 2 and "not both" in out.stderr
    assert _verify("pcr").returncode == 2


def test_rolling_deploy_any_measurements_file_matches(
    signed: tuple[Path, x509.Certificate, Path], tmp_path: Path
) -> None:
    eif, _, _ = signed
    current = json.loads(_verify("pcr", str(eif), "--json").stdout)["Measurements"]
    old = {**current, "PCR0": "ab" * 48}
    (tmp_path / "old.json").write_text(json.dumps({"Measurements": old}))
    (tmp_path / "new.json").write_text(json.dumps({"Measurements": current}))
    out = _verify("pcr", str(eif), "--measurements", str(tmp_path / "old.json"),
                  "--measurements", str(tmp_path / "new.json"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    comparison = json.loads(out.stdout)["Comparison"]
    assert comparison["Matched"] == str(tmp_path / "new.json") and comparison["Matches"]
    assert [f["Matches"] for f in comparison["Files"]] == [False, True]
    assert f"every PCR in {tmp_path / 'new.json'} matches" in out.stderr.replace("\n", "")
    out = _verify("pcr", str(eif), "--measurements", str(tmp_path / "old.json"),
                  "--measurements", str(tmp_path / "old.json"))  # fmt: skip
    assert out.returncode == 2 and "given twice" in out.stderr
    (tmp_path / "older.json").write_text(json.dumps({"Measurements": {**old, "PCR1": "cd" * 48}}))
    out = _verify("pcr", str(eif), "--measurements", str(tmp_path / "old.json"),
                  "--measurements", str(tmp_path / "older.json"), "--json")  # fmt: skip
    assert out.returncode == 1 and "no measurements file matches" in out.stderr
    assert json.loads(out.stdout)["Comparison"]["Matched"] is None
