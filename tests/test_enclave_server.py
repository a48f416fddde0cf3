"""The signer server over real sockets: operations, typed error frames, connection survival."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import coincurve
import pytest
from anvil_support import DEV_ADDR_0, DEV_KEY_0
from eth_account import Account
from signer_support import (
    DEV_POLICY,
    dev_key,
    error_of,
    header,
    raw_connect,
    read_frame,
    running_signer,
)

from enclave import wire
from enclave.errors import ErrorCode, PolicyDenied, TransportError
from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import Policy, load_policy
from enclave.server import SignerServer
from enclave.transport import listen, parse_address
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx
from enclave.wire import Op
from router.errors import SignerError
from router.signer_client import SignerClient

TX = UnsignedTx(TX_EIP1559, 31337, 0, 21000, b"\x11" * 20, 1, b"", 10**10, 10**9)


def _client(server: SignerServer, **kw: object) -> SignerClient:
    return SignerClient.connect(str(server.address), spin_us=0, **kw)  # type: ignore[arg-type]


def test_operations_over_unix_socket(tmp_path: Path) -> None:
    with running_signer(tmp_path) as server, _client(server) as client:
        client.ping()
        info = client.address()
        assert info.address == DEV_ADDR_0
        assert info.public_key == coincurve.PrivateKey(DEV_KEY_0).public_key.format(
            compressed=False
        )
        digest = os.urandom(32)
        sig = client.sign_digest(digest)
        assert (
            coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None).format(
                compressed=False
            )
            == info.public_key
        )
        for tx in (
            TX,
            TX._replace(tx_type=TX_LEGACY, max_priority_fee_per_gas=0),
            TX._replace(to=None),
        ):
            signed = client.sign_tx(tx)
            assert Account.recover_transaction(signed.raw) == DEV_ADDR_0
        stats = client.stats()
        assert (stats.signed_digests, stats.signed_txs, stats.errors) == (1, 3, 0)
        assert stats.connections_open == 1 and stats.requests == 7


def test_tcp_loopback_and_json_tx(tmp_path: Path) -> None:
    with running_signer(tmp_path, listen="tcp:127.0.0.1:0") as server, _client(server) as client:
        assert server.address is not None and server.address.port > 0
        signed = client.sign_tx(
            {"chainId": "0x7a69", "nonce": 0, "to": "0x" + "11" * 20, "gas": 21000,
             "gasPrice": "1000000000", "from": DEV_ADDR_0}
        )  # fmt: skip
        assert Account.recover_transaction(signed.raw) == DEV_ADDR_0


def test_tcp_must_be_loopback() -> None:
    with pytest.raises(TransportError, match="loopback only"):
        parse_address("tcp:10.0.0.1:5000")


def test_vsock_real_code_path() -> None:
    """The host cannot loop VSOCK back (see ../shared/FACTS.md); the listen path still runs for
    real: it either binds VMADDR_CID_ANY or fails with a TransportError naming the address."""
    addr = parse_address("vsock:any:5005")
    assert addr.cid == 0xFFFFFFFF and str(addr) == "vsock:any:5005"
    try:
        sock = listen(addr)
    except TransportError as e:
        assert "vsock:any:5005" in str(e)
        return
    assert sock.family == socket.AF_VSOCK
    sock.close()
    # A server on VSOCK stops promptly: shutdown() does not wake accept() on AF_VSOCK listeners,
    # so the accept loop also polls a wake-up pipe.
    for port in (40011, 40123, 41234, 45678):
        server = SignerServer(dev_key(), load_policy(DEV_POLICY))
        try:
            server.bind(f"vsock:any:{port}")
        except TransportError:
            continue
        thread = server.start()
        t0 = time.monotonic()
        server.close()
        assert not thread.is_alive() and time.monotonic() - t0 < 2
        return
    pytest.skip("no free VSOCK port to bind")


@pytest.mark.parametrize(
    "text,match",
    [("udp:1", "unknown scheme"), ("tcp:127.0.0.1", "HOST:PORT"), ("tcp:localhost:1", "IP literal"),
     ("tcp:127.0.0.1:x", "not a decimal"), ("tcp:127.0.0.1:70000", "out of range"),
     ("vsock:3", "vsock:CID:PORT"), ("unix:", "expected unix:PATH")],
    ids=["scheme", "no-port", "hostname", "port-text", "port-range", "vsock-port", "unix-empty"],
)  # fmt: skip
def test_address_errors(text: str, match: str) -> None:
    with pytest.raises(TransportError, match=match):
        parse_address(text)


def test_unix_listen_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    victim = tmp_path / "file"
    victim.write_text("keep me")
    with pytest.raises(TransportError, match="not a socket"):
        listen(f"unix:{victim}")
    assert victim.read_text() == "keep me"


def _roundtrip(sock: socket.socket, frame: bytes) -> tuple[int, int, bytes]:
    sock.sendall(frame)
    return read_frame(sock)


BAD_FRAMES = [
    (header(0x42, 1, 0), ErrorCode.UNKNOWN_OPCODE),
    (header(Op.PING, 1, 0, magic=b"XX"), ErrorCode.BAD_MAGIC),
    (header(Op.PING, 1, 3, version=9) + b"abc", ErrorCode.BAD_VERSION),
    (header(Op.PING, 1, 1) + b"x", ErrorCode.BAD_LENGTH),
    (header(Op.GET_KEY, 1, 2) + b"xx", ErrorCode.BAD_LENGTH),
    (header(Op.SIGN_DIGEST, 1, 31) + bytes(31), ErrorCode.BAD_LENGTH),
    (header(Op.SIGN_TX, 1, 4) + bytes(4), ErrorCode.BAD_LENGTH),
    (header(Op.SIGN_TX, 1, 148) + bytes(148), ErrorCode.MALFORMED),
    (header(Op.ATTEST, 1, 8) + struct.pack("<HHHH", 0, 0, 0, 7), ErrorCode.MALFORMED),
    (header(Op.STATS, 1, 1) + b"\0", ErrorCode.BAD_LENGTH),
    (header(Op.ATTEST, 1, 8) + bytes(8), ErrorCode.UNAVAILABLE),
]


@pytest.mark.parametrize(
    "frame,code", BAD_FRAMES,
    ids=["opcode", "magic", "version", "ping-len", "key-len", "digest-len", "tx-short", "tx-malformed",
         "attest-reserved", "stats-len", "attest-no-nsm"],
)  # fmt: skip
def test_every_bad_frame_gets_a_typed_error_and_the_connection_survives(
    tmp_path: Path, frame: bytes, code: ErrorCode
) -> None:
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        op, rid, payload = _roundtrip(sock, frame)
        assert (op, rid) == (wire.OP_ERROR, 1)
        got, message = error_of(payload)
        assert got == code, message
        assert message and message.isascii()
        op, rid, payload = _roundtrip(sock, header(Op.PING, 77, 0))
        assert (op, rid, payload) == (Op.PING | 0x80, 77, b"")


def test_oversized_payload_is_drained_not_stored(tmp_path: Path) -> None:
    n = wire.MAX_PAYLOAD * 3 + 5
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        sock.sendall(header(Op.SIGN_TX, 5, n) + b"\xee" * n + header(Op.PING, 6, 0))
        op, rid, payload = read_frame(sock)
        assert (op, rid, error_of(payload)[0]) == (wire.OP_ERROR, 5, ErrorCode.PAYLOAD_TOO_LARGE)
        assert read_frame(sock)[:2] == (Op.PING | 0x80, 6)


def test_pipelined_and_byte_by_byte_frames(tmp_path: Path) -> None:
    frames = (
        b"".join(header(Op.PING, i, 0) for i in range(1, 50))
        + header(Op.SIGN_DIGEST, 50, 32)
        + bytes(range(32))
    )
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        sock.sendall(frames)
        assert [read_frame(sock)[1] for _ in range(50)] == list(range(1, 51))
        frame = header(Op.SIGN_DIGEST, 51, 32) + bytes(range(32))
        for i in range(len(frame)):
            sock.send(frame[i : i + 1])
        op, rid, sig = read_frame(sock)
        assert (op, rid, len(sig)) == (Op.SIGN_DIGEST | 0x80, 51, 65)


def test_policy_denial_is_typed_and_never_signed(tmp_path: Path) -> None:
    policy = Policy.from_toml(
        DEV_POLICY.read_text().replace("any_destination = true", "any_destination = false")
        .replace("sign_digest = true", "sign_digest = false")
    )  # fmt: skip
    with running_signer(tmp_path, policy=policy) as server, _client(server) as client:
        with pytest.raises(SignerError, match="policy destinations") as info:
            client.sign_tx(TX)
        assert info.value.code == ErrorCode.POLICY_DENIED and info.value.name == "POLICY_DENIED"
        with pytest.raises(SignerError, match="policy sign_digest"):
            client.sign_digest(bytes(32))
        stats = client.stats()
        assert (stats.signed_txs, stats.signed_digests, stats.denials) == (0, 0, 2)


def test_rate_limit_answers_rate_limited(tmp_path: Path) -> None:
    policy = Policy.from_toml(
        DEV_POLICY.read_text().replace("per_second = 1000000", "per_second = 0.001")
        .replace("burst = 1000000", "burst = 2")
    )  # fmt: skip
    with running_signer(tmp_path, policy=policy) as server, _client(server) as client:
        client.sign_digest(bytes(32))
        client.sign_tx(TX)
        with pytest.raises(SignerError) as info:
            client.sign_digest(bytes(32))
        assert info.value.code == ErrorCode.RATE_LIMITED


def test_production_policy_refuses_dev_key_at_start() -> None:
    with pytest.raises(PolicyDenied, match="key_origin"):
        SignerServer(dev_key(), load_policy())


def test_internal_error_costs_one_request(tmp_path: Path) -> None:
    class BrokenNsm:
        def attestation(self, **kw: object) -> bytes:
            raise RuntimeError("boom")

    with running_signer(tmp_path, nsm=BrokenNsm()) as server, _client(server) as client:
        with pytest.raises(SignerError, match="internal error") as info:
            client.attest(nonce=b"n")
        assert info.value.code == ErrorCode.INTERNAL
        client.ping()


def test_attest_with_emulated_nsm(tmp_path: Path) -> None:
    from enclave.nsm.emulator import EmulatedNsm
    from verify.attestation.document import parse_document

    nsm = EmulatedNsm()
    with running_signer(tmp_path, nsm=nsm) as server, _client(server) as client:
        doc = client.attest(nonce=b"n" * 32, user_data=b"hello")
        parsed = parse_document(doc).document
        signer_key = coincurve.PrivateKey(DEV_KEY_0).public_key.format(compressed=False)
        # The document binds the signer's own key, the one GET_KEY reports (PROTOCOL.md).
        assert (parsed.nonce, parsed.user_data, parsed.public_key) == (
            b"n" * 32,
            b"hello",
            signer_key,
        )
        assert client.address().public_key == signer_key and len(signer_key) == 65
        bare = parse_document(client.attest()).document
        assert (bare.nonce, bare.user_data, bare.public_key) == (None, None, signer_key)
        assert client.stats().attestations == 2


def test_guest_self_check_requires_the_key_binding(tmp_path: Path) -> None:
    """enclave/devboot.py's self-check (what the QEMU boot check reads) sees the binding."""
    from enclave.devboot import self_check
    from enclave.nsm.emulator import EmulatedNsm

    with running_signer(tmp_path, nsm=EmulatedNsm()) as server:
        result = self_check(str(server.address), 5)
    assert result["ok"] and result["attestation_binds_key"] and result["attestation_has_nonce"]


