"""NSM attestation and KMS key loading, each against the primitive that dominates it.

- attest (emulator, through the full CBOR request/response codec, fresh nonce and an RSA public
  key in the document) vs one raw ES384 signature with cryptography over a payload of the same size:
  the emulator's overhead beyond its one signature (CBOR, COSE Sig_structure).
- KMS key load (`load_kms_key`: RSA-2048 keygen, attestation, boto3 Decrypt with Recipient to moto
  server on 127.0.0.1, CMS EnvelopedData opened, SigningKey built) vs a raw RSA-2048 keygen: how much
  the whole start-up path costs beyond the ephemeral key it cannot avoid.

Samples and baselines are taken in interleaved blocks so machine load hits both alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from _harness import Record, compare, tail_extra, time_interleaved

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

N_ATTEST = int(os.environ.get("SENTINEL_BENCH_ATTEST_N", "400"))
N_KMS = int(os.environ.get("SENTINEL_BENCH_KMS_N", "30"))
BLOCKS = 5


def _interleaved(
    fn: Callable[[], object], base: Callable[[], object], n: int, warmup: int
) -> tuple[list[float], list[float]]:
    return time_interleaved(fn, base, n, blocks=BLOCKS, warmup=warmup)


def _attest() -> Record:
    import cbor2
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from enclave.nsm.emulator import EmulatedNsm

    nsm = EmulatedNsm(pcrs={i: bytes([i]) * 48 for i in range(16)})
    public_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    nonce = os.urandom(32)
    doc = nsm.attestation(nonce=nonce, public_key=public_key)
    payload = cbor2.loads(doc)[2]
    leaf = ec.generate_private_key(ec.SECP384R1())
    algorithm = ec.ECDSA(hashes.SHA384())
    samples, baseline = _interleaved(
        lambda: nsm.attestation(nonce=nonce, public_key=public_key),
        lambda: leaf.sign(payload, algorithm),
        N_ATTEST,
        warmup=20,
    )
    return compare(
        "nsm attest (emulator, CBOR round trip)",
        samples,
        "raw ES384 sign (same payload size)",
        baseline,
        extra=tail_extra(samples, baseline, document_bytes=float(len(doc))),
    )


def _kms() -> Record:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from kms_support import RecipientKmsServer

    from enclave.kms import encrypt_secret, load_kms_key
    from enclave.nsm.emulator import EmulatedNsm

    nsm = EmulatedNsm()
    with RecipientKmsServer(root=nsm.ca.root).running() as server:
        client = server.client()
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        secret = os.urandom(31) + b"\x01"
        blob = encrypt_secret(client, key_id, secret)
        samples, baseline = _interleaved(
            lambda: load_kms_key(blob, nsm=nsm, client=client, key_id=key_id),
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            N_KMS,
            warmup=2,
        )
    return compare(
        "kms key load (moto server, Recipient)",
        samples,
        "raw RSA-2048 keygen",
        baseline,
        extra=tail_extra(samples, baseline),
    )


def run() -> list[Record]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto server's per-request lines
    return [_attest(), _kms()]
