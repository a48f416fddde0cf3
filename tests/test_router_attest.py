"""The router's attestation check binds the key that signs: real signers with the NSM emulator on
Unix sockets, a frame relay that sends ATTEST to one signer and GET_KEY to another, a signer that
does not bind its key, and reconnects that land on another signer."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import DEV_ADDR_0
from peer_support import frame_relay
from signer_support import read_frame, running_signer

from enclave import wire
from enclave.keys import KeyOrigin, SigningKey
from enclave.nsm.emulator import EmulatedNsm
from enclave.transport import listen
from enclave.wire import Op
from router.attest import (
    AttestationPolicy,
    BindsSignerKey,
    SignerCheck,
    SignerNotTrusted,
    _verifier,
    check_signer,
)
from router.errors import SignerError, SignerTimeout
from router.signer_client import SignerClient

pytestmark = pytest.mark.timeout(60)

PCRS = {0: bytes([1]) * 48, 1: bytes([2]) * 48, 2: bytes([3]) * 48}


@pytest.fixture(scope="module")
def nsm() -> EmulatedNsm:
    return EmulatedNsm(pcrs=PCRS)


@pytest.fixture
def policy(nsm: EmulatedNsm) -> AttestationPolicy:
    return AttestationPolicy(dict(PCRS), root_pem=nsm.root_pem)


def _other_key() -> SigningKey:
    return SigningKey(os.urandom(31) + b"\x01", origin=KeyOrigin.DEV)


def _connect(address: str, policy: AttestationPolicy, **kw: object) -> tuple[SignerClient, SignerCheck]:
    check = SignerCheck(policy)
    client = SignerClient.connect(address, spin_us=0, on_connect=check, **kw)  # type: ignore[arg-type]
    return client, check


def test_document_binds_the_key_get_key_reports(tmp_path: Path, nsm, policy) -> None:
    with running_signer(tmp_path, nsm=nsm) as signer:
        client, check = _connect(str(signer.address), policy)
        with client:
            assert check.attested is not None and check.checks == 1
            assert check.attested.address == DEV_ADDR_0
            assert check.attested.public_key == client.address().public_key
            assert {i: check.attested.pcrs[i] for i in PCRS} == PCRS
            again = check_signer(client, policy)  # explicit re-check on a live connection
            assert again == check.attested
    # One verifier per root for the process: its chain cache serves every later check.
    assert _verifier(policy.root_pem) is _verifier(policy.root_pem)
    assert _verifier(None) is _verifier(None)


@pytest.mark.parametrize("attest_to", ["a", "b"], ids=["attest-a-key-b", "attest-b-key-a"])
def test_relay_showing_one_signers_document_for_anothers_key_is_refused(
    tmp_path: Path, nsm, policy, attest_to: str
) -> None:
    other = _other_key()
    with running_signer(tmp_path, nsm=nsm) as a, running_signer(
        tmp_path, nsm=nsm, key=other, listen=f"unix:{tmp_path / 'b.sock'}"
    ) as b:  # fmt: skip
        # Both signers are genuine and attested (same image, same PCRs); only the pairing lies.
        addr = {"a": str(a.address), "b": str(b.address)}
        key_from = "b" if attest_to == "a" else "a"
        route = {Op.ATTEST: addr[attest_to]}

        with frame_relay(tmp_path / "relay.sock",
                         route=lambda op, i: route.get(op, addr[key_from])) as relay:  # fmt: skip
            with pytest.raises(SignerNotTrusted, match="signer-key|public_key") as info:
                _connect(relay.address, policy)
            text = info.value.diagnostics()
            assert "signer attestation refused" in text and "not the one that would sign" in text
            wrong = DEV_ADDR_0 if key_from == "a" else other.address
            assert wrong in text
            assert {op for _, op, _ in relay.requests} == {Op.GET_KEY, Op.ATTEST}
        # The same relay sending everything to one signer passes: the refusal is the pairing's.
        with frame_relay(tmp_path / "honest.sock", route=lambda op, i: addr["b"]) as honest:
            client, check = _connect(honest.address, policy)
            assert check.attested is not None and check.attested.address == other.address
            client.close()


@contextlib.contextmanager
def _unbound_signer(path: Path, nsm: EmulatedNsm, key: SigningKey) -> Iterator[str]:
    """A signer as it was before the key binding: GET_KEY answers its key, ATTEST a genuine
    document (right PCRs, right nonce) with no public_key."""
    listener = listen(f"unix:{path}")

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                while True:
                    try:
                        op, rid, payload = read_frame(conn)
                    except (EOFError, OSError):
                        return
                    if op == Op.GET_KEY:
                        out = key.public_key + key.address_bytes
                    else:
                        nonce, user_data, _ = wire.decode_attest(memoryview(payload))
                        out = nsm.attestation(nonce=nonce, user_data=user_data, public_key=None)
                    conn.sendall(wire.pack_frame(op | wire.RESPONSE_BIT, rid, out))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"unix:{path}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def test_document_without_key_binding_is_refused(tmp_path: Path, nsm, policy) -> None:
    key = SigningKey(bytes(31) + b"\x07", origin=KeyOrigin.DEV)
    with _unbound_signer(tmp_path / "old.sock", nsm, key) as address:
        with pytest.raises(SignerNotTrusted, match="binds no key") as info:
            _connect(address, policy)
        assert key.address in info.value.diagnostics()


def test_check_names_the_keys() -> None:
    from router.signer_client import KeyInfo
    from verify.attestation import PublicKeyMismatch

    key = SigningKey(bytes(31) + b"\x05", origin=KeyOrigin.DEV)
    info = KeyInfo(key.address, key.address_bytes, key.public_key)

    class Doc:
        public_key: bytes | None = b"\x04" + bytes(64)

    with pytest.raises(PublicKeyMismatch, match=f"04{'00' * 64}.*{key.public_key.hex()}"):
        BindsSignerKey(info).verify(Doc())  # type: ignore[arg-type]
    Doc.public_key = key.public_key
    BindsSignerKey(info).verify(Doc())  # type: ignore[arg-type]


def test_every_reconnect_is_attested_and_the_key_is_pinned(tmp_path: Path, nsm, policy) -> None:
    path = tmp_path / "signer.sock"
    with running_signer(tmp_path, nsm=nsm) as a:
        client, check = _connect(str(a.address), policy)
        client.ping()
    # Another signer (genuine, attested) takes the socket: the reconnect must not reach it.
    other = _other_key()
    with running_signer(tmp_path, nsm=nsm, key=other):
        with pytest.raises(SignerNotTrusted, match="after a reconnect") as info:
            client.ping()
        assert other.address in info.value.diagnostics() and DEV_ADDR_0 in str(info.value)
        assert check.checks == 2
    # The original signer back (e.g. restarted with its KMS key): accepted after a fresh check.
    with running_signer(tmp_path, nsm=nsm) as a2:
        client.ping()
        assert check.checks == 3 and a2.stats().attestations == 1
    # A signer with no Secure Module cannot be attested: refused with its typed error.
    with running_signer(tmp_path) as plain:
        with pytest.raises(SignerError, match="UNAVAILABLE"):
            client.ping()
        assert plain.stats().signed_digests == 0
    client.close()
    assert not path.exists()


def test_attestation_at_connect_is_bounded_by_the_deadline(tmp_path: Path, nsm, policy) -> None:
    with running_signer(tmp_path, nsm=nsm) as a, frame_relay(
        tmp_path / "relay.sock",
        route=lambda op, i: None if op == Op.ATTEST else str(a.address),
    ) as relay:  # fmt: skip
        with pytest.raises(SignerTimeout, match="attest within 0.3 s"):
            _connect(relay.address, policy, io_timeout=0.3)
