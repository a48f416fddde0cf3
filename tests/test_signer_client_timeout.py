"""The signer client's per-call deadline, against real peers on Unix sockets: a signer that accepts
and never answers, one that answers late, one that stops reading, and the CLI/config options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import coincurve
import pytest
from anvil_support import DEV_KEY_0, ROOT
from peer_support import frame_relay
from signer_support import running_signer

from enclave import wire
from enclave.transport import listen, parse_address
from enclave.tx import TX_EIP1559, UnsignedTx
from enclave.wire import Op
from router.errors import ConfigError, MalformedInput, SignerTimeout, TransportError
from router.signer_client import DEFAULT_IO_TIMEOUT, SignerClient

pytestmark = pytest.mark.timeout(60)

#: Scheduling slack on a shared 2-core machine: a timeout must fire, not fire to the millisecond.
SLACK = 2.0


def _signs(digest: bytes, sig: bytes) -> bool:
    """`sig` is the dev key's signature of `digest` (by recovery: with presignatures k is random,
    so signatures are not reproducible; an answer meant for another digest recovers another key)."""
    public = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return public.format() == coincurve.PrivateKey(DEV_KEY_0).public_key.format()


@pytest.mark.parametrize("spin_us", [0, 200], ids=["blocking", "busy-poll"])
def test_stalled_signer_times_out_and_connection_is_dropped(tmp_path: Path, spin_us: int) -> None:
    # A real peer that accepts, reads every request and never answers.
    with frame_relay(tmp_path / "stall.sock", route=lambda op, i: None) as peer:
        client = SignerClient.connect(peer.address, spin_us=spin_us, io_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(SignerTimeout, match=r"did not answer sign-digest within 0\.3 s") as info:
            client.sign_digest(bytes(32))
        elapsed = time.monotonic() - t0
        assert 0.3 <= elapsed < 0.3 + SLACK
        assert isinstance(info.value, TransportError)
        assert (info.value.op, info.value.timeout) == ("sign-digest", 0.3)
        _wait(lambda: 0 in peer.closed, "the stalled connection to be dropped")
        # The next call reconnects (a new connection) and is bounded the same way.
        with pytest.raises(SignerTimeout, match="ping"):
            client.ping()
        assert [(i, op) for i, op, _ in peer.requests] == [(0, Op.SIGN_DIGEST), (1, Op.PING)]
        client.close()


def test_late_answer_is_never_taken_for_a_later_request(tmp_path: Path) -> None:
    """The real signer behind a relay that holds the first connection's answers back 0.6 s."""
    with running_signer(tmp_path) as signer, frame_relay(
        tmp_path / "late.sock", route=lambda op, i: str(signer.address),
        delay=lambda i: 0.6 if i == 0 else 0.0,
    ) as relay:  # fmt: skip
        client = SignerClient.connect(relay.address, spin_us=0, io_timeout=0.2)
        first, second = os.urandom(32), os.urandom(32)
        with pytest.raises(SignerTimeout, match="sign-digest"):
            client.sign_digest(first)
        # Asked at once, while the late answer to `first` is still on its way on the old connection.
        assert _signs(second, client.sign_digest(second))
        # The relay releases the late answer onto the dropped connection: it has nowhere to go.
        _wait(lambda: 0 in relay.closed, "the late answer to meet the dropped connection")
        assert 0 not in relay.late_answers_sent
        assert _signs(second, client.sign_digest(second))
        # Re-sending the timed-out request is safe: the caller gets one (fresh, valid) signature;
        # the lost one never reached it.
        assert _signs(first, client.sign_digest(first))
        ids = [rid for _, _, rid in relay.requests]
        assert len(set(ids)) == len(ids)  # request ids keep counting across connections
        client.close()


def test_stale_frame_on_a_new_connection_is_refused(tmp_path: Path) -> None:
    """Even if a broken relay delivered an old answer on the new connection, its request id gives
    it away: the client refuses it instead of returning it."""
    path = tmp_path / "stale.sock"
    listener = listen(f"unix:{path}")
    seen: list[int] = []

    def peer() -> None:
        first, _ = listener.accept()
        head = first.recv(wire.HEADER_SIZE + 32, socket.MSG_WAITALL)
        stale_id = wire.HEADER.unpack_from(head)[3]
        seen.append(stale_id)
        second, _ = listener.accept()
        head = second.recv(wire.HEADER_SIZE, socket.MSG_WAITALL)
        seen.append(wire.HEADER.unpack_from(head)[3])
        # the answer to the *first* request, 65 bytes like a real signature
        second.sendall(wire.pack_frame(Op.SIGN_DIGEST | wire.RESPONSE_BIT, stale_id, bytes(65)))
        time.sleep(0.5)
        first.close()
        second.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    try:
        client = SignerClient.connect(f"unix:{path}", spin_us=0, io_timeout=0.2)
        with pytest.raises(SignerTimeout):
            client.sign_digest(bytes(32))
        with pytest.raises(TransportError, match="out of protocol.*id") as info:
            client.ping()
        assert not isinstance(info.value, SignerTimeout)
        t.join(5)
        assert seen[0] != seen[1]
        client.close()
    finally:
        listener.close()


