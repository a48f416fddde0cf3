"""verify.attestation on real AWS documents and on documents from a test PKI shaped like Nitro's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from attestation_support import T0, TestPki, make_document, make_payload, resign
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from verify.attestation import (
    AWS_NITRO_ROOT_G1_SHA256,
    DOCUMENT_TIME,
    AllOf,
    AttestationVerifier,
    ChainInvalid,
    MaxAge,
    NonceEquals,
    PcrEquals,
    PcrMismatch,
    SignatureInvalid,
    TimestampInvalid,
    UnsafeNoOp,
    UnsupportedAlgorithm,
    UserDataEquals,
    UserDataMismatch,
    aws_nitro_root,
    parse_document,
    verify,
)
from verify.attestation.roots import fingerprint

ASSETS = Path(__file__).parent / "assets" / "attestation"
REAL = {
    "evervault_beta_valid_2022.bin": datetime(2022, 10, 13, 8, 58, 2, 136000, tzinfo=UTC),
    "eternis_example_2024.bin": datetime(2024, 9, 9, 19, 49, 12, 400000, tzinfo=UTC),
}


def real(name: str) -> bytes:
    return (ASSETS / name).read_bytes()


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.generate("unit")


def pki_verifier(pki: TestPki, now: datetime | None = None) -> AttestationVerifier:
    return AttestationVerifier(root=pki.root, now=now or DOCUMENT_TIME)


# --- the shipped root -------------------------------------------------------------------------


def test_shipped_root_is_the_published_aws_root() -> None:
    root = aws_nitro_root()
    assert fingerprint(root) == AWS_NITRO_ROOT_G1_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    # It is also cabundle[0] of every real document.
    for name in REAL:
        assert parse_document(real(name)).document.cabundle[0] == root.public_bytes(Encoding.DER)


# --- real documents ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_document_verifies_at_its_own_timestamp(name: str) -> None:
    verified = AttestationVerifier.aws_nitro(now=DOCUMENT_TIME).verify(real(name), UnsafeNoOp())
    assert verified.document.timestamp == REAL[name]
    assert verified.validated_at == REAL[name]
    assert len(verified.chain) == 5
    assert verified.chain[-1] == aws_nitro_root()
    assert verified.chain[0].public_bytes(Encoding.DER) == verified.document.certificate


def test_real_document_fields() -> None:
    ever = parse_document(real("evervault_beta_valid_2022.bin")).document
    assert len(ever.nonce or b"") == 256 and ever.user_data is None and ever.public_key is None
    assert {i for i, v in ever.pcrs.items() if any(v)} == {0, 1, 2, 3, 4, 8}
    eter = parse_document(real("eternis_example_2024.bin")).document
    assert eter.public_key == b"dummy" and len(eter.user_data or b"") == 68
    assert eter.nonce == bytes(19) + b"\x01"
    assert eter.pcrs[0] == bytes(48)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_document_rejected_after_leaf_expiry(name: str) -> None:
    leaf = x509.load_der_x509_certificate(parse_document(real(name)).document.certificate)
    expiry = leaf.not_valid_after_utc
    assert expiry - REAL[name] < timedelta(hours=3, seconds=1)
    AttestationVerifier.aws_nitro(now=expiry).verify(real(name), UnsafeNoOp())
    with pytest.raises(ChainInvalid, match="not valid at validation time"):
        AttestationVerifier.aws_nitro(now=expiry + timedelta(seconds=1)).verify(
            real(name), UnsafeNoOp()
        )


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_document_rejected_at_the_wall_clock(name: str) -> None:
    with pytest.raises(ChainInvalid):
        verify(real(name), UnsafeNoOp())


def test_real_document_wrong_nonce_and_pcr() -> None:
    data = real("eternis_example_2024.bin")
    verifier = AttestationVerifier.aws_nitro(now=DOCUMENT_TIME)
    doc = parse_document(data).document
    verifier.verify(data, AllOf([NonceEquals(doc.nonce or b""), PcrEquals(0, bytes(48))]))
    with pytest.raises(Exception, match="nonce: got 0+1, expected 0+2") as info:
        verifier.verify(data, NonceEquals(bytes(19) + b"\x02"))
    assert type(info.value).__name__ == "NonceMismatch"
    with pytest.raises(PcrMismatch, match="PCR0: got 0{96}, expected 0{95}1"):
        verifier.verify(data, PcrEquals(0, bytes(47) + b"\x01"))
    with pytest.raises(PcrMismatch, match="PCR20: absent"):
        verifier.verify(data, PcrEquals(20, bytes(48)))
    with pytest.raises(UserDataMismatch):
        verifier.verify(data, UserDataEquals(b"other"))


def test_real_document_against_another_root(pki: TestPki) -> None:
    with pytest.raises(ChainInvalid, match="cabundle\\[0\\] is not the pinned root"):
        pki_verifier(pki).verify(real("eternis_example_2024.bin"), UnsafeNoOp())


def test_report_names_every_check_and_keeps_going() -> None:
    data = real("evervault_beta_valid_2022.bin")
    verifier = AttestationVerifier.aws_nitro(now=datetime(2023, 1, 1, tzinfo=UTC))
    report = verifier.report(data, AllOf([PcrEquals(0, bytes(48)), NonceEquals(b"n")]))
    assert not report
    assert report.exit_code == 1
    outcome = {r.name: (r.error is None) for r in report.results}
    assert outcome == {
        "cose": True,
        "alg": True,
        "payload": True,
        "certificates": True,
        "chain": False,
        "timestamp": True,
        "signature": True,
        "PCR0": False,
        "nonce": False,
    }


# --- test PKI: each failure names its check ---------------------------------------------------


def test_test_pki_document_verifies_untagged_and_tagged(pki: TestPki) -> None:
    for tagged in (False, True):
        verified = pki_verifier(pki).verify(make_document(pki, tagged=tagged), UnsafeNoOp())
        assert verified.document.nonce == bytes(range(32))


def test_fixtures_are_deterministic(pki: TestPki) -> None:
    assert make_document(pki) == make_document(TestPki.generate("unit"))


def test_test_pki_document_refused_by_aws_root(pki: TestPki) -> None:
    with pytest.raises(ChainInvalid, match="not the pinned root"):
        AttestationVerifier.aws_nitro(now=DOCUMENT_TIME).verify(make_document(pki), UnsafeNoOp())


def test_chain_to_another_root_under_the_pinned_root_copy(pki: TestPki) -> None:
    """cabundle[0] is the AWS root, but the intermediates were issued by another root."""
    aws_der = aws_nitro_root().public_bytes(Encoding.DER)
    data = make_document(pki, cabundle=[aws_der, *pki.cabundle()[1:]])
    with pytest.raises(ChainInvalid, match="chain invalid"):
        AttestationVerifier.aws_nitro(now=DOCUMENT_TIME).verify(data, UnsafeNoOp())


def test_other_root_with_same_names(pki: TestPki) -> None:
    impostor = TestPki.generate("unit-impostor")
    # Same subject names are not enough: the keys differ.
    data = make_document(impostor, cabundle=pki.cabundle()[:1] + impostor.cabundle()[1:])
    with pytest.raises(ChainInvalid):
        pki_verifier(pki).verify(data, UnsafeNoOp())


def test_signed_by_another_key(pki: TestPki) -> None:
    other = TestPki.generate("other")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        pki_verifier(pki).verify(make_document(pki, signing_key=other.leaf_key), UnsafeNoOp())


def test_tampered_intermediate_resigned_document(pki: TestPki) -> None:
    """A document re-signed by the real leaf key after changing a CA certificate still fails."""
    bundle = pki.cabundle()
    tampered = bytearray(bundle[2])
    where = tampered.index(b"unit.ca1")
    tampered[where] ^= 0x20  # "Unit.ca1": a different subject, same length
    payload = cbor2.dumps(make_payload(pki, cabundle=[*bundle[:2], bytes(tampered), *bundle[3:]]))
    data = resign(make_document(pki), pki.leaf_key, payload=payload)
    with pytest.raises(ChainInvalid):
        pki_verifier(pki).verify(data, UnsafeNoOp())


def test_cabundle_out_of_order(pki: TestPki) -> None:
    bundle = pki.cabundle()
    data = make_document(pki, cabundle=[bundle[0], bundle[2], bundle[1], bundle[3]])
    with pytest.raises(ChainInvalid, match="in order"):
        pki_verifier(pki).verify(data, UnsafeNoOp())


def test_cabundle_missing_an_intermediate(pki: TestPki) -> None:
    data = make_document(pki, cabundle=pki.cabundle()[:-1])
    with pytest.raises(ChainInvalid):
        pki_verifier(pki).verify(data, UnsafeNoOp())


def test_wrong_algorithm(pki: TestPki) -> None:
    data = make_document(pki, protected=cbor2.dumps({1: -7}))
    with pytest.raises(UnsupportedAlgorithm, match="alg is -7, expected -35"):
        pki_verifier(pki).verify(data, UnsafeNoOp())
    with pytest.raises(UnsupportedAlgorithm, match="alg is None"):
        pki_verifier(pki).verify(make_document(pki, protected=b""), UnsafeNoOp())


def test_timestamp_outside_leaf_validity(pki: TestPki) -> None:
    late = int((pki.leaf.not_valid_after_utc + timedelta(minutes=1)).timestamp() * 1000)
    data = make_document(pki, timestamp=late)
    inside = pki.leaf.not_valid_before_utc + timedelta(hours=1)
    with pytest.raises(TimestampInvalid, match="outside its signing certificate's validity"):
        pki_verifier(pki, inside).verify(data, UnsafeNoOp())


def test_leaf_that_is_a_ca_is_refused() -> None:
    pki = TestPki.generate("ca-leaf")
    key, issuer = pki.cas[-1]
    bad_leaf = (
        x509.CertificateBuilder()
        .subject_name(pki.leaf.subject)
        .issuer_name(issuer.subject)
        .public_key(pki.leaf_key.public_key())
        .serial_number(7)
        .not_valid_before(pki.leaf.not_valid_before_utc)
        .not_valid_after(pki.leaf.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), True)
        .sign(key, pki.leaf.signature_hash_algorithm)
    )
    data = make_document(pki, certificate=bad_leaf.public_bytes(Encoding.DER))
    with pytest.raises(ChainInvalid):
        pki_verifier(pki).verify(data, UnsafeNoOp())


def test_chain_cache_respects_intermediate_validity() -> None:
    """A bundle remembered as valid is re-validated once the time leaves its CAs' common window."""
    pki = TestPki.generate("cache", leaf_lifetime=timedelta(days=30))
    data = make_document(pki)
    verifier = AttestationVerifier(root=pki.root, now=T0 + timedelta(hours=1))
    verifier.verify(data, UnsafeNoOp())
    verifier.verify(data, UnsafeNoOp())  # served by the remembered bundle
    ca2_expiry = pki.cas[2][1].not_valid_after_utc
    late = AttestationVerifier(root=pki.root, now=ca2_expiry + timedelta(seconds=1))
    late._chains.update(verifier._chains)  # same knowledge, later clock
    with pytest.raises(ChainInvalid, match="not valid at validation time"):
        late.verify(data, UnsafeNoOp())


