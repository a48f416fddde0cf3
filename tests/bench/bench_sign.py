"""Signer latency: protocol round trips over a Unix socket vs the raw libsecp256k1 signature.

The signer runs as its own process (`python -m enclave serve`, connection thread pinned to one CPU,
busy-polling); this process is the client, pinned to another CPU, busy-polling too. The baseline is
coincurve's `sign_recoverable` of the same digest in this process. Samples and baseline are taken in
interleaved blocks so that load from other processes on the machine hits both alike.

Samples per record: SENTINEL_BENCH_N (default 20000), in 10 interleaved blocks.

Records, cold (policy presign_pool = 0: every signature RFC 6979): sign-digest round trip / raw
sign, EIP-1559 tx sign in-process (RLP + 2 keccak + sign) / raw sign, tx sign round trip / raw sign,
ping round trip / raw sign (the transport's share), attest round trip / in-process emulator
attestation.

Records, presigned (issue 13; a pool large enough that a record never drains it, checked by the
signer's STATS and reported as `fallbacks`): sign-digest round trip (target p50 <= 0.4x, p99 <= 1.0x),
EIP-1559 tx round trip (p50 <= 0.6x, p99 <= 1.2x), reorg reaction through the signer, 10 tx, batch
(build 10 replacement transactions with bumped fees and sign them in one SIGN_TX_BATCH round trip:
the signer's share of a reorg; target <= 2x), and sustained signing with the shipped pool of 1024
being refilled: the refill rate is measured first, then 10,000 requests are paced at 90 % of it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import Record, compare, percentile, time_calls, time_interleaved
from _signer import dev_policy_with_pool, signer_cpus, start_signer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from anvil_support import DEV_KEY_0  # noqa: E402

N = int(os.environ.get("SENTINEL_BENCH_N", "20000"))
BLOCKS = 10
#: Pool of the presigned records' signer: more than one record's samples, so none drains it.
BENCH_POOL = 65536
SUSTAINED = 10_000


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
        cold_policy = dev_policy_with_pool(Path(tmp), 0)
        proc = start_signer(sock, key_file, server_cpu, policy=cold_policy)
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
        records.extend(
            _bench_presigned(Path(tmp), key_file, server_cpu, client_cpu, old_affinity, raw, tx)
        )
        records.extend(_bench_attest(Path(tmp), key_file, server_cpu, client_cpu, old_affinity))
    return records


def _wait_pool(client: object, size: int, timeout: float = 120.0) -> None:
    """Wait until the signer's pool is full again (its refill thread works in the background)."""
    deadline = time.monotonic() + timeout
    while client.stats().presign_ready < size:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError(f"presignature pool did not refill to {size} in {timeout} s")
        time.sleep(0.05)


