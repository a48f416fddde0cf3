"""Issue 14, the enclave's findings: each test names its finding and failed on the code before the fix.

Real sockets, a real signer in this process, real policy files and the real KMS path (moto with
Recipient, the NSM emulator); the only go-between is a KMS client that flips a bit of the envelope,
standing in for whoever relays KMS's answer (the parent instance).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
from asn1crypto import cms
from kms_support import RecipientKmsServer
from signer_support import (
    DEV_POLICY,
    dev_key,
    header,
    raw_connect,
    read_frame,
    running_signer,
)
from test_enclave_policy import BASE
from test_kms import SECRET, ca, kms, new_key, nsm, server  # noqa: F401 (fixtures)

from enclave.errors import PolicyDenied, PolicyFileError, TransportError
from enclave.keys import KeyOrigin, SigningKey
from enclave.kms import load_kms_key
from enclave.nsm.emulator import EmulatedNsm
from enclave.policy import Policy, load_policy
from enclave.provision import Provision, receive_key, send_provision
from enclave.server import SignerServer
from enclave.wire import Op

# --- #1 signer denial of service -------------------------------------------------------------------


def _wait_open(srv: SignerServer, n: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while srv.stats().connections_open < n:
        assert time.monotonic() < end, f"{srv.stats().connections_open} of {n} connections open"
        time.sleep(0.01)


def _ping(sock: socket.socket, rid: int) -> None:
    sock.sendall(header(Op.PING, rid, 0))
    assert read_frame(sock)[:2] == (Op.PING | 0x80, rid)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextmanager
def _signer(tmp_path: Path, **deadlines: Any) -> Iterator[SignerServer]:
    srv = SignerServer(dev_key(), load_policy(DEV_POLICY), spin_us=0, **deadlines)
    srv.bind(f"unix:{tmp_path / 'signer.sock'}")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def test_issue14_1_idle_and_partial_connections_cannot_lock_clients_out(tmp_path: Path) -> None:
    """64 connections, half silent and half holding 3 bytes of a header, must not keep a new
    well-behaved client from being served, neither right away nor once the deadlines pass."""
    with _signer(tmp_path, frame_timeout=60.0, idle_timeout=600.0) as srv:
        hogs = []
        for i in range(64):
            s = raw_connect(srv)
            if i % 2:
                s.sendall(header(Op.PING, 1, 0)[:3])
            hogs.append(s)
            _wait_open(srv, i + 1)  # the listen backlog is short: one at a time
        for rid in range(1, 4):  # each new client is served (an idle hog makes room for it)
            with raw_connect(srv) as client:
                _ping(client, rid)
        assert srv.stats().connections_open <= 64
        # the hogs with a partial frame go first: every one of them is gone before a silent one
        partial_closed = sum(_closed_within(s, 0.05) for s in hogs[1::2])
        silent_closed = sum(_closed_within(s, 0.05) for s in hogs[0::2])
        assert 1 <= partial_closed <= 3 and silent_closed == 0
        for s in hogs:
            s.close()


def test_issue14_1_partial_frame_has_one_deadline(tmp_path: Path) -> None:
    """A frame must be complete within `frame_timeout` of its first blocked read, however slowly
    its bytes trickle in (one byte every 0.1 s does not extend it)."""
    with _signer(tmp_path, frame_timeout=0.5, idle_timeout=600.0) as srv:
        with raw_connect(srv) as slow:
            frame = header(Op.SIGN_DIGEST, 7, 32) + bytes(32)
            started = time.monotonic()
            with pytest.raises(OSError):  # EPIPE / reset once the server has closed it
                for b in frame:
                    slow.send(bytes([b]))
                    time.sleep(0.1)
                    assert time.monotonic() - started < 4.4, "a trickled frame was never cut"
            assert time.monotonic() - started < 3.0
        with raw_connect(srv) as fine:  # a whole frame in one go is unaffected
            _ping(fine, 8)


def test_issue14_1_idle_connection_is_closed(tmp_path: Path) -> None:
    with _signer(tmp_path, frame_timeout=1.0, idle_timeout=0.5) as srv:
        with raw_connect(srv) as idle, raw_connect(srv) as busy:
            _ping(idle, 1)
            for rid in range(2, 12):  # activity keeps a connection open past the idle deadline
                _ping(busy, rid)
                time.sleep(0.1)
            assert _closed_within(idle, 5.0)
            _ping(busy, 12)


def test_issue14_1_a_client_that_never_reads_is_cut(tmp_path: Path) -> None:
    """Pipelined requests whose answers are never read fill the socket buffers; the server's send
    has the frame deadline too, so the connection is cut instead of holding its thread forever."""
    with _signer(tmp_path, frame_timeout=0.5, idle_timeout=600.0) as srv:
        with raw_connect(srv) as greedy:
            greedy.settimeout(0.05)
            ping = header(Op.PING, 1, 0) * 4096
            cut = False
            end = time.monotonic() + 20
            while time.monotonic() < end and not cut:
                try:
                    greedy.send(ping)
                except TimeoutError:
                    continue
                except OSError:
                    cut = True
            assert cut, "the server kept a connection that never reads its answers"
        with raw_connect(srv) as fine:
            _ping(fine, 2)


def test_issue14_1_deadlines_must_be_positive() -> None:
    for bad in ({"frame_timeout": 0.0}, {"idle_timeout": -1.0}, {"frame_timeout": float("nan")}):
        with pytest.raises(ValueError, match="timeout"):
            SignerServer(dev_key(), load_policy(DEV_POLICY), **bad)


# --- #3 / #4 / #5 policy files --------------------------------------------------------------------


def _policy(extra: str = "", replace: tuple[str, str] = ("", "")) -> str:
    text = BASE.replace(*replace) if replace[0] else BASE
    return text.replace("max_gas = 500000", "max_gas = 500000\n" + extra)


def test_issue14_3_production_policy_refuses_sign_digest() -> None:
    with pytest.raises(PolicyFileError, match="sign_digest is for development policies only"):
        Policy.from_toml(_policy("sign_digest = true"))
    dev = _policy("sign_digest = true", ('mode = "production"', 'mode = "development"'))
    assert Policy.from_toml(dev).sign_digest


@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-nan", "1e400"])
def test_issue14_4_rate_must_be_finite(value: str) -> None:
    with pytest.raises(PolicyFileError, match="rate_limit.per_second must be a finite positive"):
        Policy.from_toml(BASE.replace("per_second = 10", f"per_second = {value}"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"0xa9059cbb", "0x095ea7b3"', '"0x        "'),
        ('"0xa9059cbb", "0x095ea7b3"', '"0xa9059cb "'),
        ('"0xa9059cbb", "0x095ea7b3"', '"0x a9059cb"'),
        ('"0xa9059cbb", "0x095ea7b3"', '"0xa905 9cb"'),
        ('"0xa9059cbb", "0x095ea7b3"', '"0x+9059cbb"'),
        ('address = "0x' + "a0" * 20 + '"', 'address = "0x' + "a0" * 19 + '  "'),
        ('address = "0x' + "a0" * 20 + '"', 'address = "0x' + "a0" * 19 + '\\t\\n"'),
        ('address = "0x' + "a0" * 20 + '"', 'address = "0x' + "a0" * 20 + ' "'),
        ('address = "0x' + "a0" * 20 + '"', 'address = "0x' + "a0" * 19 + '٠١"'),
    ],
    ids=["blank-selector", "trailing-space", "leading-space", "inner-space", "sign",
         "address-spaces", "address-tab-newline", "address-long", "arabic-digits"],
)  # fmt: skip
def test_issue14_5_policy_hex_is_strict(old: str, new: str) -> None:
    assert old in BASE
    with pytest.raises(PolicyFileError, match="must be 0x followed by"):
        Policy.from_toml(BASE.replace(old, new))


# --- #6 a second serve on a live Unix socket ------------------------------------------------------


def test_issue14_6_second_server_refuses_a_live_socket(tmp_path: Path) -> None:
    with running_signer(tmp_path) as first:
        second = SignerServer(dev_key(), load_policy(DEV_POLICY), spin_us=0)
        with pytest.raises(TransportError, match="another server is listening"):
            second.bind(str(first.address))
        second.close()
        with raw_connect(first) as client:  # the first is still reachable at its path
            _ping(client, 1)


def test_issue14_6_close_unlinks_only_its_own_socket(tmp_path: Path) -> None:
    path = tmp_path / "signer.sock"
    with running_signer(tmp_path) as first:
        path.unlink()  # an operator removed it; a new signer now owns the path
        with running_signer(tmp_path) as second:
            first.close()
            assert path.exists(), "closing the first signer removed the second's socket"
            with raw_connect(second) as client:
                _ping(client, 1)
    assert not path.exists()  # the owner removes its own


def test_issue14_6_stale_socket_is_still_replaced(tmp_path: Path) -> None:
    path = tmp_path / "signer.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a crashed signer's file: nobody listens
    with running_signer(tmp_path) as srv, raw_connect(srv) as client:
        _ping(client, 1)


# --- #7 provisioning: one deadline per message ----------------------------------------------------


def test_issue14_7_provisioning_deadline_is_per_message(tmp_path: Path) -> None:
    addr = f"unix:{tmp_path / 'p.sock'}"
    ready = threading.Event()
    result: dict[str, object] = {}
    t = threading.Thread(target=lambda: result.update(key=receive_key(
        addr, lambda p: dev_key(), read_timeout=0.6, on_listening=lambda a: ready.set())))  # fmt: skip
    t.start()
    assert ready.wait(30)
    body = cbor2.dumps({"v": 1, "blob": b"x" * 40})
    message = len(body).to_bytes(4, "big") + body
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "p.sock"))
        s.settimeout(0.01)
        started = time.monotonic()
        answer = b""
        for b in message:  # one byte every 0.15 s: each read is quick, the message is not
            try:
                s.send(bytes([b]))
                answer = s.recv(4096)
                break
            except TimeoutError:
                time.sleep(0.15)
            except OSError:
                break
        assert time.monotonic() - started < 3.0, "a trickling sender held the listener"
        assert answer == b"" or cbor2.loads(answer[4:])["ok"] is False
    assert send_provision(addr, Provision(b"good"), timeout=10) == dev_key().address
    t.join(10)
    assert result["key"].address == dev_key().address  # type: ignore[attr-defined]


# --- #12 the KMS envelope has no integrity: pin the signer's address -------------------------------


class _FlippingKms:
    """Relays Decrypt to KMS and flips one bit of the AES-CBC IV in the envelope it returns."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def decrypt(self, **request: Any) -> dict[str, Any]:
        response = dict(self._client.decrypt(**request))
        envelope = bytes(response["CiphertextForRecipient"])
        info = cms.ContentInfo.load(envelope)
        alg = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]
        iv = alg["parameters"].native
        assert envelope.count(iv) == 1
        response["CiphertextForRecipient"] = envelope.replace(iv, bytes([iv[0] ^ 1]) + iv[1:])
        return response


