"""Secret scanning: the private key never appears in logs, exceptions, reprs or responses."""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from signer_support import DEV_POLICY, ROOT, header, raw_connect, read_frame, running_signer

from enclave.errors import KeyLoadError
from enclave.keys import KeyOrigin, SigningKey, load_dev_key
from enclave.tx import TX_EIP1559, UnsignedTx
from enclave.wire import Op
from router.errors import RouterError
from router.signer_client import SignerClient

# A fresh key per run: a leak cannot hide behind a fixed value someone whitelisted.
SECRET = os.urandom(32)


def _forms(secret: bytes) -> list[bytes]:
    h = secret.hex()
    return [
        secret,
        h.encode(),
        h.upper().encode(),
        str(int.from_bytes(secret, "big")).encode(),
        base64.b64encode(secret),
        h[8:40].encode(),  # any long fragment of the hex
    ]


def assert_clean(blob: bytes | str, what: str) -> None:
    data = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else blob
    for form in _forms(SECRET):
        assert form not in data and form.lower() not in data.lower(), f"secret leaked in {what}"


def test_no_secret_in_logs_errors_reprs_or_responses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = SigningKey(SECRET, origin=KeyOrigin.DEV)
    assert_clean(repr(key) + str(key), "SigningKey repr")

    class LeakyNsm:
        """An NSM whose failure message quotes the secret: the server must not relay it."""

        def attestation(self, **kw: object) -> bytes:
            raise RuntimeError(f"device error near {SECRET.hex()}")

    responses = bytearray()
    errors: list[BaseException] = []
    with running_signer(tmp_path, key=key, nsm=LeakyNsm()) as server:
        assert_clean(repr(server), "server repr")
        with raw_connect(server) as sock:
            requests = [
                header(Op.PING, 1, 0),
                header(Op.GET_KEY, 2, 0),
                header(Op.SIGN_DIGEST, 3, 32) + bytes(range(32)),
                header(Op.SIGN_DIGEST, 4, 32) + SECRET,  # signing the secret as a digest
                header(Op.SIGN_TX, 5, 148) + bytes(148),
                header(Op.ATTEST, 6, 8) + bytes(8),
                header(Op.STATS, 7, 0),
                header(0x99, 8, 0),
                header(Op.PING, 9, 3, magic=b"??") + b"abc",
            ]
            for r in requests:
                sock.sendall(r)
                op, rid, payload = read_frame(sock)
                responses += payload
        with SignerClient.connect(str(server.address), spin_us=0) as client:
            assert_clean(repr(client), "client repr")
            for call in (
                lambda: client.attest(nonce=b"x"),
                lambda: client.sign_tx(UnsignedTx(TX_EIP1559, 5, 0, 1, b"\1" * 20, 0, b"", 1, 1)),
                # calldata carrying the secret, denied: denials name rules, never echo request bytes
                lambda: client.sign_tx(
                    UnsignedTx(TX_EIP1559, 5, 0, 1, SECRET[:20], 0, SECRET, 1, 1)
                ),
            ):
                try:
                    call()
                except RouterError as e:
                    errors.append(e)
            signed = client.sign_tx(
                UnsignedTx(TX_EIP1559, 31337, 0, 21000, b"\1" * 20, 0, b"", 1, 1)
            )
            responses += signed.raw + signed.hash
    assert len(errors) == 3
    for e in errors:
        assert_clean("".join(traceback.format_exception(e)) + repr(e), f"client exception {e!r}")
    assert_clean(bytes(responses), "responses")
    assert_clean("\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records), "logs")
    assert_clean(caplog.text, "log text")


@pytest.mark.parametrize(
    "content",
    [SECRET.hex()[:-1], SECRET.hex() + "0", SECRET.hex()[:-2] + "zz", SECRET.hex() * 2],
    ids=["short", "long", "not-hex", "doubled"],
)
def test_key_file_errors_do_not_echo_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(KeyLoadError) as info:
        load_dev_key(path)
    assert_clean("".join(traceback.format_exception(info.value)), "key load error")


def test_serve_process_output_is_clean(tmp_path: Path) -> None:
    """The real process at debug verbosity: start, serve requests (good and bad), stop."""
    key_file = tmp_path / "key"
    key_file.write_text(SECRET.hex())
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave", "-v", "serve", "--listen", f"unix:{sock}",
         "--dev-key-file", str(key_file), "--policy", str(DEV_POLICY)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with SignerClient.connect(f"unix:{sock}", spin_us=0, connect_timeout=20) as client:
            client.sign_digest(SECRET)
            try:
                client.attest(nonce=SECRET)
            except RouterError as e:
                assert_clean(str(e), "attest error")
            client.stats()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"listening on" in err
    assert_clean(out + err, "serve output")
    # refused at start: the production policy and a dev key
    refused = subprocess.run(
        [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}", "--dev-key-file",
         str(key_file)],
        cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert_clean(refused.stdout + refused.stderr, "refused serve output")
    time.sleep(0)
