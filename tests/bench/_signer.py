"""The signer as its own process for the round-trip benchmarks, and the CPUs to pin both ends to."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def signer_cpus() -> tuple[int, int]:
    """(client CPU, server CPU): two different ones when this process may use two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], cpus[0])


DEV_POLICY = ROOT / "enclave" / "policy.dev.toml"


def dev_policy_with_pool(directory: Path, pool: int) -> Path:
    """The development policy with `presign_pool = pool` (0: RFC 6979 only), written in `directory`."""
    text = DEV_POLICY.read_text()
    if "presign_pool = " not in text:
        raise RuntimeError(f"{DEV_POLICY} has no presign_pool line to change")
    out = directory / f"policy-pool-{pool}.toml"
    out.write_text(
        "\n".join(f"presign_pool = {pool}" if line.startswith("presign_pool = ") else line
                  for line in text.splitlines()) + "\n"
    )  # fmt: skip
    return out


def start_signer(
    sock: Path, key_file: Path, cpu: int, *extra: str, policy: Path = DEV_POLICY
) -> subprocess.Popen[bytes]:
    """`python -m enclave serve` on unix:`sock` with the dev key and `policy` (default: the dev
    policy), pinned to `cpu`; returns once the socket exists (raises RuntimeError with the signer's
    stderr otherwise)."""
    cmd = [
        sys.executable, "-m", "enclave", "serve",
        "--listen", f"unix:{sock}",
        "--dev-key-file", str(key_file),
        "--policy", str(policy),
        "--cpu", str(cpu),
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"signer did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        time.sleep(0.02)
    return proc
