"""Presignatures (enclave/presign.py): one test per constraint of issue 13.

Verification is independent of the code under test: coincurve's and `cryptography`'s ECDSA verify,
public-key recovery, eth-account's transaction recovery. Set SENTINEL_PRESIGN_DISTINCT_N=1000000 to
run the distinct-r check at the issue's full size (`nox -s tests -- tests/test_presign.py -k distinct`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import coincurve
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from signer_support import DEV_POLICY, dev_key, running_signer

from enclave.errors import PolicyFileError
from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import Policy
from enclave.presign import CURVE_ORDER, MAX_POOL, NonceSource, PresignError, PresignPool
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx, sign_tx
from router.signer_client import SignerClient

N = CURVE_ORDER
HALF_N = N // 2


def _verify_everywhere(key: SigningKey, digest: bytes, sig: bytes) -> None:
    """Assert `sig` verifies under coincurve and cryptography, is low-s, recovers `key`."""
    assert len(sig) == 65 and sig[64] in (0, 1)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    assert 0 < r < N and 0 < s <= HALF_N
    der = utils.encode_dss_signature(r, s)
    assert coincurve.PublicKey(key.public_key).verify(der, digest, hasher=None)
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), key.public_key)
    try:
        pub.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:  # pragma: no cover - the assertion's message is the point
        raise AssertionError("cryptography refuses the signature") from None
    recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    assert recovered.format(compressed=False) == key.public_key


def _keyed_pool(size: int, secret: bytes | None = None) -> tuple[SigningKey, PresignPool]:
    key = SigningKey(secret or os.urandom(32), origin=KeyOrigin.DEV)
    pool = PresignPool(size)
    pool.fill()
    key.use_presignatures(pool)
    return key, pool


_SCALARS = st.integers(min_value=1, max_value=N - 1).map(lambda i: i.to_bytes(32, "big"))


@settings(max_examples=200, deadline=None)
@given(secret=_SCALARS, digest=st.binary(min_size=32, max_size=32))
def test_every_presigned_signature_verifies_and_recovers(secret: bytes, digest: bytes) -> None:
    key, pool = _keyed_pool(2, secret)
    try:
        sig = key.sign_digest(digest)
        _verify_everywhere(key, digest, sig)
        z = int.from_bytes(digest, "big")
        if 0 < z < N:  # otherwise RFC 6979 signed it (a fallback, checked separately)
            assert pool.presigned == 1
            assert sig != coincurve.PrivateKey(secret).sign_recoverable(digest, hasher=None)
    finally:
        pool.close()


def test_eth_account_recovers_the_signer_of_presigned_transactions() -> None:
    key, pool = _keyed_pool(64)
    try:
        for i in range(32):
            tx = UnsignedTx(
                TX_EIP1559 if i % 2 else TX_LEGACY, 31337, i, 21_000 + i, os.urandom(20), i,
                os.urandom(i), 10**9 + i, (10**9 if i % 2 else 0),
            )  # fmt: skip
            signed = sign_tx(key, tx)
            assert Account.recover_transaction(signed.raw) == key.address
        assert pool.presigned == 32
    finally:
        pool.close()


def test_low_s_always_and_both_parities_occur() -> None:
    key, pool = _keyed_pool(2000)
    try:
        parities = set()
        for _ in range(2000):
            digest = os.urandom(32)
            sig = key.sign_digest(digest)
            assert int.from_bytes(sig[32:64], "big") <= HALF_N
            parities.add(sig[64])
            recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
            assert recovered.format(compressed=False) == key.public_key
        assert parities == {0, 1}
        assert pool.presigned == 2000
    finally:
        pool.close()


def test_distinct_r_across_a_large_run() -> None:
    """Every signature has its own r (no k used twice). 100,000 here; the issue's 1,000,000 with
    SENTINEL_PRESIGN_DISTINCT_N=1000000."""
    total = int(os.environ.get("SENTINEL_PRESIGN_DISTINCT_N", "100000"))
    key, pool = _keyed_pool(1000)
    seen: set[bytes] = set()
    try:
        digest = os.urandom(32)
        done = 0
        while done < total:
            pool.fill()
            for _ in range(min(1000, total - done)):
                seen.add(key.sign_digest(digest)[:32])
                done += 1
        assert len(seen) == total
        assert pool.presigned == total and pool.fallbacks == 0
    finally:
        pool.close()


def test_pool_is_taken_atomically_under_threads_with_refill_running() -> None:
    key = dev_key()
    pool = PresignPool(300, low_water=250)
    key.use_presignatures(pool)
    pool.start_refill()
    per_thread, threads = 1500, 4
    results: list[list[tuple[bytes, bytes]]] = [[] for _ in range(threads)]

    def work(i: int) -> None:
        for _ in range(per_thread):
            d = os.urandom(32)
            results[i].append((d, key.sign_digest(d)))

    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        sigs = [x for r in results for x in r]
        assert len(sigs) == per_thread * threads
        presigned_rs = [s[:32] for d, s in sigs if s != key._key.sign_recoverable(d, hasher=None)]
        assert len(presigned_rs) == pool.presigned > 0
        assert len(set(presigned_rs)) == len(presigned_rs)  # no presignature used twice
        for d, s in sigs[:: max(1, len(sigs) // 300)]:
            _verify_everywhere(key, d, s)
    finally:
        key.use_presignatures(None)
        pool.close()


def test_secret_buffers_are_wiped_after_use_and_on_close() -> None:
    key, pool = _keyed_pool(5)
    entries = list(pool._entries)
    kinv, work = entries[0][0], entries[0][2]
    assert any(kinv) and any(work)
    key.sign_digest(os.urandom(32))
    assert kinv == bytes(32) and work == bytes(32)
    assert len(pool) == 4
    pool.close()
    for e in entries[1:]:
        assert e[0] == bytes(32) and e[2] == bytes(32)
    assert len(pool) == 0
    assert "kinv" not in repr(pool) and repr(pool) == "PresignPool(size=5, ready=0)"


def _forced(*candidates: bytes) -> object:
    queue = list(candidates)

    def fill(buf: bytearray) -> None:
        buf[:] = queue.pop(0)

    return fill


def test_nonce_sampler_rejects_out_of_range_candidates() -> None:
    good = (12345).to_bytes(32, "big")
    src = NonceSource(fill=_forced(bytes(32), N.to_bytes(32, "big"), b"\xff" * 32, good))  # type: ignore[arg-type]
    k, _ = src.scalar()
    assert bytes(k) == good and src.rejected == 3
    top = (N - 1).to_bytes(32, "big")  # the largest acceptable value is accepted
    assert bytes(NonceSource(fill=_forced(top)).scalar()[0]) == top  # type: ignore[arg-type]


def test_nonce_mixes_in_nsm_get_random() -> None:
    class Nsm:
        def __init__(self) -> None:
            self.calls = 0

        def get_random(self, n: int) -> bytes:
            self.calls += 1
            return bytes([0x5A]) * n

    kernel = (7).to_bytes(32, "big")
    nsm = Nsm()
    src = NonceSource(nsm, fill=_forced(kernel, kernel, kernel), nsm_chunk=64)  # type: ignore[arg-type]
    first = bytes(src.scalar()[0])
    assert first == bytes(a ^ 0x5A for a in kernel)
    src.scalar()
    src.scalar()
    assert nsm.calls == 2  # 64 bytes serve two scalars, then it asks again
    # A mixed candidate out of range is rejected like any other.
    src2 = NonceSource(Nsm(), fill=_forced(bytes([0xA5]) * 32, kernel))  # type: ignore[arg-type]
    assert bytes(src2.scalar()[0]) == bytes(a ^ 0x5A for a in kernel) and src2.rejected == 1


def test_failing_nsm_leaves_the_kernel_rng() -> None:
    class Broken:
        def get_random(self, n: int) -> bytes:
            raise OSError("device gone")

    kernel = (9).to_bytes(32, "big")
    src = NonceSource(Broken(), fill=_forced(kernel))  # type: ignore[arg-type]
    assert bytes(src.scalar()[0]) == kernel


def test_default_nonces_come_from_the_kernel_and_differ() -> None:
    src = NonceSource()
    values = {bytes(src.scalar()[0]) for _ in range(100)}
    assert len(values) == 100 and all(0 < int.from_bytes(v, "big") < N for v in values)
    src.close()


def test_fallback_to_rfc6979_when_the_pool_is_empty() -> None:
    key, pool = _keyed_pool(1)
    digest = os.urandom(32)
    rfc6979 = key._key.sign_recoverable
    first = key.sign_digest(digest)
    second = key.sign_digest(digest)
    assert first != second
    assert second == rfc6979(digest, hasher=None)  # the empty pool's fallback: deterministic
    _verify_everywhere(key, digest, first)
    assert (pool.presigned, pool.fallbacks) == (1, 1)
    pool.close()


@pytest.mark.parametrize("digest", [bytes(32), N.to_bytes(32, "big"), b"\xff" * 32])
def test_edge_case_digests_fall_back_without_spending_a_presignature(digest: bytes) -> None:
    key, pool = _keyed_pool(1)
    assert key.sign_digest(digest) == key._key.sign_recoverable(digest, hasher=None)
    assert (len(pool), pool.fallbacks) == (1, 1)
    pool.close()


def test_z_plus_rd_zero_falls_back_and_spends_the_presignature() -> None:
    key, pool = _keyed_pool(1)
    entry = pool._entries[0]
    r = int.from_bytes(entry[4], "big")
    d = int.from_bytes(key._secret, "big")
    digest = (-r * d % N).to_bytes(32, "big")  # z + r*d = 0: s would be 0
    sig = key.sign_digest(digest)
    assert sig == key._key.sign_recoverable(digest, hasher=None)
    assert len(pool) == 0 and entry[0] == bytes(32) and entry[2] == bytes(32)
    assert pool.fallbacks == 1
    pool.close()


def _policy_with(pool: str) -> Policy:
    text = DEV_POLICY.read_text().replace("presign_pool = 1024", f"presign_pool = {pool}")
    return Policy.from_toml(text)


def test_presign_pool_zero_gives_deterministic_rfc6979(tmp_path: Path) -> None:
    with running_signer(tmp_path, policy=_policy_with("0")) as server:
        with SignerClient.connect(str(server.address), spin_us=0) as client:
            digest = os.urandom(32)
            sig = client.sign_digest(digest)
            assert sig == client.sign_digest(digest)
            assert sig == coincurve.PrivateKey(bytes.fromhex(
                "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            )).sign_recoverable(digest, hasher=None)  # fmt: skip
            stats = client.stats()
            assert (stats.presign_ready, stats.presigned, stats.presign_fallbacks) == (0, 0, 0)


def test_signer_presigns_and_reports_it_in_stats(tmp_path: Path) -> None:
    key = dev_key()
    with running_signer(tmp_path, key=key, policy=_policy_with("64")) as server:
        with SignerClient.connect(str(server.address), spin_us=0) as client:
            for _ in range(200):
                if client.stats().presign_ready == 64:
                    break
                threading.Event().wait(0.05)
            digest = os.urandom(32)
            a, b = client.sign_digest(digest), client.sign_digest(digest)
            assert a != b  # random k: a re-sent request gets a different, equally valid signature
            _verify_everywhere(key, digest, a)
            _verify_everywhere(key, digest, b)
            stats = client.stats()
            assert stats.presigned == 2 and stats.presign_fallbacks == 0
    assert key.presign_pool is None  # detached on close


@pytest.mark.parametrize(
    "value,message",
    [
        ("true", "must be an integer (got bool)"),
        ("-1", "must be in 0..65536"),
        (str(MAX_POOL + 1), "must be in 0..65536"),
        ("10000000000000000000", "must be in 0..65536"),
        ('"1024"', "must be an integer (got str)"),
        ("1.5", "must be an integer (got float)"),
    ],
)
def test_policy_presign_pool_validation(value: str, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _policy_with(value)


def test_policy_presign_pool_default_and_shipped_values() -> None:
    text = DEV_POLICY.read_text().replace("presign_pool = 1024", "")
    assert Policy.from_toml(text).presign_pool == 0
    assert _policy_with("0").presign_pool == 0
    assert _policy_with(str(MAX_POOL)).presign_pool == MAX_POOL
    from enclave.policy import DEFAULT_POLICY, load_policy

    assert load_policy(DEFAULT_POLICY).presign_pool == 1024
    assert load_policy(DEV_POLICY).presign_pool == 1024


def test_pool_size_is_validated() -> None:
    for bad in (0, -1, MAX_POOL + 1, True):
        with pytest.raises(ValueError, match="pool size"):
            PresignPool(bad)
    with pytest.raises(ValueError, match="low_water"):
        PresignPool(10, low_water=11)


def test_close_leaves_a_busy_refill_thread_to_wipe_the_pool_itself() -> None:
    """A starved refill thread (nice 19 on a loaded host) outlives close()'s wait: close must not
    wipe entries or close the random source under it; the thread does both when it stops."""
    release = threading.Event()
    started = threading.Event()
    calls = 0

    def slow_fill(buf: bytearray) -> None:
        nonlocal calls
        calls += 1
        if calls > 8:  # the first entries fill at once; the refill thread then blocks here
            started.set()
            release.wait(30)
        buf[:] = os.urandom(32)

    nonces = NonceSource(fill=slow_fill)
    pool = PresignPool(8, nonces=nonces, low_water=8)
    pool.fill(4)  # 4 of 8: the refill thread starts preparing the 5th and blocks in the RNG
    entries = list(pool._entries)
    thread = pool.start_refill()
    assert started.wait(10)
    pool.close(timeout=0.2)
    assert thread.is_alive()
    assert len(pool) == 4 and all(any(e[0]) for e in entries)  # not torn down under the thread
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(pool) == 0
    for e in entries:
        assert e[0] == bytes(32) and e[2] == bytes(32)
    pool.close()  # again: nothing left to do, and no error


def test_kernel_rng_closes_its_descriptor_once() -> None:
    """A second close must not close a descriptor number the process has reused since."""
    src = NonceSource()
    src.close()
    reused = os.open(os.devnull, os.O_RDONLY)
    try:
        src.close()
        os.fstat(reused)  # still open
        with pytest.raises(PresignError, match="kernel RNG"):
            src.scalar()
    finally:
        os.close(reused)
