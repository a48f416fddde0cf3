"""KMS key loading end to end: boto3 -> moto KMS server on 127.0.0.1 (Recipient taught test-side).

The product path (`enclave.kms.load_kms_key`) is the real one: an ephemeral RSA key, an attestation
document from the NSM (emulator here), KMS Decrypt with `Recipient`, CMS opened in memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from eth_account import Account
from kms_support import RecipientKmsServer

from enclave.errors import KeyLoadError
from enclave.keys import KeyOrigin
from enclave.kms import (
    KmsError,
    KmsRefused,
    KmsResponseError,
    KmsTransportError,
    encrypt_secret,
    generate_key_blob,
    load_kms_key,
)
from enclave.nsm.ca import EmulatorCa
from enclave.nsm.emulator import EmulatedNsm

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
PCR0 = bytes.fromhex("ab" * 48)
CONTEXT = {"sentinel": "signer", "release": "0.1.0"}


@pytest.fixture(scope="module")
def ca() -> EmulatorCa:
    return EmulatorCa.generate()


@pytest.fixture(scope="module")
def server(ca: EmulatorCa) -> Iterator[RecipientKmsServer]:
    with RecipientKmsServer(root=ca.root).running() as s:
        yield s


@pytest.fixture
def kms(server: RecipientKmsServer) -> Iterator[RecipientKmsServer]:
    server.required_pcrs = {}
    server.style = "ber"
    yield server
    server.required_pcrs = {}


@pytest.fixture
def nsm(ca: EmulatorCa) -> EmulatedNsm:
    return EmulatedNsm(ca=ca, pcrs={0: PCR0})


def new_key(kms: RecipientKmsServer) -> tuple[object, str]:
    client = kms.client()
    return client, client.create_key(Description="sentinel test")["KeyMetadata"]["KeyId"]


@pytest.mark.parametrize("style", ["ber", "der"])
def test_load_kms_key_end_to_end(kms: RecipientKmsServer, nsm: EmulatedNsm, style: str) -> None:
    kms.style = style
    kms.required_pcrs = {0: PCR0}
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET, encryption_context=CONTEXT)
    assert SECRET not in blob
    before = kms.recipient_decrypts
    key = load_kms_key(blob, nsm=nsm, client=client, key_id=key_id, encryption_context=CONTEXT)
    assert kms.recipient_decrypts == before + 1
    assert key.origin is KeyOrigin.KMS
    # An independent implementation derives the same address from the same secret.
    assert key.address == Account.from_key(SECRET).address
    digest = bytes(range(32))
    signature = key.sign_digest(digest)
    recovered = Account._recover_hash(
        digest, vrs=(signature[64] + 27, signature[:32], signature[32:64])
    )
    assert recovered == key.address


def test_blob_from_a_file(kms: RecipientKmsServer, nsm: EmulatedNsm, tmp_path: Path) -> None:
    client, key_id = new_key(kms)
    path = tmp_path / "signer.key.kms"
    path.write_bytes(encrypt_secret(client, key_id, SECRET))
    assert load_kms_key(path, nsm=nsm, client=client).address == Account.from_key(SECRET).address


def test_generated_blob_loads_to_the_announced_address(
    kms: RecipientKmsServer, nsm: EmulatedNsm
) -> None:
    client, key_id = new_key(kms)
    blob, address = generate_key_blob(client, key_id, encryption_context=CONTEXT)
    key = load_kms_key(blob, nsm=nsm, client=client, key_id=key_id, encryption_context=CONTEXT)
    assert key.address == address


def test_kms_that_ignores_recipient_is_refused(ca: EmulatorCa, nsm: EmulatedNsm) -> None:
    # Plain moto 5.2: Decrypt ignores Recipient and returns Plaintext.
    with RecipientKmsServer(root=ca.root).running(honour_recipient=False) as plain:
        client, key_id = new_key(plain)
        blob = encrypt_secret(client, key_id, SECRET)
        with pytest.raises(KmsResponseError, match="ignored the Recipient") as e:
            load_kms_key(blob, nsm=nsm, client=client)
    assert SECRET.hex() not in "".join(traceback.format_exception(e.value))


def test_pcr_condition_mismatch_is_access_denied(kms: RecipientKmsServer, ca: EmulatorCa) -> None:
    kms.required_pcrs = {0: PCR0}
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET)
    tampered = EmulatedNsm(ca=ca, pcrs={0: b"\xcd" * 48})
    with pytest.raises(KmsRefused, match="AccessDeniedException") as e:
        load_kms_key(blob, nsm=tampered, client=client)
    assert e.value.error_code == "AccessDeniedException"


def test_document_from_another_root_is_refused(kms: RecipientKmsServer) -> None:
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET)
    stranger = EmulatedNsm(ca=EmulatorCa.generate())
    with pytest.raises(KmsRefused, match="ValidationException: invalid attestation document"):
        load_kms_key(blob, nsm=stranger, client=client)


def test_expired_document_is_refused(kms: RecipientKmsServer, ca: EmulatorCa) -> None:
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET)
    # An NSM whose clock is 5 hours behind signs with a leaf that has expired by now.
    old = EmulatedNsm(ca=ca, clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=5))
    with pytest.raises(KmsRefused, match="not valid at"):
        load_kms_key(blob, nsm=old, client=client)


# KMS answers IncorrectKeyException / InvalidCiphertextException; moto's codes vary by case.
REFUSALS = {"IncorrectKeyException", "InvalidCiphertextException", "AccessDeniedException"}


@pytest.mark.parametrize("case", ["wrong_key_id", "wrong_context", "no_context"])
def test_wrong_key_or_context_is_refused(
    kms: RecipientKmsServer, nsm: EmulatedNsm, case: str
) -> None:
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET, encryption_context=CONTEXT)
    kwargs = {
        "wrong_key_id": {"key_id": new_key(kms)[1], "encryption_context": CONTEXT},
        "wrong_context": {"encryption_context": {"x": "y"}},
        "no_context": {},
    }[case]
    with pytest.raises(KmsRefused, match="KMS Decrypt refused") as e:
        load_kms_key(blob, nsm=nsm, client=client, **kwargs)
    assert e.value.error_code in REFUSALS


def test_plaintext_that_is_not_a_secret_is_refused(
    kms: RecipientKmsServer, nsm: EmulatedNsm
) -> None:
    client, key_id = new_key(kms)
    blob = client.encrypt(KeyId=key_id, Plaintext=SECRET[:31])["CiphertextBlob"]
    with pytest.raises(KeyLoadError, match="31 bytes, expected a 32-byte"):
        load_kms_key(blob, nsm=nsm, client=client)


@pytest.mark.parametrize(
    ("blob", "error", "message"),
    [
        (b"", KmsError, "empty"),
        (b"x" * 7000, KmsError, "larger than"),
        (b"garbage" * 10, KmsRefused, "KMS Decrypt refused"),
    ],
    ids=["empty", "huge", "garbage"],
)
def test_bad_blobs(
    kms: RecipientKmsServer, nsm: EmulatedNsm, blob: bytes, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        load_kms_key(blob, nsm=nsm, client=kms.client())


def test_missing_blob_file(kms: RecipientKmsServer, nsm: EmulatedNsm, tmp_path: Path) -> None:
    with pytest.raises(KmsError, match="cannot read"):
        load_kms_key(tmp_path / "absent", nsm=nsm, client=kms.client())


def test_unreachable_kms_is_a_transport_error(nsm: EmulatedNsm) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(KmsTransportError, match="EndpointConnectionError"):
        load_kms_key(b"blob", nsm=nsm, client=dead)


@pytest.mark.parametrize(
    ("secret", "message"),
    [(SECRET[:31], "32 bytes"), (bytes(32), "not a valid secp256k1 scalar")],
    ids=["short", "zero"],
)
def test_encrypt_secret_refuses_non_keys(
    kms: RecipientKmsServer, secret: bytes, message: str
) -> None:
    client, key_id = new_key(kms)
    with pytest.raises(KeyLoadError, match=message):
        encrypt_secret(client, key_id, secret)


# --- secret scanning ---------------------------------------------------------------------------


def secret_forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        "0x" + secret.hex(),
        base64.b64encode(secret).decode(),
        repr(secret)[2:-1],
        str(list(secret))[1:-1],
        str(int.from_bytes(secret, "big")),
    ]


def test_secret_never_appears_in_logs_errors_or_reprs(
    kms: RecipientKmsServer,
    ca: EmulatorCa,
    nsm: EmulatedNsm,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, boto3/botocore/urllib3 included
    texts: list[str] = []
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET, encryption_context=CONTEXT)
    key = load_kms_key(blob, nsm=nsm, client=client, key_id=key_id, encryption_context=CONTEXT)
    texts += [repr(key), str(key), format(key), repr(nsm), repr(ca), repr(nsm.device.chain)]
    # Failure paths that handle the real secret: a plaintext answer (the secret arrives in clear),
    # a refused document, a wrong context.
    failures = []
    with RecipientKmsServer(root=ca.root).running(honour_recipient=False) as plain:
        plain_client = plain.client()
        plain_key = plain_client.create_key()["KeyMetadata"]["KeyId"]
        plain_blob = encrypt_secret(plain_client, plain_key, SECRET)
        with pytest.raises(KmsResponseError) as e1:
            load_kms_key(plain_blob, nsm=nsm, client=plain_client)
        failures.append(e1.value)
    kms.required_pcrs = {0: b"\x00" * 48}
    with pytest.raises(KmsRefused) as e2:
        load_kms_key(blob, nsm=nsm, client=client, encryption_context=CONTEXT)
    failures.append(e2.value)
    kms.required_pcrs = {}
    with pytest.raises(KmsRefused) as e3:
        load_kms_key(blob, nsm=nsm, client=client)
    failures.append(e3.value)
    with pytest.raises(KeyLoadError) as e4:
        encrypt_secret(client, key_id, SECRET + b"\x00")
    failures.append(e4.value)
    for error in failures:
        texts += [
            str(error),
            repr(error),
            error.diagnostics(),
            "".join(traceback.format_exception(error)),
        ]
    out, err = capfd.readouterr()
    texts += [caplog.text, out, err]
    assert "loaded the signing key" in caplog.text  # the logs were captured
    haystack = "\n".join(texts)
    for form in secret_forms(SECRET):
        assert form not in haystack, f"secret leaked as {form[:6]}..."


def test_sdk_log_levels_are_restored(kms: RecipientKmsServer, nsm: EmulatedNsm) -> None:
    endpoint_logger = logging.getLogger("botocore.endpoint")
    endpoint_logger.setLevel(logging.DEBUG)  # someone turned on wire logging explicitly
    try:
        client, key_id = new_key(kms)
        encrypt_secret(client, key_id, SECRET)
        assert endpoint_logger.level == logging.DEBUG
        assert logging.getLogger("botocore").level == logging.NOTSET
    finally:
        endpoint_logger.setLevel(logging.NOTSET)


def test_explicit_wire_logging_still_does_not_leak(
    kms: RecipientKmsServer, nsm: EmulatedNsm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("botocore.endpoint", "botocore.parsers", "urllib3.connectionpool"):
        caplog.set_level(logging.DEBUG, logger=name)
    client, key_id = new_key(kms)
    blob = encrypt_secret(client, key_id, SECRET)
    load_kms_key(blob, nsm=nsm, client=client)
    assert "CreateKey" in caplog.text or "create_key" in caplog.text.lower()  # wire logs were on
    for form in secret_forms(SECRET):
        assert form not in caplog.text


# --- python -m enclave kms-blob ------------------------------------------------------------------


def run_kms_blob(kms: RecipientKmsServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env.pop("AWS_PROFILE", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave",
            "kms-blob",
            "--region",
            "us-east-1",
            "--endpoint-url",
            kms.endpoint,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_kms_blob_cli_creates_a_loadable_key(
    kms: RecipientKmsServer, nsm: EmulatedNsm, tmp_path: Path
) -> None:
    client, key_id = new_key(kms)
    out = tmp_path / "signer.kms"
    r = run_kms_blob(
        kms, "--key-id", key_id, "--out", str(out), "--context", "sentinel=signer", "--json"
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    key = load_kms_key(
        out, nsm=nsm, client=client, key_id=key_id, encryption_context={"sentinel": "signer"}
    )
    assert key.address == info["address"] and info["key_id"] == key_id
    assert info["address"] in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--context", "novalue"], "expected KEY=VALUE"),
        (["--exists"], "exists; pass --force"),
        (["--key-id-unknown"], "KMS"),
    ],
    ids=["bad_context", "exists", "unknown_key"],
)
def test_kms_blob_cli_errors(
    kms: RecipientKmsServer, tmp_path: Path, args: list[str], message: str
) -> None:
    client, key_id = new_key(kms)
    out = tmp_path / "signer.kms"
    if args == ["--exists"]:
        out.write_bytes(b"old")
        args = []
    if args == ["--key-id-unknown"]:
        key_id, args = "alias/does-not-exist", []
    r = run_kms_blob(kms, "--key-id", key_id, "--out", str(out), *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