def test_signer_that_stops_reading_times_out_on_send(tmp_path: Path) -> None:
    """A large request into a socket nobody reads: the send side is bounded by the same deadline."""
    path = tmp_path / "deaf.sock"
    listener = listen(f"unix:{path}")
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    t.start()
    try:
        client = SignerClient.connect(f"unix:{path}", spin_us=0, io_timeout=0.3)
        client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[union-attr]
        tx = UnsignedTx(TX_EIP1559, 1, 0, 21000, b"\x11" * 20, 0, bytes(120_000), 10, 1)
        t0 = time.monotonic()
        with pytest.raises(SignerTimeout, match="sign-tx within 0.3 s"):
            client.sign_tx(tx)
        assert time.monotonic() - t0 < 0.3 + SLACK
        client.close()
    finally:
        listener.close()
        for c in accepted:
            c.close()


def test_fast_answers_are_unaffected_by_a_short_deadline(tmp_path: Path) -> None:
    with running_signer(tmp_path) as signer:
        with SignerClient.connect(str(signer.address), spin_us=0, io_timeout=0.05) as client:
            for _ in range(200):
                client.ping()
            digest = os.urandom(32)
            assert _signs(digest, client.sign_digest(digest))
            assert client.io_timeout == 0.05


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_bad_timeouts_are_refused(tmp_path: Path, value: float) -> None:
    with pytest.raises(MalformedInput, match="timeout must be a positive number"):
        SignerClient.connect(f"unix:{tmp_path / 'x.sock'}", io_timeout=value)
    with pytest.raises(ValueError, match="io_timeout"):
        SignerClient(parse_address(f"unix:{tmp_path / 'x.sock'}"), io_timeout=value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_cli_timeout_option(tmp_path: Path) -> None:
    with frame_relay(tmp_path / "stall.sock", route=lambda op, i: None) as peer:
        r = _cli("address", "--signer", peer.address, "--timeout", "0.3")
        assert r.returncode == 1, r.stderr
        assert "did not answer get-key within 0.3 s" in r.stderr and "Traceback" not in r.stderr
        tx = tmp_path / "tx.json"
        tx.write_text('{"chainId": 31337, "nonce": 0, "to": "0x' + "11" * 20 + '", "value": 1, '
                      '"gas": 21000, "maxFeePerGas": 10, "maxPriorityFeePerGas": 1}')
        r = _cli("sign-tx", "--signer", peer.address, "--tx", str(tx), "--timeout", "0.3")
        assert r.returncode == 1 and "did not answer sign-tx within 0.3 s" in r.stderr, r.stderr
    r = _cli("address", "--signer", peer.address, "--timeout", "0")
    assert r.returncode == 2 and "timeout must be a positive number" in r.stderr, r.stderr
    assert "--timeout S" in _cli("sign-tx", "--help").stdout


def test_config_signer_timeout(tmp_path: Path) -> None:
    from router.config import load_config

    base = ('chain_id = 1\nsigner = "unix:/s.sock"\nlisten = "unix:/r.sock"\n'
            'rpc = "http://127.0.0.1:1"\nws = "ws://127.0.0.1:1"\n')  # fmt: skip
    cfg = tmp_path / "r.toml"
    cfg.write_text(base)
    assert load_config(cfg).signer_timeout == DEFAULT_IO_TIMEOUT
    cfg.write_text(base + "signer_timeout = 0.25\n")
    assert load_config(cfg).signer_timeout == 0.25
    for bad in ("0", "-1", '"5"', "true", "inf"):
        cfg.write_text(base + f"signer_timeout = {bad}\n")
        with pytest.raises(ConfigError, match="signer_timeout must be a positive number"):
            load_config(cfg)


def _wait(pred: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_router_run_gives_up_on_a_stalled_signer(tmp_path: Path) -> None:
    """`python -m router run` with `signer_timeout`: a signer that never answers stops it with a
    clear error instead of a hang (the RPC endpoints are never reached)."""
    with frame_relay(tmp_path / "stall.sock", route=lambda op, i: None) as peer:
        cfg = tmp_path / "router.toml"
        cfg.write_text(f'chain_id = 1\nsigner = "{peer.address}"\n'
                       f'listen = "unix:{tmp_path / "router.sock"}"\n'
                       'rpc = "http://127.0.0.1:9"\nws = "ws://127.0.0.1:9"\n'
                       'signer_timeout = 0.3\n')  # fmt: skip
        t0 = time.monotonic()
        r = _cli("run", "--config", str(cfg), "--log-format", "text")
        assert r.returncode == 1, r.stderr
        assert "did not answer get-key within 0.3 s" in r.stderr and "Traceback" not in r.stderr
        assert time.monotonic() - t0 < 30
        assert [op for _, op, _ in peer.requests] == [Op.GET_KEY]
