"""Release pipeline: publish + sign (local key and AWS KMS on moto's server) + `verify measurements`.

The EIF is a small real one from `verify.eif.write_eif`; its measurements file has the shape
`python -m reproducible build` writes. KMS is moto in server mode on 127.0.0.1, driven through boto3.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from attestation_support import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from reproducible.release import ReleaseError, publish_release, update_release_table
from reproducible.release_keys import (
    EifSigningKey,
    KmsReleaseKey,
    LocalReleaseKey,
    ReleaseKeyError,
    self_signed_certificate,
)
from verify.dsse import UnknownSigner, key_id, pae, parse_envelope, sign_envelope
from verify.eif import write_eif
from verify.errors import MalformedInput, SignatureInvalid
from verify.measurements import dump_measurements, measurements_document
from verify.pcr import measure_eif
from verify.signed_release import DigestMismatch, sha256_file, verify_release

ROOT = Path(__file__).resolve().parents[1]


# --- fixtures -----------------------------------------------------------------------------------


def build_output(build: Path, *, version: str = "9.9.9", signer: Any = None) -> Path:
    """What `python -m reproducible build` leaves in build/: sentinel.eif + measurements.json."""
    build.mkdir(parents=True, exist_ok=True)
    eif = build / "sentinel.eif"
    write_eif(eif, kernel=b"\x7fELF kernel" * 100, cmdline=b"console=ttyS0",
              ramdisks=[b"bootstrap" * 50, b"customer" * 70], signer=signer)
    measured = measure_eif(eif)
    doc = measurements_document(dict(measured.pcrs), sentinel={
        "version": version, "mode": "development", "source_date_epoch": 1700000000,
        "eif_sha256": sha256_file(eif), "kernel_version": "6.12-test", "cmdline": "console=ttyS0",
        "sections": [], "inputs": [
            {"kind": "deb", "role": "kernel", "name": "linux-image", "version": "6.12",
             "sha256": "ab" * 32},
            {"kind": "wheel", "name": "cbor2", "version": "5.6.5", "filename": "cbor2.whl",
             "sha256": "cd" * 32},
        ],
    })
    dump_measurements(doc, build / "measurements.json")
    return build


@pytest.fixture
def dev_key(tmp_path: Path) -> LocalReleaseKey:
    return LocalReleaseKey.generate(tmp_path / "release.pem")


def public_pem(key: Any, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture(scope="module")
def kms() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=f"http://{host}:{port}",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        yield client
    finally:
        server.stop()


# --- DSSE ---------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_envelope_round_trip_and_refusals(dev_key: LocalReleaseKey) -> None:
    envelope = sign_envelope(b'{"a": 1}', [dev_key])
    parsed = parse_envelope(envelope.to_json())
    assert parsed == envelope and parsed.verify(dev_key.public_key()) == b'{"a": 1}'
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(UnknownSigner, match=f"no signature by key {key_id(other)}"):
        parsed.verify(other)
    tampered = parse_envelope(envelope.to_json().replace(b"eyJhIjogMX0=", b"eyJhIjogMn0="))
    with pytest.raises(SignatureInvalid):
        tampered.verify(dev_key.public_key())
    retyped = type(parsed)("text/plain", parsed.payload, parsed.signatures)
    with pytest.raises(SignatureInvalid):  # the payload type is signed too
        retyped.verify(dev_key.public_key())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"payload": "", "signatures": [{"keyid": "k", "sig": ""}]}', "payloadType"),
        (b'{"payloadType": "t", "payload": "", "signatures": []}', "non-empty array"),
        (b'{"payloadType": "t", "payload": "", "signatures": [{"sig": ""}]}', "keyid"),
        (b'{"payloadType": "t", "payload": "!!", "signatures": [{"keyid": "k", "sig": ""}]}',
         "payload is not valid base64"),
    ],
    ids=["not json", "array", "no type", "no signatures", "no keyid", "bad base64"],
)
def test_malformed_envelope(data: bytes, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        parse_envelope(data)


# --- keys ---------------------------------------------------------------------------------------


def test_local_key_file(tmp_path: Path, dev_key: LocalReleaseKey) -> None:
    path = tmp_path / "release.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = LocalReleaseKey.from_pem_file(path)
    assert key_id(loaded.public_key()) == key_id(dev_key.public_key())
    assert "PRIVATE" not in repr(loaded) and key_id(loaded.public_key()) in repr(loaded)
    with pytest.raises(ReleaseKeyError, match="cannot create"):
        LocalReleaseKey.generate(path)  # never overwrites a key
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ReleaseKeyError, match="not a usable PEM private key") as info:
        LocalReleaseKey.from_pem_file(tmp_path / "bad.pem")
    assert "AAAA" not in str(info.value)
    with pytest.raises(ReleaseKeyError, match="EC P-384"):
        LocalReleaseKey(ec.generate_private_key(ec.SECP256R1()))


def test_kms_key_signs_and_checks_spec(kms: Any) -> None:
    key_meta = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    key = KmsReleaseKey(key_meta["KeyId"], client=kms)
    message = pae("application/vnd.in-toto+json", b"{}")
    key.public_key().verify(key.sign(message), message, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(ReleaseKeyError, match="at most 4096 bytes"):
        key.sign(bytes(4097))
    p256 = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(ReleaseKeyError, match="ECC_NIST_P256 for SIGN_VERIFY, expected ECC_NIST_P384"):
        KmsReleaseKey(p256, client=kms)
    with pytest.raises(ReleaseKeyError, match="GetPublicKey for alias/missing failed"):
        KmsReleaseKey("alias/missing", client=kms)


def test_self_signed_certificate_for_kms_key_signs_an_eif(kms: Any, tmp_path: Path) -> None:
    key_meta = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    signer = EifSigningKey.self_signed(KmsReleaseKey(key_meta["KeyId"], client=kms))
    cert = x509.load_pem_x509_certificate(signer.certificate_pem)
    assert cert.public_key() == signer.key.public_key()
    build_output(tmp_path / "build", signer=signer)
    measured = measure_eif(tmp_path / "build" / "sentinel.eif")
    assert measured.is_signed and measured.signature_ok and 8 in measured.pcrs


def test_self_signed_certificate_with_local_key_is_reproducible(dev_key: LocalReleaseKey) -> None:
    assert self_signed_certificate(dev_key) == self_signed_certificate(dev_key)


# --- publish + verify ----------------------------------------------------------------------------


def run_verify(*args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_cli("measurements", *args, "--json")
    return code, json.loads(out) if out else {}, err


def test_publish_with_local_key_and_verify(tmp_path: Path, dev_key: LocalReleaseKey) -> None:
    build = build_output(tmp_path / "build")
    out = tmp_path / "measurements"
    out.mkdir()
    (out / "README.md").write_text("# Published measurements\n\nFormat notes.\n")
    artifacts = publish_release(eif=build / "sentinel.eif", measurements=build / "measurements.json",
                                out_dir=out, signer=dev_key, builder_version="0.1.0",
                                source_commit="a" * 40)
    assert artifacts.measurements == out / "9.9.9.json"
    assert artifacts.measurements.read_bytes() == (build / "measurements.json").read_bytes()
    assert artifacts.signature == out / "9.9.9.json.sig"

    provenance = json.loads(artifacts.provenance.read_text())
    assert provenance["_type"] == "https://in-toto.io/Statement/v1"
    assert provenance["predicateType"] == "https://slsa.dev/provenance/v1"
    assert provenance["subject"] == [{"name": "sentinel.eif",
                                      "digest": {"sha256": sha256_file(build / "sentinel.eif")}}]
    definition = provenance["predicate"]["buildDefinition"]
    assert definition["internalParameters"]["source_date_epoch"] == 1700000000
    assert definition["resolvedDependencies"][0] == {"name": "sentinel source",
                                                     "digest": {"gitCommit": "a" * 40}}
    assert {"name": "cbor2", "digest": {"sha256": "cd" * 32},
            "annotations": {"kind": "wheel", "version": "5.6.5", "filename": "cbor2.whl"}} in (
        definition["resolvedDependencies"])
    assert provenance["predicate"]["runDetails"]["builder"]["version"] == {
        "sentinel-reproducible": "0.1.0"}

    readme = (out / "README.md").read_text()
    assert "Format notes." in readme and "| 9.9.9 | development |" in readme
    assert artifacts.key_id[:16] in readme

    pub = public_pem(dev_key, tmp_path / "pub.pem")
    code, report, err = run_verify(str(artifacts.measurements), "--key", str(pub),
                                   "--provenance", str(artifacts.provenance),
                                   "--eif", str(build / "sentinel.eif"))
    assert code == 0, err
    assert [c["name"] for c in report["checks"]] == [
        "measurements", "format", "envelope", "signature", "statement", "subject", "version", "pcrs",
        "provenance", "eif"]
    assert report["statement"]["predicate"]["version"] == "9.9.9"

    # Publishing the same build again is a no-op; the README keeps one row for the release.
    publish_release(eif=build / "sentinel.eif", measurements=build / "measurements.json",
                    out_dir=out, signer=dev_key, builder_version="0.1.0", source_commit="a" * 40)
    assert (out / "README.md").read_text().count("| 9.9.9 | development |") == 1


def test_publish_refuses_changed_release_and_foreign_eif(tmp_path: Path, dev_key: LocalReleaseKey) -> None:
    build = build_output(tmp_path / "build")
    out = tmp_path / "measurements"
    publish_release(eif=build / "sentinel.eif", measurements=build / "measurements.json",
                    out_dir=out, signer=dev_key, builder_version="0.1.0")
    other = build_output(tmp_path / "other")
    write_eif(other / "sentinel.eif", kernel=b"another kernel", cmdline=b"x", ramdisks=[b"r"])
    with pytest.raises(ReleaseError, match="describes an EIF with sha256"):
        publish_release(eif=other / "sentinel.eif", measurements=build / "measurements.json",
                        out_dir=out, signer=dev_key, builder_version="0.1.0")
    changed = build_output(tmp_path / "changed")
    doc = json.loads((changed / "measurements.json").read_text())
    doc["Sentinel"]["kernel_version"] = "6.13"
    (changed / "measurements.json").write_text(json.dumps(doc))
    with pytest.raises(ReleaseError, match="already published with different content"):
        publish_release(eif=changed / "sentinel.eif", measurements=changed / "measurements.json",
                        out_dir=out, signer=dev_key, builder_version="0.1.0")


def test_publish_with_kms_key_through_the_cli(kms: Any, tmp_path: Path) -> None:
    key_meta = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms.create_alias(AliasName="alias/sentinel-release", TargetKeyId=key_meta["KeyId"])
    build = build_output(tmp_path / "build")
    out = tmp_path / "measurements"
    endpoint = kms.meta.endpoint_url
    result = subprocess.run(
        [sys.executable, "-m", "reproducible", "release", "--build", str(build), "--out", str(out),
         "--kms-key-id", "alias/sentinel-release", "--kms-endpoint-url", endpoint,
         "--kms-region", "us-east-1", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)
    kms_public = kms.get_public_key(KeyId=key_meta["KeyId"])["PublicKey"]
    assert Path(published["public_key"]).read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    kms_key = load_der_public_key(kms_public)
    assert isinstance(kms_key, ec.EllipticCurvePublicKey)
    assert published["key_id"] == key_id(kms_key)
    code, report, err = run_verify(published["measurements"], "--key", published["public_key"])
    assert code == 0, err


def test_verify_refusals(tmp_path: Path, dev_key: LocalReleaseKey) -> None:
    build = build_output(tmp_path / "build")
    out = tmp_path / "measurements"
    artifacts = publish_release(eif=build / "sentinel.eif", measurements=build / "measurements.json",
                                out_dir=out, signer=dev_key, builder_version="0.1.0")
    pub = public_pem(dev_key, tmp_path / "pub.pem")
    other = public_pem(LocalReleaseKey.generate(tmp_path / "other.pem"), tmp_path / "other.pub.pem")

    def failed(report: dict[str, Any]) -> list[tuple[str, str]]:
        return [(c["name"], c["error"]) for c in report["checks"] if not c["ok"]]

    code, report, _ = run_verify(str(artifacts.measurements), "--key", str(other))
    assert code == 1 and failed(report) == [("signature", "UnknownSigner")]

    # A changed PCR in the published file: the file's digest is no longer the signed one.
    doc = json.loads(artifacts.measurements.read_text())
    doc["Measurements"]["PCR0"] = "00" * 48
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    code, report, _ = run_verify(str(tampered), "--key", str(pub),
                                 "--signature", str(artifacts.signature))
    assert code == 1 and failed(report) == [("subject", "DigestMismatch"), ("pcrs", "PcrMismatch")]

    # A flipped byte in the envelope's signature.
    envelope = json.loads(artifacts.signature.read_text())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[-1] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bad_sig = tmp_path / "bad.sig"
    bad_sig.write_text(json.dumps(envelope))
    code, report, _ = run_verify(str(artifacts.measurements), "--key", str(pub),
                                 "--signature", str(bad_sig))
    assert code == 1 and failed(report) == [("signature", "SignatureInvalid")]

    # Wrong EIF given to check.
    write_eif(tmp_path / "other.eif", kernel=b"k", cmdline=b"c", ramdisks=[b"r"])
    with pytest.raises(DigestMismatch, match="EIF: sha256"):
        verify_release(artifacts.measurements, dev_key.public_key(), eif=tmp_path / "other.eif")

    # Malformed inputs: exit 2, named.
    (tmp_path / "garbage.sig").write_text("{")
    code, report, _ = run_verify(str(artifacts.measurements), "--key", str(pub),
                                 "--signature", str(tmp_path / "garbage.sig"))
    assert code == 2 and failed(report) == [("envelope", "MalformedInput")]
    code, _, err = run_verify(str(artifacts.measurements), "--key", str(artifacts.measurements))
    assert code == 2 and "not a PEM public key" in err
    code, report, _ = run_verify(str(tmp_path / "missing.json"), "--key", str(pub))
    assert code == 2 and ("measurements", "MalformedInput") in failed(report)


def test_release_table_update(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Published measurements\n\nText.\n")
    update_release_table(readme, "| 0.2.0 | development | a | b | c | - | e | f |")
    update_release_table(readme, "| 0.1.0 | development | a | b | c | - | e | f |")
    update_release_table(readme, "| 0.2.0 | development | A | B | C | - | E | F |")
    text = readme.read_text()
    assert text.startswith("# Published measurements\n\nText.\n")
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert rows == ["| 0.1.0 | development | a | b | c | - | e | f |",
                    "| 0.2.0 | development | A | B | C | - | E | F |"]


def test_sign_built_eif_then_publish(tmp_path: Path, dev_key: LocalReleaseKey, kms: Any) -> None:
    from reproducible.sign_eif import sign_built_eif

    build = build_output(tmp_path / "build")
    unsigned = measure_eif(build / "sentinel.eif")
    eif, measurements = sign_built_eif(build, tmp_path / "signed", EifSigningKey.self_signed(dev_key))
    signed = measure_eif(eif)
    assert signed.is_signed and signed.signature_ok
    assert {i: signed.pcrs[i] for i in (0, 1, 2)} == {i: unsigned.pcrs[i] for i in (0, 1, 2)}
    doc = json.loads(measurements.read_text())
    assert doc["Measurements"]["PCR8"] == signed.pcrs[8].hex()
    assert doc["Sentinel"]["eif_sha256"] == sha256_file(eif)
    assert [s["type"] for s in doc["Sentinel"]["sections"]][-1] == "signature"
    # A local key signs deterministically: the signed image is reproducible too.
    again, _ = sign_built_eif(build, tmp_path / "again", EifSigningKey.self_signed(dev_key))
    assert again.read_bytes() == eif.read_bytes()
    with pytest.raises(Exception, match="already signed"):
        sign_built_eif(tmp_path / "signed", tmp_path / "twice", EifSigningKey.self_signed(dev_key))

    artifacts = publish_release(eif=eif, measurements=measurements, out_dir=tmp_path / "m",
                                signer=dev_key, builder_version="0.1.0")
    assert "| 9.9.9 | development |" in artifacts.readme.read_text()
    assert signed.pcrs[8].hex()[:16] in artifacts.readme.read_text()
    code, _, err = run_verify(str(artifacts.measurements), "--key",
                              str(public_pem(dev_key, tmp_path / "pub.pem")), "--eif", str(eif))
    assert code == 0, err

    # The same with the production key kind: AWS KMS signs the EIF's COSE signature.
    key_meta = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms_eif, _ = sign_built_eif(build, tmp_path / "kms",
                                EifSigningKey.self_signed(KmsReleaseKey(key_meta["KeyId"], client=kms)))
    assert measure_eif(kms_eif).signature_ok



@pytest.fixture(scope="module")
def signed_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("signed")
    key = LocalReleaseKey.generate(tmp / "key.pem")
    build = build_output(tmp / "build")
    artifacts = publish_release(eif=build / "sentinel.eif", measurements=build / "measurements.json",
                                out_dir=tmp / "m", signer=key, builder_version="0.1.0")
    return {"key": key, "artifacts": artifacts, "envelope": artifacts.signature.read_bytes(),
            "scratch": tmp / "scratch.sig"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 10**6), mask=st.integers(1, 255))
def test_corrupted_signature_file_never_passes_or_crashes(
    signed_release: dict[str, Any], position: int, mask: int
) -> None:
    original = signed_release["envelope"]
    corrupted = bytearray(original)
    corrupted[position % len(original)] ^= mask
    signed_release["scratch"].write_bytes(bytes(corrupted))
    check = verify_release(signed_release["artifacts"].measurements,
                           signed_release["key"].public_key(),
                           signature=signed_release["scratch"], fail_fast=False)
    if check:
        # Only a change JSON or base64 decoding cannot see (whitespace, unused padding bits)
        # may pass: the envelope must carry exactly what was signed.
        assert parse_envelope(bytes(corrupted)) == parse_envelope(original)
    else:
        assert check.exit_code in (1, 2)
