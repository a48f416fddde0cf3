"""`python -m enclave serve --kms-key-blob`: the production key path end to end, as a process.

The key exists only as a KMS blob; serve attests an ephemeral RSA key with the NSM (the emulator,
whose root the test KMS pins, as AWS pins the Nitro root), gets the key through KMS Decrypt with
`Recipient` from moto running as a real HTTP server, and signs under a *production* policy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from eth_account import Account
from kms_support import RecipientKmsServer
from signer_support import ROOT

from enclave.kms import generate_key_blob
from enclave.nsm.ca import EmulatorCa
from enclave.tx import TX_EIP1559, UnsignedTx
from router.signer_client import SignerClient

DEST = bytes.fromhex("70997970c51812dc3a010c7d01b50e0d17dc79c8")
POLICY = f"""
schema = 1
mode = "production"
chain_ids = [31337]
max_value = "1000000000000000000"
max_fee_per_gas = "100000000000"
max_gas = 100000
[rate_limit]
per_second = 100
burst = 100
[[destinations]]
address = "0x{DEST.hex()}"
"""


def test_serve_with_a_kms_key_under_a_production_policy(tmp_path: Path) -> None:
    ca = EmulatorCa.generate()
    ca_dir = tmp_path / "ca"
    ca.save(ca_dir)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    sock = tmp_path / "s.sock"
    with RecipientKmsServer(root=ca.root).running() as kms:
        client = kms.client()
        key_id = client.create_key(Description="sentinel serve test")["KeyMetadata"]["KeyId"]
        blob, address = generate_key_blob(client, key_id)
        blob_file = tmp_path / "signer.kms"
        blob_file.write_bytes(blob)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        env.pop("AWS_PROFILE", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}",
             "--policy", str(policy), "--kms-key-blob", str(blob_file), "--kms-region", "us-east-1",
             "--kms-endpoint-url", kms.endpoint, "--kms-key-id", key_id,
             "--allow-nsm-emulator", "--nsm-emulator-ca", str(ca_dir)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            with SignerClient.connect(f"unix:{sock}", spin_us=0, connect_timeout=60) as signer:
                assert signer.address().address == address
                signed = signer.sign_tx(
                    UnsignedTx(TX_EIP1559, 31337, 0, 21000, DEST, 1, b"", 10**9, 1)
                )
                assert Account.recover_transaction(signed.raw) == address
                assert kms.recipient_decrypts == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert b"policy: production" in err


def test_serve_kms_needs_a_module_and_a_region(tmp_path: Path) -> None:
    blob = tmp_path / "b"
    blob.write_bytes(b"x" * 100)
    base = [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{tmp_path / 's'}",
            "--kms-key-blob", str(blob)]  # fmt: skip
    no_nsm = subprocess.run([*base, "--kms-region", "us-east-1"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert no_nsm.returncode == 1 and "emulator is not allowed" in no_nsm.stderr, no_nsm.stderr
    no_region = subprocess.run([*base, "--allow-nsm-emulator"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    assert no_region.returncode == 2 and "needs --kms-region" in no_region.stderr, no_region.stderr
    both = subprocess.run([*base, "--dev-key-file", str(blob)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert both.returncode == 2 and "exactly one key source" in both.stderr
    for r in (no_nsm, no_region, both):
        assert "Traceback" not in r.stderr