def test_attest_refuses_a_callers_public_key(tmp_path: Path) -> None:
    """A caller's key in a document would receive KMS Recipient ciphertexts meant for the enclave:
    refused, nothing attested, the connection kept."""
    from enclave.nsm.emulator import EmulatedNsm

    rsa_like = bytes(range(256)) + bytes(38)  # any caller-chosen bytes, e.g. an RSA SPKI
    with running_signer(tmp_path, nsm=EmulatedNsm()) as server:
        with raw_connect(server) as sock:
            sock.sendall(wire.pack_frame(Op.ATTEST, 41, wire.encode_attest(b"n", None, rsa_like)))
            op, rid, payload = read_frame(sock)
            code, message = error_of(payload)
            assert (op, rid, code) == (wire.OP_ERROR, 41, ErrorCode.MALFORMED)
            assert "public_key must be empty" in message and "signer's own key" in message
            sock.sendall(wire.pack_frame(Op.ATTEST, 42, wire.encode_attest(b"n", b"u", None)))
            op, rid, _ = read_frame(sock)
            assert (op, rid) == (Op.ATTEST | wire.RESPONSE_BIT, 42)
        assert server.stats().attestations == 1


def test_many_clients_and_disconnects_mid_frame(tmp_path: Path) -> None:
    with running_signer(tmp_path) as server:
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                with _client(server) as c:
                    for _ in range(30):
                        d = os.urandom(32)
                        assert len(c.sign_digest(d)) == 65
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        for _ in range(3):
            s = raw_connect(server)
            s.sendall(header(Op.SIGN_TX, 1, 500) + bytes(10))  # then vanish mid-frame
            s.close()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        with _client(server) as c:
            stats = c.stats()
            assert stats.signed_digests == 180 and stats.connections_total >= 10


