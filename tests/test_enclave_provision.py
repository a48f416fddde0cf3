"""Run-time key provisioning (what a production image's /cmd does) end to end, as processes.

`python -m enclave serve --kms-provision` waits for the parent; `python -m enclave provision` sends
the KMS blob and AWS credentials; boto3 in the signer reaches KMS (moto as a real HTTP server,
taught `Recipient`, from tests/test_kms.py) only through the `--kms-proxy` relay, as it reaches the
parent's vsock-proxy in an enclave. Refused attempts are answered and lose nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cbor2
import pytest
from eth_account import Account
from kms_support import RecipientKmsServer
from nsm_support import verify_document
from signer_support import ROOT, dev_key
from test_enclave_serve_kms import DEST, POLICY
from test_kms import ca, kms, new_key, server  # noqa: F401 (fixtures)

from enclave.errors import TransportError
from enclave.kms import generate_key_blob
from enclave.nsm.ca import EmulatorCa
from enclave.provision import (
    KEY_PCR,
    Provision,
    ProvisionError,
    ProvisionRefused,
    decode_provision,
    encode_provision,
    expected_key_pcr,
    receive_key,
    send_provision,
)
from enclave.tx import TX_EIP1559, UnsignedTx
from router.signer_client import SignerClient

ACCESS, SECRET = "AKIDSENTINELTEST", "s3cr3t-sentinel-credential"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_aws_env(tmp_path: Path) -> dict[str, str]:
    # The signer must get its credentials from the provisioning message, never from this host.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return env


def _provision(tmp_path: Path, to: str, blob: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**_no_aws_env(tmp_path), "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "enclave", "provision", "--enclave", to, "--blob", str(blob),
         "--timeout", "60", "--json", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        assert time.monotonic() < deadline, "the signer never listened for provisioning"
        time.sleep(0.05)


@contextmanager
def serving(tmp_path: Path, kms_server: RecipientKmsServer, ca_dir: Path, *extra: str) -> Iterator[
    tuple[subprocess.Popen[bytes], Path, Path]
]:  # fmt: skip
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    sock, prov = tmp_path / "s.sock", tmp_path / "prov.sock"
    moto_port = int(kms_server.endpoint.rsplit(":", 1)[1])
    # The endpoint's port is served only by the signer's relay, which forwards to moto: boto3 in
    # the signer reaches KMS through --kms-proxy or not at all.
    relay_port = _free_port()
    endpoint = f"http://127.0.0.1:{relay_port}"
    kms_server.route_port(relay_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}",
         "--policy", str(policy), "--kms-provision", f"unix:{prov}", "--kms-region", "us-east-1",
         "--kms-endpoint-url", endpoint, "--kms-proxy", f"tcp:127.0.0.1:{moto_port}",
         "--allow-nsm-emulator", "--nsm-emulator-ca", str(ca_dir), *extra],
        cwd=ROOT, env=_no_aws_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for(prov, proc)
        yield proc, sock, prov
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_provisioned_kms_key_signs_under_a_production_policy(
    kms: RecipientKmsServer,  # noqa: F811 (fixture from tests/test_kms.py)
    ca: EmulatorCa,  # noqa: F811
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    ca.save(ca_dir)
    client, key_id = new_key(kms)
    blob, address = generate_key_blob(client, key_id)
    blob_file = tmp_path / "signer.kms"
    blob_file.write_bytes(blob)
    decrypts = kms.recipient_decrypts
    with serving(tmp_path, kms, ca_dir, "--kms-key-id", key_id) as (proc, sock, prov):
        # 1: no credentials: KMS cannot be called; the answer says so and the signer keeps waiting
        first = _provision(tmp_path, f"unix:{prov}", blob_file, "--no-credentials")
        assert first.returncode == 1 and "credentials" in first.stderr.lower(), first.stderr
        # 2: the parent may not swap the key the image pins
        second = _provision(tmp_path, f"unix:{prov}", blob_file, "--key-id", "other-key")
        assert second.returncode == 1 and "differs from the image's" in second.stderr
        assert not sock.exists() and proc.poll() is None
        # 3: with the parent's credentials, through the relay, the key loads
        ok = _provision(tmp_path, f"unix:{prov}", blob_file)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == {"address": address}
        assert kms.recipient_decrypts == decrypts + 1
        with SignerClient.connect(f"unix:{sock}", spin_us=0, connect_timeout=60) as signer:
            assert signer.address().address == address
            signed = signer.sign_tx(UnsignedTx(TX_EIP1559, 31337, 0, 21000, DEST, 1, b"", 10**9, 1))
            assert Account.recover_transaction(signed.raw) == address
            # every attestation now names the loaded key in PCR16, locked
            body = verify_document(signer.attest(nonce=b"n" * 16), ca.root)
            assert body["pcrs"][KEY_PCR] == expected_key_pcr(bytes.fromhex(address[2:]))
            assert body["pcrs"][KEY_PCR] != bytes(48)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    text = err.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "policy: production" in text and "key provisioning refused" in text
    assert SECRET not in text and ACCESS not in text and "Traceback" not in text


def test_provision_needs_a_region_and_one_source(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{tmp_path / 's'}",
            "--allow-nsm-emulator"]  # fmt: skip
    no_region = subprocess.run([*base, "--kms-provision", f"unix:{tmp_path / 'p'}"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert no_region.returncode == 2 and "--kms-provision needs --kms-region" in no_region.stderr
    two = subprocess.run([*base, "--kms-provision", f"unix:{tmp_path / 'p'}", "--kms-key-blob",
                          str(tmp_path / "b"), "--kms-region", "us-east-1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert two.returncode == 2 and "exactly one key source" in two.stderr
    proxy = subprocess.run([*base, "--kms-provision", f"unix:{tmp_path / 'p'}", "--kms-region",
                            "us-east-1", "--kms-proxy", "vsock:3:8000", "--kms-endpoint-url",
                            "https://192.0.2.1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert proxy.returncode == 2 and "not 127.0.0.1" in proxy.stderr, proxy.stderr
    for r in (no_region, two, proxy):
        assert "Traceback" not in r.stderr


def test_provision_cli_errors(tmp_path: Path) -> None:
    missing = _provision(tmp_path, f"unix:{tmp_path / 'p'}", tmp_path / "nope")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    blob = tmp_path / "b"
    blob.write_bytes(b"x" * 100)
    nobody = _provision(tmp_path, f"unix:{tmp_path / 'p'}", blob)
    assert nobody.returncode == 2 and "cannot connect" in nobody.stderr
    for r in (missing, nobody):
        assert "Traceback" not in r.stderr and SECRET not in r.stderr


# --- the message ------------------------------------------------------------------------------


def test_message_round_trip_and_repr_hides_credentials() -> None:
    p = Provision(b"blob", ACCESS, SECRET, "tok", "key-1", {"a": "b"})
    frame = encode_provision(p)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    back = decode_provision(frame[4:])
    assert (back.blob, back.access_key_id, back.secret_access_key, back.session_token) == (
        b"blob", ACCESS, SECRET, "tok")  # fmt: skip
    assert back.key_id == "key-1" and back.encryption_context == {"a": "b"}
    for text in (repr(p), str(p)):
        assert SECRET not in text and ACCESS not in text and "tok" not in text
    assert decode_provision(encode_provision(Provision(b"x"))[4:]).access_key_id is None


BAD = {
    "not-cbor": b"\xff\xff",
    "not-a-map": cbor2.dumps([1]),
    "unknown-field": cbor2.dumps({"v": 1, "blob": b"x", "plaintext": b"x"}),
    "version": cbor2.dumps({"v": 2, "blob": b"x"}),
    "empty-blob": cbor2.dumps({"v": 1, "blob": b""}),
    "blob-text": cbor2.dumps({"v": 1, "blob": "x"}),
    "aws-not-map": cbor2.dumps({"v": 1, "blob": b"x", "aws": "k"}),
    "aws-no-secret": cbor2.dumps({"v": 1, "blob": b"x", "aws": {"access_key_id": "a"}}),
    "aws-extra": cbor2.dumps({"v": 1, "blob": b"x", "aws": {"access_key_id": "a",
                                                           "secret_access_key": "b", "x": "c"}}),
    "secret-bytes": cbor2.dumps({"v": 1, "blob": b"x", "aws": {"access_key_id": "a",
                                                              "secret_access_key": b"b"}}),
    "key-id-int": cbor2.dumps({"v": 1, "blob": b"x", "key_id": 7}),
    "context-bytes": cbor2.dumps({"v": 1, "blob": b"x", "context": {"a": b"b"}}),
}  # fmt: skip


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_malformed_messages_are_named(body: bytes) -> None:
    with pytest.raises(ProvisionError, match="provisioning message") as e:
        decode_provision(body)
    assert "b'b'" not in str(e.value)


def test_receiver_answers_bad_frames_and_keeps_listening(tmp_path: Path) -> None:
    addr = f"unix:{tmp_path / 'p.sock'}"
    result: dict[str, object] = {}
    ready = threading.Event()

    def load(p: Provision) -> object:
        if p.blob != b"good":
            raise ProvisionRefused("blob refused")
        return dev_key()

    t = threading.Thread(target=lambda: result.update(key=receive_key(
        addr, load, read_timeout=5, on_listening=lambda a: ready.set())))  # type: ignore[arg-type]  # fmt: skip
    t.start()
    assert ready.wait(30)
    # an oversized length, a truncated frame, garbage, a refused load: each answered, then a good one
    for raw in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x10abc", b"\x00\x00\x00\x02\xff\xff"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "p.sock"))
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(4096)
        assert cbor2.loads(answer[4:])["ok"] is False
    with pytest.raises(ProvisionRefused, match="blob refused"):
        send_provision(addr, Provision(b"bad"), timeout=10)
    assert send_provision(addr, Provision(b"good"), timeout=10) == dev_key().address
    t.join(10)
    assert result["key"].address == dev_key().address  # type: ignore[attr-defined]
    with pytest.raises(TransportError, match="cannot connect"):
        send_provision(addr, Provision(b"good"), timeout=2)


def test_bind_key_extends_and_locks_pcr16(ca: EmulatorCa) -> None:  # noqa: F811
    from enclave.nsm.emulator import EmulatedNsm
    from enclave.nsm.errors import NsmError
    from enclave.provision import bind_key

    nsm = EmulatedNsm(ca=ca)
    key = dev_key()
    assert bind_key(nsm, key) == expected_key_pcr(key.address_bytes)
    state = nsm.describe_pcr(KEY_PCR)
    assert state.locked and state.value == expected_key_pcr(key.address_bytes)
    with pytest.raises(NsmError):  # a second key cannot be bound over the first
        bind_key(nsm, key)
    with pytest.raises(ValueError, match="20 bytes"):
        expected_key_pcr(b"short")


def test_loopback_is_brought_up_only_when_down() -> None:
    from enclave.forward import ensure_interface_up

    assert ensure_interface_up("lo") is False  # up on this host: left alone
    with pytest.raises(TransportError, match="cannot bring interface 'nosuch0' up"):
        ensure_interface_up("nosuch0")


_NETNS_PROBE = """
import socket, threading
from enclave.forward import Forwarder
up = socket.socket(); up.bind(("127.0.0.1", 0)); up.listen()
try:
    socket.create_connection(up.getsockname(), timeout=2); print("reachable before")
except OSError as e:
    print("unreachable before:", e.errno)
def echo():
    conn, _ = up.accept()
    with conn:
        conn.sendall(conn.recv(100).upper())
threading.Thread(target=echo, daemon=True).start()
with Forwarder("tcp:127.0.0.1:0", f"tcp:127.0.0.1:{up.getsockname()[1]}") as f:
    with socket.create_connection(("127.0.0.1", f.address.port), timeout=5) as c:
        c.sendall(b"relay"); print(c.recv(100).decode())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root + unshare"
)
def test_relay_brings_a_down_loopback_up() -> None:
    # A fresh network namespace starts with `lo` down, like an enclave under AWS's init.
    res = subprocess.run([shutil.which("unshare") or "unshare", "-n", sys.executable, "-c",
                          _NETNS_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["unreachable before: 101", "RELAY"], res.stdout
