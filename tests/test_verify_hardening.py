"""Issue 14, the customers' tool: findings #2, #8, #9, #10 and #11, each a named test."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cbor2
import pytest
from attestation_support import T0, TestPki, make_document, make_payload, run_cli, sign_es384

from verify.attestation import MalformedAttestation, decode_document_text, parse_document

ASSETS = Path(__file__).parent / "assets" / "attestation"
EVERVAULT = ASSETS / "evervault_beta_valid_2022.bin"
ETERNIS = ASSETS / "eternis_example_2024.bin"
AT = (T0.replace(second=5)).isoformat()  # inside the test PKI's 3-hour signing certificate


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.generate("hardening")


# --- hand-made CBOR: what cbor2 will not write (duplicate keys, odd heads) --------------------


def head(major: int, n: int) -> bytes:
    """The shortest head of major type `major` with argument `n`."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([major << 5 | info]) + n.to_bytes(width, "big")
    raise ValueError(n)


class RawCbor(bytes):
    """Already-encoded CBOR, inserted as is by `cbor_map`."""


def cbor_map(pairs: list[tuple[object, object]]) -> bytes:
    """A CBOR map with exactly these pairs, in order, duplicates included."""
    out = head(5, len(pairs))
    for key, value in pairs:
        out += cbor2.dumps(key)
        out += bytes(value) if isinstance(value, RawCbor) else cbor2.dumps(value)
    return out


def payload_pairs(pki: TestPki, **overrides: object) -> list[tuple[object, object]]:
    return list(make_payload(pki, **overrides).items())


def signed(pki: TestPki, payload: bytes, protected: bytes = cbor2.dumps({1: -35})) -> bytes:
    """A document around `payload` whose signature verifies: only decoding can refuse it."""
    return cbor2.dumps([protected, {}, payload, sign_es384(pki.leaf_key, protected, payload)])


def verify_cli(path: Path, pki_root: Path, *extra: str) -> tuple[int, str, str]:
    """The CLI on a test-PKI document, at a time its chain is valid, expecting its user_data."""
    return run_cli("attestation", str(path), "--root", str(pki_root), "--at", AT,
                   "--user-data", b"sentinel user data".hex(), "--json", *extra)


@pytest.fixture
def root_pem(pki: TestPki, tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(pki.root_pem)
    return path


# --- #8: strict CBOR: duplicate map keys and unknown crit labels are refused --------------------


def duplicate_pcr0(pki: TestPki) -> bytes:
    pcrs = dict(make_payload(pki)["pcrs"])  # type: ignore[call-overload]
    pcr_pairs: list[tuple[object, object]] = [(0, bytes(48))] + list(pcrs.items())  # zeros, then real
    pairs = [(k, RawCbor(cbor_map(pcr_pairs)) if k == "pcrs" else v) for k, v in payload_pairs(pki)]
    return signed(pki, cbor_map(pairs))


def duplicate_nonce(pki: TestPki) -> bytes:
    pairs = payload_pairs(pki) + [("nonce", b"\x99" * 32)]
    return signed(pki, cbor_map(pairs))


DUPLICATE_ALG = cbor_map([(1, -7), (1, -35)])
CRIT_UNKNOWN = cbor2.dumps({1: -35, 2: [99], 99: 1})


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("pcr0 twice", "duplicate map key 0"),
        ("nonce twice", "duplicate map key 'nonce'"),
        ("alg twice", "duplicate map key 1"),
        ("unknown crit", "crit names header labels this verifier does not process"),
    ],
)
def test_issue14_8_duplicate_keys_and_unknown_crit_refused(
    pki: TestPki, root_pem: Path, tmp_path: Path, case: str, message: str
) -> None:
    document = {
        "pcr0 twice": lambda: duplicate_pcr0(pki),
        "nonce twice": lambda: duplicate_nonce(pki),
        "alg twice": lambda: signed(pki, cbor2.dumps(make_payload(pki)), DUPLICATE_ALG),
        "unknown crit": lambda: signed(pki, cbor2.dumps(make_payload(pki)), CRIT_UNKNOWN),
    }[case]()
    with pytest.raises(MalformedAttestation, match=message):
        parse_document(document)
    path = tmp_path / "doc.bin"
    path.write_bytes(document)
    code, out, err = verify_cli(path, root_pem)
    assert code == 2, err
    report = json.loads(out)
    assert report["verified"] is False
    assert any(message in (c["message"] or "") for c in report["checks"])


