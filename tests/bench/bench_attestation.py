"""Attestation verification time per document vs one bare ES384 signature check.

The baseline is cryptography's P-384 ECDSA verify of the document's own Sig_structure with the
leaf's already-loaded key: the one signature no verifier can skip. A document's full chain has
4 certificate signatures plus the COSE one, so a verifier that redoes everything costs >= 5x; the
verifier remembers validated CA bundles (instances reuse them for days), leaving the leaf link and
the COSE signature per document. Samples and baseline are interleaved in blocks so machine load hits
both alike. Target: warm p50 <= 4x. The cold figure (fresh verifier, full path) is reported too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from _harness import Record, compare, time_interleaved
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verify.attestation import DOCUMENT_TIME, AttestationVerifier, UnsafeNoOp, parse_document

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "attestation"
DOCS = ["evervault_beta_valid_2022.bin", "eternis_example_2024.bin"]
N = int(os.environ.get("SENTINEL_BENCH_N", "2000")) // 4
BLOCKS = 8


class _Quiet(UnsafeNoOp):
    """Authenticity only, without UnsafeNoOp's per-call warning flooding the benchmark's log."""

    def verify(self, document: object) -> None:
        return None


def _bare_es384(data: bytes) -> Callable[[], object]:
    cose = parse_document(data).cose
    leaf = x509.load_der_x509_certificate(parse_document(data).document.certificate)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig = cose.signature
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    message = cose.sig_structure()
    algorithm = ec.ECDSA(hashes.SHA384())
    return lambda: key.verify(der, message, algorithm)


def _document_records(name: str, policy: UnsafeNoOp) -> list[Record]:
    data = (ASSETS / name).read_bytes()
    base = _bare_es384(data)
    warm = AttestationVerifier.aws_nitro(now=DOCUMENT_TIME)
    warm.verify(data, policy)
    samples, baseline = time_interleaved(
        lambda: warm.verify(data, policy), base, N, blocks=BLOCKS, warmup=5
    )
    records = [compare(f"attestation verify {name} (warm)", samples, "ES384 verify", baseline)]
    root = warm.root

    def cold() -> object:
        return AttestationVerifier(root=root, now=DOCUMENT_TIME).verify(data, policy)

    samples, baseline = time_interleaved(
        cold, base, max(BLOCKS, N // 4), blocks=BLOCKS, warmup=5
    )
    records.append(compare(f"attestation verify {name} (cold)", samples, "ES384 verify", baseline))
    return records


def run() -> list[Record]:
    policy = _Quiet()
    return [r for name in DOCS for r in _document_records(name, policy)]