def _bench_presigned(
    tmp: Path, key_file: Path, server_cpu: int, client_cpu: int, old_affinity: set[int],
    raw: Callable[[], object], tx: object,
) -> list[Record]:  # fmt: skip
    from eth_account import Account

    from enclave.tx import UnsignedTx
    from router.fees import Fees
    from router.signer_client import SignerClient
    from router.signing import build_tx

    assert isinstance(tx, UnsignedTx)
    records: list[Record] = []
    digest = bytes(range(32))
    sock = tmp / "presign.sock"
    proc = start_signer(
        sock, key_file, server_cpu, policy=dev_policy_with_pool(tmp, BENCH_POOL)
    )
    try:
        os.sched_setaffinity(0, {client_cpu})
        with SignerClient.connect(f"unix:{sock}", cpu=client_cpu) as client:
            _wait_pool(client, BENCH_POOL)

            def measured(name: str, fn: Callable[[], object], n: int, **more: float) -> None:
                _wait_pool(client, BENCH_POOL)
                before = client.stats()
                s, b = _interleaved(fn, raw, n)
                after = client.stats()
                records.append(compare(name, s, "coincurve sign_recoverable", b, extra=_extra(
                    s, b, presigned=after.presigned - before.presigned,
                    fallbacks=after.presign_fallbacks - before.presign_fallbacks, **more,
                )))  # fmt: skip

            measured("sign-digest round trip, unix, pinned, busy-poll, presigned",
                     lambda: client.sign_digest(digest), N, target_p50=0.4, target_p99=1.0)
            measured("EIP-1559 tx round trip, presigned", lambda: client.sign_tx(tx), N,
                     target_p50=0.6, target_p99=1.2)
            # Ten of our transactions were in the dropped block: their replacements (same nonces,
            # fees bumped 12.5 %) are built and signed in one round trip.
            intents = [_intent(i) for i in range(10)]
            fees = Fees(tx.max_fee_per_gas * 9 // 8 + 1, tx.max_priority_fee_per_gas * 9 // 8 + 1)

            def reorg_batch() -> object:
                out = client.sign_tx_batch(
                    [build_tx(31337, 100 + i, intent, fees) for i, intent in enumerate(intents)]
                )
                return [r.raw for r in out]  # type: ignore[union-attr]

            check = client.sign_tx_batch([build_tx(31337, 100, intents[0], fees)])[0]
            assert Account.recover_transaction(check.raw) == client.address().address  # type: ignore[union-attr]
            measured("reorg reaction through the signer, 10 tx, batch (build + one SIGN_TX_BATCH)",
                     reorg_batch, max(200, N // 10), target_p50=2.0)  # fmt: skip
    finally:
        os.sched_setaffinity(0, old_affinity)
        proc.terminate()
        proc.wait(10)
    records.append(_bench_sustained(tmp, key_file, server_cpu, client_cpu, old_affinity, raw))
    return records


def _intent(i: int) -> object:
    from router.intent import Intent

    return Intent(to=bytes([i + 1]) * 20, value=i, data=bytes.fromhex("a9059cbb") + bytes(64),
                  gas=60_000)  # fmt: skip


def _bench_sustained(
    tmp: Path, key_file: Path, server_cpu: int, client_cpu: int, old_affinity: set[int],
    raw: Callable[[], object],
) -> Record:  # fmt: skip
    """The shipped pool (1024) under load: refill rate first, then SUSTAINED paced requests."""
    from router.signer_client import SignerClient

    digest = bytes(range(32))
    sock = tmp / "sustained.sock"
    pool = 1024
    proc = start_signer(sock, key_file, server_cpu, policy=dev_policy_with_pool(tmp, pool))
    try:
        os.sched_setaffinity(0, {client_cpu})
        with SignerClient.connect(f"unix:{sock}", cpu=client_cpu) as client:
            _wait_pool(client, pool)
            # Refill rate: drain the pool (and more) back to back, then watch it come back.
            for _ in range(2 * pool):
                client.sign_digest(digest)
            t0, ready0 = time.perf_counter(), client.stats().presign_ready
            time.sleep(0.05)
            t1, ready1 = time.perf_counter(), client.stats().presign_ready
            refill_rate = max(1.0, (ready1 - ready0) / (t1 - t0))
            _wait_pool(client, pool)
            rate = 0.9 * refill_rate
            interval = 1.0 / rate
            before = client.stats()
            clock = time.perf_counter
            samples: list[float] = []
            start = next_at = clock()
            for _ in range(SUSTAINED):
                # Sleep through most of the gap: on a 2-CPU machine the refill thread shares the
                # client's CPU, and a busy-waiting client would starve it.
                gap = next_at - clock()
                if gap > 1e-4:
                    time.sleep(gap - 8e-5)
                while clock() < next_at:
                    pass
                t = time.perf_counter_ns()
                client.sign_digest(digest)
                samples.append((time.perf_counter_ns() - t) / 1000.0)
                next_at += interval
            elapsed = clock() - start
            after = client.stats()
        baseline = time_calls(raw, 2000, warmup=50)
        return compare(
            "sustained signing, pool refilling (10,000 requests, 90% of the refill rate)",
            samples, "coincurve sign_recoverable", baseline, extra=_extra(
                samples, baseline, rate_per_s=SUSTAINED / elapsed, refill_rate_per_s=refill_rate,
                presigned=after.presigned - before.presigned,
                fallbacks=after.presign_fallbacks - before.presign_fallbacks,
            ),
        )  # fmt: skip
    finally:
        os.sched_setaffinity(0, old_affinity)
        proc.terminate()
        proc.wait(10)


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