def test_issue14_8_the_same_documents_without_duplicates_verify(pki: TestPki, root_pem: Path,
                                                                 tmp_path: Path) -> None:
    """The refusals above come from the duplicates alone: the same shapes without them verify."""
    pairs = payload_pairs(pki)
    path = tmp_path / "doc.bin"
    path.write_bytes(signed(pki, cbor_map(pairs)))
    code, _, err = verify_cli(path, root_pem)
    assert code == 0, err


# --- #9: one decoder for CLI and library; re-encodings refused by both, the same way ------------


def reencodings(pki: TestPki) -> dict[str, tuple[bytes, str]]:
    good = make_document(pki)
    protected, _, payload, signature = cbor2.loads(good)
    members = b"".join(cbor2.dumps(m) for m in (protected, {}, payload, signature))
    long_payload_head = b"\x5a" + len(payload).to_bytes(4, "big") + payload  # 4-byte length, fits in 2
    chunked = b"\x5f" + cbor2.dumps(payload[:10]) + cbor2.dumps(payload[10:]) + b"\xff"
    nonce = bytes(range(32))  # make_payload's nonce: head 0x58 0x20; 0x59 0x00 0x20 is too long
    plain = cbor2.dumps(make_payload(pki, nonce=nonce))
    assert plain.count(cbor2.dumps(nonce)) == 1
    non_minimal_bstr = plain.replace(cbor2.dumps(nonce), b"\x59\x00\x20" + nonce)
    return {
        "indefinite array": (b"\x9f" + members + b"\xff", "indefinite length"),
        "non-minimal array head": (b"\x98\x04" + members, "non-shortest head"),
        "non-minimal payload length": (
            b"\x84" + cbor2.dumps(protected) + b"\xa0" + long_payload_head + cbor2.dumps(signature),
            "non-shortest head",
        ),
        "chunked payload": (
            b"\x84" + cbor2.dumps(protected) + b"\xa0" + chunked + cbor2.dumps(signature),
            "indefinite length",
        ),
        "non-minimal nonce length (re-signed)": (signed(pki, non_minimal_bstr), "non-shortest head"),
        "double tag 18": (b"\xd2\xd2" + cbor2.dumps([protected, {}, payload, signature]), "CBOR tag 18"),
    }


@pytest.mark.parametrize(
    "case",
    ["indefinite array", "non-minimal array head", "non-minimal payload length", "chunked payload",
     "non-minimal nonce length (re-signed)", "double tag 18"],
)
def test_issue14_9_cli_and_library_agree_on_reencoded_documents(
    pki: TestPki, root_pem: Path, tmp_path: Path, case: str
) -> None:
    data, message = reencodings(pki)[case]
    with pytest.raises(MalformedAttestation, match=message) as info:
        parse_document(data)
    library = info.value.diagnostics()
    for name, content in (("raw", data), ("base64", base64.b64encode(data) + b"\n")):
        assert decode_document_text(content) == data
        path = tmp_path / f"{name}.bin"
        path.write_bytes(content)
        code, out, _ = verify_cli(path, root_pem)
        assert code == 2, (name, out)
        checks = json.loads(out)["checks"]
        assert checks[0]["name"] == "cose" or checks[-1]["name"] == "payload"
        assert library in [c["message"] for c in checks], (name, checks)


def test_issue14_9_real_documents_meet_the_strict_rules() -> None:
    for path in (EVERVAULT, ETERNIS):
        signed_doc = parse_document(path.read_bytes())
        assert signed_doc.alg == -35 and len(signed_doc.document.pcrs) >= 16


# --- #2: text from a document, EIF or file is shown, never obeyed by the terminal ---------------

SPOOF = "i-x\x1b[2K\r\x1b[1A\x1b[32mOK\x1b[0m\x9b2J\u202egnp.exe\n"
SHOWN = "i-x\\x1b[2K\\r\\x1b[1A\\x1b[32mOK\\x1b[0m\\x9b2J\\u202egnp.exe\\n"