def test_chain_cache_is_keyed_by_root(pki: TestPki) -> None:
    """A bundle validated under one root is never trusted under another verifier's root."""
    data = make_document(pki)
    pki_verifier(pki).verify(data, UnsafeNoOp())
    with pytest.raises(ChainInvalid):
        AttestationVerifier.aws_nitro(now=DOCUMENT_TIME).verify(data, UnsafeNoOp())


def test_max_age(pki: TestPki) -> None:
    data = make_document(pki)
    made = parse_document(data).document.timestamp
    verifier = pki_verifier(pki)
    verifier.verify(data, MaxAge(60, now=made + timedelta(seconds=59)))
    with pytest.raises(Exception, match="more than 60 s") as info:
        verifier.verify(data, MaxAge(60, now=made + timedelta(seconds=61)))
    assert type(info.value).__name__ == "DocumentStale"
    with pytest.raises(Exception, match="in the future"):
        verifier.verify(data, MaxAge(60, now=made - timedelta(minutes=5)))


def test_policy_misuse() -> None:
    with pytest.raises(ValueError, match="at least one check"):
        AllOf([])
    with pytest.raises(ValueError):
        PcrEquals(32, bytes(48))
    with pytest.raises(ValueError, match="timezone"):
        AttestationVerifier(root=aws_nitro_root(), now=datetime(2024, 1, 1))


def test_nested_all_of_reports_each_leaf(pki: TestPki) -> None:
    doc = parse_document(make_document(pki)).document
    policy = AllOf([AllOf([PcrEquals(0, doc.pcrs[0]), PcrEquals(1, bytes(48))]), NonceEquals(b"x")])
    report = pki_verifier(pki).report(make_document(pki), policy)
    assert [r.name for r in report.failures] == ["PCR1", "nonce"]