def test_issue14_12_pinned_address_refuses_a_tampered_envelope(
    kms: RecipientKmsServer,  # noqa: F811
    nsm: EmulatedNsm,  # noqa: F811
) -> None:
    from enclave.kms import KmsKeyMismatch  # new with the fix: the other tests run without it

    kms.style = "der"
    client, key_id = new_key(kms)
    blob = client.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    right = SigningKey(SECRET, origin=KeyOrigin.KMS)
    loaded = load_kms_key(blob, nsm=nsm, client=client, expected_address=right.address_bytes)
    assert loaded.address == right.address
    # unpinned, one flipped IV bit loads another key without a word: the finding
    other = load_kms_key(blob, nsm=nsm, client=_FlippingKms(client))
    assert other.address != right.address
    with pytest.raises(KmsKeyMismatch, match=f"not the policy's signer_address {right.address}"):
        load_kms_key(
            blob, nsm=nsm, client=_FlippingKms(client), expected_address=right.address_bytes
        )


def test_issue14_12_policy_pins_the_signer_address() -> None:
    right = SigningKey(SECRET, origin=KeyOrigin.KMS)
    policy = Policy.from_toml(_policy(f'signer_address = "{right.address}"'))
    assert policy.signer_address == right.address_bytes
    policy.check_key(right)
    with pytest.raises(PolicyDenied, match="signer_address"):
        policy.check_key(SigningKey(b"\x01" * 32, origin=KeyOrigin.KMS))
    with pytest.raises(PolicyFileError, match="signer_address must be 0x followed by 40"):
        Policy.from_toml(_policy('signer_address = "0x1234"'))
    assert Policy.from_toml(BASE).signer_address is None
