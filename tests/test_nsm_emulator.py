"""The NSM emulator's documents: AWS's exact format, verifiable with the emulator root only."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from nsm_support import PAYLOAD_KEYS, DocumentInvalid, verify_document

from enclave.nsm import NsmConfigError, NsmRequestRejected
from enclave.nsm import _codec as c
from enclave.nsm.ca import EmulatorCa
from enclave.nsm.emulator import EmulatedDevice, EmulatedNsm

AWS_ROOT = Path(__file__).resolve().parents[1] / "verify" / "attestation" / "aws_nitro_root_g1.pem"
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def ca() -> EmulatorCa:
    return EmulatorCa.generate(now=T0 - dt.timedelta(days=1))


@pytest.fixture
def nsm(ca: EmulatorCa) -> EmulatedNsm:
    pcrs = {i: bytes([i]) * 48 for i in (0, 1, 2, 8)}
    return EmulatedNsm(ca=ca, pcrs=pcrs, clock=Clock(T0))


def test_document_has_aws_exact_structure(nsm: EmulatedNsm, ca: EmulatorCa) -> None:
    doc = nsm.attestation(user_data=b"u" * 10, nonce=b"n" * 20, public_key=b"\x30\x01\x00")
    outer = cbor2.loads(doc)
    assert isinstance(outer, list) and len(outer) == 4  # untagged COSE_Sign1
    assert doc[:6] == bytes.fromhex("8444a1013822")  # array(4), bstr(4) {1: -35}
    protected, unprotected, payload, signature = outer
    assert protected == bytes.fromhex("a1013822") and unprotected == {}
    assert isinstance(signature, bytes) and len(signature) == 96
    body = cbor2.loads(payload)
    assert list(body) == PAYLOAD_KEYS
    assert body["module_id"].startswith("i-emulated") and "-enc" in body["module_id"]
    assert body["digest"] == "SHA384"
    assert body["timestamp"] == int(T0.timestamp() * 1000)
    assert sorted(body["pcrs"]) == list(range(16))
    assert all(isinstance(v, bytes) and len(v) == 48 for v in body["pcrs"].values())
    assert body["pcrs"][2] == b"\x02" * 48 and body["pcrs"][3] == bytes(48)
    assert len(body["cabundle"]) == 4 and body["cabundle"][0] == ca.root_der
    assert all(1 <= len(cert) <= 1024 for cert in [*body["cabundle"], body["certificate"]])
    leaf = x509.load_der_x509_certificate(body["certificate"])
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=3)
    assert (body["public_key"], body["user_data"], body["nonce"]) == (
        b"\x30\x01\x00",
        b"u" * 10,
        b"n" * 20,
    )


def test_absent_fields_are_null(nsm: EmulatedNsm) -> None:
    body = cbor2.loads(cbor2.loads(nsm.attestation())[2])
    assert body["public_key"] is None and body["user_data"] is None and body["nonce"] is None


def test_document_verifies_with_the_emulator_root(nsm: EmulatedNsm, ca: EmulatorCa) -> None:
    body = verify_document(nsm.attestation(nonce=b"x"), ca.root)
    assert body["nonce"] == b"x"


def test_document_fails_with_another_root(nsm: EmulatedNsm) -> None:
    other = EmulatorCa.generate(now=T0 - dt.timedelta(days=1))
    with pytest.raises(DocumentInvalid, match="pinned root"):
        verify_document(nsm.attestation(), other.root)


def test_every_single_byte_change_fails(nsm: EmulatedNsm, ca: EmulatorCa) -> None:
    doc = nsm.attestation(user_data=b"u", nonce=b"n" * 8, public_key=b"k")
    verify_document(doc, ca.root)
    passed = []
    for i in range(len(doc)):
        bad = bytearray(doc)
        bad[i] ^= 0x01
        try:
            verify_document(bytes(bad), ca.root)
        except DocumentInvalid:
            continue
        passed.append(i)
    assert passed == []


def test_oracle_accepts_real_aws_documents(asset) -> None:
    # The oracle reads AWS's own format: the same checks pass on documents from Nitro hardware.
    root = x509.load_pem_x509_certificate(AWS_ROOT.read_bytes())
    for name in ("eternis_example_2024.bin", "evervault_beta_valid_2022.bin"):
        body = verify_document(asset(f"attestation/{name}").read_bytes(), root)
        assert len(body["pcrs"]) == 16 and len(body["cabundle"]) == 4


def test_leaf_is_renewed_before_it_expires(ca: EmulatorCa) -> None:
    clock = Clock(T0)
    nsm = EmulatedNsm(ca=ca, clock=clock)
    first = cbor2.loads(cbor2.loads(nsm.attestation())[2])
    clock.now = T0 + dt.timedelta(hours=2, minutes=55)
    second_doc = nsm.attestation()
    second = verify_document(second_doc, ca.root)
    assert second["certificate"] != first["certificate"]
    assert second["timestamp"] == int(clock.now.timestamp() * 1000)
    # The same document is rejected once its leaf has expired.
    with pytest.raises(DocumentInvalid, match="not valid at"):
        verify_document(second_doc, ca.root, at=clock.now + dt.timedelta(hours=4))


def test_locked_application_pcr_appears_in_documents(nsm: EmulatedNsm) -> None:
    value = nsm.extend_pcr(16, b"config")
    assert 16 not in cbor2.loads(cbor2.loads(nsm.attestation())[2])["pcrs"]
    nsm.lock_pcr(16)
    assert cbor2.loads(cbor2.loads(nsm.attestation())[2])["pcrs"][16] == value


def test_extend_is_sha384_of_old_and_data(nsm: EmulatedNsm) -> None:
    import hashlib

    assert nsm.extend_pcr(20, b"abc") == hashlib.sha384(bytes(48) + b"abc").digest()


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda n: n.extend_pcr(0, b"x"), "ReadOnlyIndex"),
        (lambda n: n.describe_pcr(32), "InvalidIndex"),
        (lambda n: n.lock_pcr(99), "InvalidIndex"),
        (lambda n: n.lock_pcrs(33), "InvalidIndex"),
        (lambda n: n.attestation(user_data=b"u" * 1025), "InputTooLarge"),
        (lambda n: n.attestation(nonce=b"n" * 1025), "InputTooLarge"),
        (lambda n: n.attestation(public_key=b""), "InvalidArgument"),
    ],
    ids=[
        "locked",
        "describe_range",
        "lock_range",
        "lock_pcrs_range",
        "user_data",
        "nonce",
        "empty_key",
    ],
)
def test_refusals_are_typed(nsm: EmulatedNsm, call, code: str) -> None:
    with pytest.raises(NsmRequestRejected, match=code) as e:
        call(nsm)
    assert e.value.nsm_code == code


def test_device_answers_malformed_bytes_with_an_error_response(ca: EmulatorCa) -> None:
    device = EmulatedDevice(ca=ca)
    assert c.decode_response(device.handle(b"\xff")) == c.ErrorResponse("InvalidArgument")
    assert c.decode_response(device.handle(cbor2.dumps("Reboot"))) == c.ErrorResponse(
        "InvalidArgument"
    )
    big = cbor2.dumps({"ExtendPCR": {"index": 16, "data": b"x" * 5000}})
    assert c.decode_response(device.handle(big)) == c.ErrorResponse("InputTooLarge")


def test_module_id_must_say_emulated(ca: EmulatorCa) -> None:
    with pytest.raises(ValueError, match="i-emulated"):
        EmulatedNsm(ca=ca, module_id="i-0123456789abcdef0-enc0123456789abcdef")


def test_ca_round_trips_through_a_directory(tmp_path: Path, ca: EmulatorCa) -> None:
    ca.save(tmp_path)
    again = EmulatorCa.load(tmp_path)
    assert again.root_pem == ca.root_pem
    nsm = EmulatedNsm(ca=again, clock=Clock(T0))
    verify_document(nsm.attestation(), ca.root)


def test_ca_load_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(NsmConfigError, match="cannot read the emulator CA"):
        EmulatorCa.load(tmp_path)
    (tmp_path / "root.pem").write_text("junk")
    (tmp_path / "root.key.pem").write_text("junk")
    with pytest.raises(NsmConfigError, match="not PEM"):
        EmulatorCa.load(tmp_path)


# --- PCR sources -------------------------------------------------------------------------------


def test_pcrs_from_a_measurements_file(tmp_path: Path, ca: EmulatorCa) -> None:
    path = tmp_path / "measurements.json"
    path.write_text(
        json.dumps(
            {
                "Measurements": {
                    "HashAlgorithm": "Sha384 { ... }",
                    "PCR0": "aa" * 48,
                    "PCR1": "bb" * 48,
                    "PCR2": "cc" * 48,
                },
                "Sentinel": {"schema": 1},
            }
        )
    )
    nsm = EmulatedNsm(ca=ca, pcrs=path, clock=Clock(T0))
    body = verify_document(nsm.attestation(), ca.root)
    assert [body["pcrs"][i] for i in (0, 1, 2)] == [b"\xaa" * 48, b"\xbb" * 48, b"\xcc" * 48]


def test_pcrs_from_a_fw_cfg_style_file_without_extension(tmp_path: Path, ca: EmulatorCa) -> None:
    path = tmp_path / "raw"
    path.write_bytes(json.dumps({"HashAlgorithm": "Sha384 { ... }", "PCR8": "08" * 48}).encode())
    nsm = EmulatedNsm(ca=ca, pcrs=path)
    assert nsm.describe_pcr(8).value == b"\x08" * 48


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be an object"),
        (b"{}", "names no PCR"),
        (json.dumps({"PCR0": "zz" * 48}).encode(), "PCR0 is not hex"),
        (json.dumps({"PCR0": "aa" * 32}).encode(), "PCR0 has 32 bytes, expected 48"),
        (json.dumps({"PCR40": "aa" * 48}).encode(), "PCR index 40 is out of range"),
        (json.dumps({"PCRX": "aa" * 48}).encode(), "not an index"),
        (json.dumps({"PCR0": 5}).encode(), "must be bytes or hex"),
    ],
    ids=["not_json", "array", "empty", "bad_hex", "short", "index_range", "bad_key", "number"],
)
def test_bad_pcr_files_are_config_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "pcrs"
    path.write_bytes(content)
    with pytest.raises(NsmConfigError, match=message):
        EmulatedNsm(pcrs=path)


def test_missing_pcr_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(NsmConfigError, match="cannot read PCRs"):
        EmulatedNsm(pcrs=tmp_path / "absent.json")


@pytest.mark.skipif(
    importlib.util.find_spec("verify.pcr") is None, reason="verify.pcr not built yet"
)
def test_pcrs_from_an_eif_match_verify(tmp_path: Path, ca: EmulatorCa) -> None:
    from verify.eif import write_eif
    from verify.pcr import measure_eif

    eif = tmp_path / "image.eif"
    write_eif(eif, kernel=b"K" * 4096, cmdline=b"console=ttyS0", ramdisks=[b"R" * 1000, b"S" * 10])
    expected = measure_eif(eif).pcrs
    nsm = EmulatedNsm(ca=ca, pcrs=eif, clock=Clock(T0))
    body = verify_document(nsm.attestation(), ca.root)
    assert {i: body["pcrs"][i] for i in expected} == expected


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(
        cbor2.dumps,
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.binary(max_size=8)
            | st.text(max_size=12),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=12), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    )
)
def test_device_answers_every_input_with_a_valid_response(ca: EmulatorCa, data: bytes) -> None:
    device = EmulatedDevice(ca=ca)
    response = c.decode_response(device.handle(data))
    assert isinstance(response, c.Response.__args__)  # type: ignore[attr-defined]


def test_both_implementations_satisfy_the_protocol(nsm: EmulatedNsm) -> None:
    from enclave.nsm import Nsm
    from enclave.nsm.device import DeviceNsm

    assert isinstance(nsm, Nsm)
    with DeviceNsm("/dev/null") as device:
        assert isinstance(device, Nsm)