def test_client_reconnects_after_signer_restart(tmp_path: Path) -> None:
    with running_signer(tmp_path) as server:
        client = _client(server)
        client.ping()
    with running_signer(tmp_path):
        client.ping()  # the old connection is dead; the client reconnects and retries once
        assert client.address().address == DEV_ADDR_0
    other = SigningKey(b"\x07" * 32, origin=KeyOrigin.DEV)
    with running_signer(tmp_path, key=other):
        client.ping()
        assert client.address().address == other.address  # no stale identity after a reconnect
    client.close()


def test_client_connect_errors(tmp_path: Path) -> None:
    from router.errors import MalformedInput
    from router.errors import TransportError as RouterTransportError

    with pytest.raises(RouterTransportError, match="cannot connect"):
        SignerClient.connect(f"unix:{tmp_path / 'nobody'}", connect_timeout=0.2)
    with pytest.raises(MalformedInput, match="unknown scheme"):
        SignerClient.connect("http://x")


def test_busy_polling_and_pinning(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    server = SignerServer(dev_key(), load_policy(DEV_POLICY), cpu=cpu, spin_us=50)
    server.bind(f"unix:{tmp_path / 's.sock'}")
    server.start()
    before = os.sched_getaffinity(0)
    try:
        with SignerClient(parse_address(f"unix:{tmp_path / 's.sock'}"), spin_us=50) as c:
            c._reconnect()
            for _ in range(20):
                c.ping()
                assert len(c.sign_digest(os.urandom(32))) == 65
    finally:
        server.close()
    assert os.sched_getaffinity(0) == before  # pinning applies to the connection thread only
    with pytest.raises(ValueError, match="not available"):
        SignerServer(dev_key(), load_policy(DEV_POLICY), cpu=4096)


def _conn_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sentinel-conn"]


def _thread_cpu_ticks(native_id: int) -> int:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def test_connection_thread_is_pinned_and_spin_is_bounded(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    server = SignerServer(dev_key(), load_policy(DEV_POLICY), cpu=cpu, spin_us=200)
    server.bind(f"unix:{tmp_path / 's.sock'}")
    server.start()
    try:
        with SignerClient.connect(f"unix:{tmp_path / 's.sock'}", spin_us=0) as c:
            c.ping()
            (thread,) = _conn_threads()
            assert thread.native_id is not None
            assert os.sched_getaffinity(thread.native_id) == {cpu}
            # Idle: after its bounded spin the thread blocks, so it burns (almost) no CPU.
            time.sleep(0.1)
            before = _thread_cpu_ticks(thread.native_id)
            time.sleep(1.0)
            spent = _thread_cpu_ticks(thread.native_id) - before
            assert spent <= 5, f"idle connection thread used {spent} ticks in 1 s"
            c.ping()
    finally:
        server.close()


def test_pipelined_large_frames_cross_buffer_compaction(tmp_path: Path) -> None:
    """Frames bigger than half the receive buffer, sent back to back in one write, force the
    server to compact partially received frames; every answer must still be right and in order."""
    sizes = [60_000, wire.MAX_TX_DATA, 1, 90_000, wire.MAX_TX_DATA - 7, 5]
    txs = [TX._replace(nonce=i, data=bytes([i + 1]) * n, gas=10**7) for i, n in enumerate(sizes)]
    stream = b"".join(
        wire.pack_frame(Op.SIGN_TX, 100 + i, wire.encode_sign_tx(tx)) for i, tx in enumerate(txs)
    )
    assert len(stream) > 2 * (wire.HEADER_SIZE + wire.MAX_PAYLOAD)
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        sender = threading.Thread(target=sock.sendall, args=(stream,))
        sender.start()
        for i, tx in enumerate(txs):
            op, rid, payload = read_frame(sock)
            assert (op, rid) == (Op.SIGN_TX | 0x80, 100 + i), error_of(payload)
            raw = payload[32:]
            assert Account.recover_transaction(raw) == DEV_ADDR_0
            assert bytes([i + 1]) * len(tx.data) in raw
        sender.join(10)


def test_request_stop_takes_no_lock_and_ends_serve_forever(tmp_path: Path) -> None:
    """What a SIGTERM handler calls: it runs in the main thread between any two bytecodes, maybe
    while that thread holds the server's lock in the accept loop, so it must not take the lock."""
    server = SignerServer(dev_key(), load_policy(DEV_POLICY), spin_us=0)
    server.bind(f"unix:{tmp_path / 's.sock'}")
    serving = server.start()
    done = threading.Event()

    def stop_with_lock_held() -> None:
        with server._lock:
            server.request_stop()
        done.set()

    stopper = threading.Thread(target=stop_with_lock_held, daemon=True)
    stopper.start()
    assert done.wait(5), "request_stop blocked on the server lock"
    serving.join(5)
    assert not serving.is_alive()
    server.close()
    assert not (tmp_path / "s.sock").exists()
    server.request_stop()  # after close: no write to a closed descriptor, no error


def test_sigterm_while_clients_connect_exits_promptly(tmp_path: Path) -> None:
    """The real process, stopped while connections keep arriving: every SIGTERM ends it."""
    import signal
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_text(DEV_KEY_0.hex())
    for round_ in range(3):
        sock = tmp_path / f"s{round_}.sock"
        proc = subprocess.Popen(
            [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}",
             "--dev-key-file", str(key_file), "--policy", str(DEV_POLICY)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        stop = threading.Event()

        def hammer(path: Path = sock, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.settimeout(1)
                    s.connect(str(path))
                    s.close()
                except OSError:
                    time.sleep(0.001)

        try:
            with SignerClient.connect(f"unix:{sock}", spin_us=0, connect_timeout=20) as client:
                client.ping()
            threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.2 * round_)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")
        assert not sock.exists()


def test_sigterm_taken_by_another_thread_still_stops_the_main_thread_accept_loop(
    tmp_path: Path,
) -> None:
    """The kernel may hand a process-directed SIGTERM to any thread; Python runs the handler in the
    main thread only, and a poll() blocked there is not interrupted. The server's wake-up fd is
    the signal wake-up fd while it serves in the main thread, so the loop still sees it."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys, threading, time\n"
        "from enclave.keys import KeyOrigin, SigningKey\n"
        "from enclave.policy import load_policy\n"
        "from enclave.server import SignerServer\n"
        f"server = SignerServer(SigningKey(bytes.fromhex('{DEV_KEY_0.hex()}'), "
        f"origin=KeyOrigin.DEV), load_policy({str(DEV_POLICY)!r}), spin_us=0)\n"
        f"server.bind('unix:{tmp_path / 's.sock'}')\n"
        "signal.signal(signal.SIGTERM, lambda *a: server.request_stop())\n"
        "def other():\n"
        "    time.sleep(0.5)\n"  # the main thread is blocked in poll() by then
        "    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)\n"  # this thread takes it
        "threading.Thread(target=other, daemon=True).start()\n"
        "server.serve_forever()\n"
        "server.close()\n"
        "print('stopped')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "stopped", proc.stderr
