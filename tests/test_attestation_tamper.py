"""Every single-byte change of a real document is refused, and random corruption never passes or crashes.

The real documents are signed by AWS, so these tests cannot re-sign them: each changed byte must be
caught by structure, chain or signature checks. Each region is swept at every position with two
masks (low bit, all bits); one verifier is shared so the chain cache is in play, as in production.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cbor2
import pytest
from attestation_support import TestPki, make_document, make_payload, resign, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.attestation import (
    DOCUMENT_TIME,
    AttestationVerifier,
    ChainInvalid,
    MalformedAttestation,
    SignatureInvalid,
    TimestampInvalid,
    UnsafeNoOp,
    UnsupportedAlgorithm,
)
from verify.errors import VerifyError

ASSETS = Path(__file__).parent / "assets" / "attestation"
DOCS = ["evervault_beta_valid_2022.bin", "eternis_example_2024.bin"]
VERIFIER = AttestationVerifier.aws_nitro(now=DOCUMENT_TIME)
NO_POLICY = UnsafeNoOp()


def regions(data: bytes) -> dict[str, Sequence[int]]:
    """Byte positions of the document's parts, located in the raw encoding."""
    protected, _, payload, signature = cbor2.loads(data)
    fields = cbor2.loads(payload)
    p0 = data.index(payload)
    out: dict[str, Sequence[int]] = {
        "envelope+protected": range(0, data.index(protected) + len(protected)),
        "signature": range(len(data) - len(signature), len(data)),
        "certificate": _within(p0, payload, fields["certificate"]),
    }
    for i, der in enumerate(fields["cabundle"]):
        out[f"cabundle[{i}]"] = _within(p0, payload, der)
    named = {i for r in out.values() for i in r}
    out["payload (other fields)"] = [i for i in range(p0, p0 + len(payload)) if i not in named]
    return out


def _within(p0: int, payload: bytes, part: bytes) -> range:
    start = p0 + payload.index(part)
    return range(start, start + len(part))


EXPECTED = {
    "envelope+protected": (MalformedAttestation, UnsupportedAlgorithm, SignatureInvalid),
    "signature": (SignatureInvalid,),
    "certificate": (MalformedAttestation, ChainInvalid, TimestampInvalid, SignatureInvalid),
    "payload (other fields)": (MalformedAttestation, ChainInvalid, SignatureInvalid, TimestampInvalid),
}
CERT_ERRORS = (MalformedAttestation, ChainInvalid, SignatureInvalid)


def test_regions_cover_every_byte() -> None:
    for name in DOCS:
        data = (ASSETS / name).read_bytes()
        seen = sorted(i for r in regions(data).values() for i in r)
        # The unprotected header and the payload/signature framing sit between the named regions.
        assert len(seen) == len(set(seen))
        assert len(data) - len(seen) <= 8


@pytest.mark.parametrize("name", DOCS)
@pytest.mark.parametrize(
    "region",
    ["envelope+protected", "signature", "certificate", "cabundle[0]", "cabundle[1]", "cabundle[2]",
     "cabundle[3]", "payload (other fields)"],
)
def test_every_single_byte_change_is_refused(name: str, region: str) -> None:
    data = (ASSETS / name).read_bytes()
    VERIFIER.verify(data, NO_POLICY)
    positions = regions(data)[region]
    expected = EXPECTED.get(region, CERT_ERRORS)
    kinds: Counter[str] = Counter()
    for pos in positions:
        for mask in (0x01, 0xFF):
            tampered = bytearray(data)
            tampered[pos] ^= mask
            with pytest.raises(VerifyError) as info:
                VERIFIER.verify(bytes(tampered), NO_POLICY)
            assert isinstance(info.value, expected), (pos, mask, info.value)
            kinds[type(info.value).__name__] += 1
    assert sum(kinds.values()) == 2 * len(positions) > 0


def test_unprotected_header_and_framing_changes_are_refused() -> None:
    """The bytes between regions: unprotected map, bstr heads of payload and signature."""
    for name in DOCS:
        data = (ASSETS / name).read_bytes()
        named = {i for r in regions(data).values() for i in r}
        rest = [i for i in range(len(data)) if i not in named]
        assert rest
        for pos in rest:
            for mask in (0x01, 0x20, 0xFF):
                tampered = bytearray(data)
                tampered[pos] ^= mask
                with pytest.raises(VerifyError):
                    VERIFIER.verify(bytes(tampered), NO_POLICY)


# --- property tests: random corruption never passes and never crashes ------------------------

_DATA = [(ASSETS / name).read_bytes() for name in DOCS]


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(_DATA[draw(st.integers(0, len(_DATA) - 1))])
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "append", "delete"]))
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8, unique=True)):
            data[pos] ^= draw(st.integers(1, 255))
    elif kind == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        old = data[start : start + len(chunk)]
        if bytes(old) == chunk[: len(old)]:
            chunk = bytes(b ^ 0x55 for b in chunk)
        data[start : start + len(chunk)] = chunk[: len(old)]
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=32))
    else:
        start = draw(st.integers(0, len(data) - 1))
        del data[start : start + draw(st.integers(1, 64))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_random_corruption_never_passes(data: bytes) -> None:
    with pytest.raises(VerifyError):
        VERIFIER.verify(data, NO_POLICY)
    report = VERIFIER.report(data, NO_POLICY)
    assert not report and report.exit_code in (1, 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_random_corruption_cli_exits_1_or_2(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("doc") / "doc.bin"
    path.write_bytes(data)
    code, _, err = run_cli("attestation", str(path), "--json")
    assert code in (1, 2), (code, data[:16].hex(), len(data), err[-3000:])
    assert "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    report = VERIFIER.report(data, NO_POLICY)
    assert not report and report.exit_code in (1, 2)


# --- re-signed random payloads: the parser, not the signature, has to hold -------------------

_CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=64)
    | st.text(max_size=16) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers(-2, 40) | st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_PKI = TestPki.generate("resigned")
_GOOD = make_payload(_PKI)
_TEST_VERIFIER = AttestationVerifier(root=_PKI.root, now=DOCUMENT_TIME)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replaced=st.dictionaries(st.sampled_from(sorted(_GOOD) + ["extra"]), _CBOR_VALUES, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(_GOOD)), max_size=2),
)
def test_resigned_random_payload_fields_never_crash(replaced: dict[str, object], dropped: set[str]) -> None:
    payload = {k: v for k, v in {**_GOOD, **replaced}.items() if k not in dropped}
    data = resign(make_document(_PKI), _PKI.leaf_key, payload=cbor2.dumps(payload))
    report = _TEST_VERIFIER.report(data, NO_POLICY)
    assert report.exit_code in (0, 1, 2)
    if report:
        # Accepted only if every field still has AWS's type: the model is complete and typed.
        doc = report.attestation.document  # type: ignore[union-attr]
        assert isinstance(doc.module_id, str) and doc.digest == "SHA384"
        assert all(len(v) == 48 for v in doc.pcrs.values())
