"""Signer latency: protocol round trips over a Unix socket vs the raw libsecp256k1 signature.

The signer runs as its own process (`python -m enclave serve`, connection thread pinned to one CPU,
busy-polling); this process is the client, pinned to another CPU, busy-polling too. The baseline is
coincurve's `sign_recoverable` of the same digest in this process. Samples and baseline are taken in
interleaved blocks so that load from other processes on the machine hits both alike.

Samples per record: SENTINEL_BENCH_N (default 20000), in 10 interleaved blocks.

Records: sign-digest round trip / raw sign (target p50 <= 1.2x, floor 1.5x), EIP-1559 tx sign
in-process (RLP + 2 keccak + sign) / raw sign (target <= 1.3x), tx sign round trip / raw sign, ping
round trip / raw sign (the transport's share), attest round trip / in-process emulator attestation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _harness import Record, compare, percentile, time_interleaved
from _signer import signer_cpus, start_signer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from anvil_support import DEV_KEY_0  # noqa: E402

N = int(os.environ.get("SENTINEL_BENCH_N", "20000"))
BLOCKS = 10


def _interleaved(
    fn: Callable[[], object], base: Callable[[], object], n: int
) -> tuple[list[float], list[float]]:
    return time_interleaved(fn, base, n, blocks=BLOCKS, warmup=50)


def _extra(samples: list[float], baseline: list[float], **more: float) -> dict[str, float]:
    return {
        "p99_9": percentile(samples, 99.9),
        "baseline_p99": percentile(baseline, 99),
        "baseline_p99_9": percentile(baseline, 99.9),
        "loadavg_1m": os.getloadavg()[0],
        **more,
    }


def run() -> list[Record]:
    import coincurve

    from enclave.keys import KeyOrigin, SigningKey
    from enclave.tx import TX_EIP1559, UnsignedTx, sign_tx
    from router.signer_client import SignerClient

    client_cpu, server_cpu = signer_cpus()
    old_affinity = os.sched_getaffinity(0)
    records: list[Record] = []
    raw_key = coincurve.PrivateKey(DEV_KEY_0)
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    digest = bytes(range(32))
    tx = UnsignedTx(
        tx_type=TX_EIP1559, chain_id=31337, nonce=7, gas=60_000,
        to=bytes.fromhex("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"), value=0,
        data=bytes.fromhex("a9059cbb") + bytes(12) + bytes(range(20)) + (10**6).to_bytes(32, "big"),
        max_fee_per_gas=30 * 10**9, max_priority_fee_per_gas=10**9,
    )  # fmt: skip

    def raw() -> object:
        return raw_key.sign_recoverable(digest, hasher=None)

    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        key_file = Path(tmp) / "dev.key"
        key_file.write_text(DEV_KEY_0.hex())
        sock = Path(tmp) / "signer.sock"
        proc = start_signer(sock, key_file, server_cpu)
        try:
            os.sched_setaffinity(0, {client_cpu})
            with SignerClient.connect(f"unix:{sock}", cpu=client_cpu) as client:
                assert client.sign_digest(digest) == raw()
                assert client.sign_tx(tx) == sign_tx(key, tx)
                s, b = _interleaved(lambda: client.sign_digest(digest), raw, N)
                records.append(compare(
                    "sign-digest round trip (unix, pinned, busy-poll)", s, "coincurve sign_recoverable",
                    b, extra=_extra(s, b, client_cpu=client_cpu, server_cpu=server_cpu),
                ))  # fmt: skip
                s, b = _interleaved(lambda: sign_tx(key, tx), raw, N)
                records.append(compare(
                    "EIP-1559 tx sign in-process (RLP+keccak+sign)", s, "coincurve sign_recoverable",
                    b, extra=_extra(s, b),
                ))  # fmt: skip
                s, b = _interleaved(lambda: client.sign_tx(tx), raw, N)
                records.append(compare(
                    "EIP-1559 tx sign round trip (unix, pinned, busy-poll)", s,
                    "coincurve sign_recoverable", b, extra=_extra(s, b),
                ))  # fmt: skip
                s, b = _interleaved(client.ping, raw, N)
                records.append(compare(
                    "ping round trip (unix, pinned, busy-poll)", s, "coincurve sign_recoverable",
                    b, extra=_extra(s, b),
                ))  # fmt: skip
        finally:
            os.sched_setaffinity(0, old_affinity)
            proc.terminate()
            proc.wait(10)
        records.extend(_bench_attest(Path(tmp), key_file, server_cpu, client_cpu, old_affinity))
    return records


def _bench_attest(
    tmp: Path, key_file: Path, server_cpu: int, client_cpu: int, old_affinity: set[int]
) -> list[Record]:
    """Attest round trip against an in-process emulator attestation (skipped without the emulator)."""
    try:
        from enclave.nsm import open_nsm

        local = open_nsm(True)
    except Exception as e:  # the NSM package is another helper's; measure what exists
        print(f"bench_sign: attest skipped ({type(e).__name__}: {e})", file=sys.stderr)
        return []
    from router.signer_client import SignerClient

    sock = tmp / "attest.sock"
    proc = start_signer(sock, key_file, server_cpu, "--allow-nsm-emulator")
    nonce, user_data = bytes(range(32)), b"bench"
    try:
        os.sched_setaffinity(0, {client_cpu})
        with SignerClient.connect(f"unix:{sock}", cpu=client_cpu) as client:
            n = max(50, N // 100)
            s, b = _interleaved(
                lambda: client.attest(nonce=nonce, user_data=user_data),
                lambda: local.attestation(nonce=nonce, user_data=user_data, public_key=None),
                n,
            )
            return [
                compare(
                    "attest round trip (unix, emulator)", s, "emulator attestation in-process", b,
                    extra=_extra(s, b),
                )
            ]  # fmt: skip
    finally:
        os.sched_setaffinity(0, old_affinity)
        proc.terminate()
        proc.wait(10)