def assert_inert(err: str) -> None:
    """No control character reaches the terminal, except the layout's own newlines."""
    bad = [hex(ord(c)) for c in err if (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) <= 0x9F
           or c == "\u202e"]
    assert bad == [], bad


def test_issue14_2_module_id_is_shown_escaped_not_obeyed(pki: TestPki, root_pem: Path,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "doc.bin"
    path.write_bytes(make_document(pki, module_id=SPOOF))
    code, out, err = verify_cli(path, root_pem)
    assert code == 0, err
    assert json.loads(out)["attestation"]["module_id"] == SPOOF  # --json keeps the exact value
    assert_inert(err)
    assert SHOWN in err
    # A failing check quoting the document is escaped too, and the exit code is unchanged.
    code, out, err = verify_cli(path, root_pem, "--nonce", "ff")
    assert code == 1 and json.loads(out)["verified"] is False
    assert_inert(err)


def test_issue14_2_no_policy_warning_escapes_module_id(pki: TestPki,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from verify.attestation import UnsafeNoOp

    document = parse_document(make_document(pki, module_id=SPOOF)).document
    with caplog.at_level("WARNING"):
        UnsafeNoOp().verify(document)
    [message] = [r.getMessage() for r in caplog.records]
    assert SHOWN in message and "\x1b" not in message


def test_issue14_2_eif_metadata_is_shown_escaped(tmp_path: Path) -> None:
    from verify.eif import write_eif
    from verify.eif._metadata import default_identity

    path = tmp_path / "spoof.eif"
    write_eif(path, kernel=b"K" * 64, cmdline=b"console=ttyS0", ramdisks=[b"r0" * 8],
              metadata=default_identity(image_name=SPOOF, image_version="\x1b]0;title\x07"))
    code, out, err = run_cli("pcr", str(path))
    assert code == 0, err
    assert_inert(err)
    assert SHOWN in err and "\\x1b]0;title\\x07" in err
    code, out, _ = run_cli("pcr", str(path), "--json")
    assert code == 0 and json.loads(out)["ImageName"] == SPOOF


def test_issue14_2_error_lines_escape_file_names(tmp_path: Path) -> None:
    name = str(tmp_path / "x\x1b[2K\x1b[32mOK.bin")
    code, _, err = run_cli("attestation", name, "--nonce", "00")
    assert code == 2
    assert_inert(err)
    assert "\\x1b[2K" in err


# --- #10: expectations required, time is now, debug mode reported and refused ---------------


def test_issue14_10_bare_document_needs_allow_no_policy(pki: TestPki, root_pem: Path,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "doc.bin"
    path.write_bytes(make_document(pki))
    code, out, err = run_cli("attestation", str(path), "--root", str(root_pem), "--at", AT)
    assert code == 2 and out == ""
    assert "no expectation given" in err and "--allow-no-policy" in err and "OK" not in err
    code, out, err = run_cli("attestation", str(path), "--root", str(root_pem), "--at", AT,
                             "--allow-no-policy", "--json")
    assert code == 0, err
    assert "unsafe-no-policy" in [c["name"] for c in json.loads(out)["checks"]]


def test_issue14_10_default_time_is_now(pki: TestPki, root_pem: Path, tmp_path: Path) -> None:
    """The test PKI's signing certificate expired in 2025: checked now, its document fails."""
    path = tmp_path / "doc.bin"
    path.write_bytes(make_document(pki))
    expect = ["--user-data", b"sentinel user data".hex(), "--json"]
    code, out, _ = run_cli("attestation", str(path), "--root", str(root_pem), *expect)
    assert code == 1
    report = json.loads(out)
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["chain"]
    assert report["validated_at"] > "2026"  # the wall clock, not the document's 2025 timestamp
    code, _, err = run_cli("attestation", str(path), "--root", str(root_pem), "--at", AT, *expect)
    assert code == 0, err


def test_issue14_10_debug_mode_reported_and_refused(pki: TestPki, root_pem: Path,
                                                    tmp_path: Path) -> None:
    pcrs = {i: (bytes(48) if i < 3 else bytes([i]) * 48) for i in range(16)}
    path = tmp_path / "debug.bin"
    path.write_bytes(make_document(pki, pcrs=pcrs))
    args = ["attestation", str(path), "--root", str(root_pem), "--at", AT,
            "--user-data", b"sentinel user data".hex()]
    code, out, err = run_cli(*args, "--json")
    assert code == 1
    failed = [c for c in json.loads(out)["checks"] if not c["ok"]]
    assert [(c["name"], c["error"]) for c in failed] == [("debug-mode", "DebugMode")]
    assert "PCR0, PCR1, PCR2 all zero" in failed[0]["message"]
    assert "PCR0  " + "00" * 48 in err and "debug mode" in err  # the zero PCRs are shown
    code, _, err = run_cli(*args, "--allow-debug")
    assert code == 0, err
    assert "PCR1  " + "00" * 48 in err and "debug mode" in err  # still reported when allowed


def test_issue14_10_real_debug_document_fails_without_allow_debug() -> None:
    """The Eternis document is real and authentic, from a debug-mode enclave."""
    args = ["attestation", str(ETERNIS), "--at", "2024-09-09T19:49:12.400Z", "--nonce", "00" * 19 + "01"]
    code, out, _ = run_cli(*args, "--json")
    assert code == 1
    assert [c["name"] for c in json.loads(out)["checks"] if not c["ok"]] == ["debug-mode"]
    assert run_cli(*args, "--allow-debug")[0] == 0


# --- #11: release subjects matched by name, the version bound to the file ----------------------

RELEASES = Path(__file__).resolve().parents[1] / "measurements"
DEV_KEY = RELEASES / "release-dev-key.pub.pem"


def verify_release_cli(*args: str) -> tuple[int, list[tuple[str, str]]]:
    code, out, _ = run_cli("measurements", *args, "--key", str(DEV_KEY), "--json")
    failed = [(c["name"], c["error"]) for c in json.loads(out)["checks"] if not c["ok"]]
    return code, failed


def test_issue14_11_eif_must_be_the_eif_subject() -> None:
    """The measurements file is a signed subject too, but it is not the EIF."""
    release = str(RELEASES / "0.1.0.json")
    assert verify_release_cli(release) == (0, [])
    code, failed = verify_release_cli(release, "--eif", release)
    assert code == 1 and failed == [("eif", "DigestMismatch")]
    code, failed = verify_release_cli(release, "--provenance", release)
    assert code == 1 and failed == [("provenance", "DigestMismatch")]


def test_issue14_11_renamed_release_fails(tmp_path: Path) -> None:
    """0.1.0.json and its signature renamed to 9.9.9.json: the signed release is 0.1.0."""
    for name in ("9.9.9.json", "0.1.0.json"):
        (tmp_path / name).write_bytes((RELEASES / "0.1.0.json").read_bytes())
        (tmp_path / f"{name}.sig").write_bytes((RELEASES / "0.1.0.json.sig").read_bytes())
    code, failed = verify_release_cli(str(tmp_path / "9.9.9.json"))
    assert code == 1 and failed == [("subject", "DigestMismatch")]
    _, out, _ = run_cli("measurements", str(tmp_path / "9.9.9.json"), "--key", str(DEV_KEY), "--json")
    assert "publishes '0.1.0.json'" in json.dumps(json.loads(out)["checks"])
    assert verify_release_cli(str(tmp_path / "0.1.0.json")) == (0, [])


def test_issue14_11_version_inside_the_file_is_checked(tmp_path: Path) -> None:
    from verify.measurements import load_measurements
    from verify.signed_release import VersionMismatch, _version_agrees

    statement = {"predicate": {"version": "0.1.0", "mode": "development"}}
    doc = json.loads((RELEASES / "0.1.0.json").read_text())
    _version_agrees(statement, load_measurements(json.dumps(doc).encode()))
    doc["Sentinel"]["version"] = "9.9.9"
    with pytest.raises(VersionMismatch, match="Sentinel.version is '9.9.9'"):
        _version_agrees(statement, load_measurements(json.dumps(doc).encode()))
