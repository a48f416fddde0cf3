"""The router's attestation check of its signer (router/attest.py `check_signer`): GET_KEY + ATTEST
over a Unix socket to the real signer with the NSM emulator, then verification (chain, signature,
nonce, freshness, PCRs, key binding).

Samples: the check with the process-wide cached verifier (its validated CA bundles reused).
Baseline, same run, interleaved: the check as it was before, with a fresh verifier per check (PEM
parsed, full path validation every time). Ratio < 1 is the saving per (re)connection.
Samples per record: SENTINEL_BENCH_N // 50 (default 400).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _harness import Record, compare, percentile, time_interleaved

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

N = max(40, int(os.environ.get("SENTINEL_BENCH_N", "20000")) // 50)


def run() -> list[Record]:
    from signer_support import running_signer

    from enclave.nsm.emulator import EmulatedNsm
    from router.attest import AttestationPolicy, _verifier, check_signer
    from router.signer_client import SignerClient

    pcrs = {0: bytes([1]) * 48, 1: bytes([2]) * 48, 2: bytes([3]) * 48}
    nsm = EmulatedNsm(pcrs=pcrs)
    policy = AttestationPolicy(pcrs, root_pem=nsm.root_pem)

    def fresh() -> object:
        _verifier.cache_clear()  # what every check paid before: a new verifier, cold chain cache
        return check_signer(client, policy)

    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        with running_signer(Path(tmp), nsm=nsm) as server:
            with SignerClient.connect(str(server.address), spin_us=0) as client:
                check_signer(client, policy)
                s, b = time_interleaved(lambda: check_signer(client, policy), fresh, N,
                                        blocks=8, warmup=5)  # fmt: skip
    return [
        compare(
            "signer attestation check, cached verifier (unix, emulator)", s,
            "same check, fresh verifier per check", b,
            extra={"p99_9": percentile(s, 99.9), "loadavg_1m": os.getloadavg()[0]},
        )
    ]  # fmt: skip
