"""`python -m router run` / `submit` end to end: real anvil, the real signer on a Unix socket, the
router as its own process, and its local API in the signer's framing (good and bad frames)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import DEV_ADDR_0, DEV_KEY_0, ROOT
from router_support import balance, dest, mined_nonces
from signer_support import error_of, header, read_frame, running_signer

from enclave.wire import OP_ERROR, pack_frame
from router import api
from router.api import ApiClient, ApiError
from router.intent import Intent

pytestmark = pytest.mark.timeout(120)


def _config(tmp: Path, anvil, signer_sock: str, **extra: str) -> Path:
    lines = {
        "chain_id": str(anvil.chain_id),
        "signer": f'"{signer_sock}"',
        "listen": f'"unix:{tmp / "router.sock"}"',
        "sender": f'"{DEV_ADDR_0}"',
        "rpc": f'["{anvil.rpc_url}"]',
        "ws": f'"{anvil.ws_url}"',
        **extra,
    }
    body = "\n".join(f"{k} = {v}" for k, v in lines.items() if v is not None)
    body += '\n[fees]\npriority_fee = "1000000000"\nbump_percent = 13\n'
    path = tmp / "router.toml"
    path.write_text(body)
    return path


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def service(tmp_path: Path, anvil) -> Iterator[tuple[Path, object]]:
    with running_signer(tmp_path) as signer:
        cfg = _config(tmp_path, anvil, str(signer.address))
        proc = subprocess.Popen([sys.executable, "-m", "router", "run", "--config", str(cfg)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sock = tmp_path / "router.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"router did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        try:
            yield sock, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)


def test_run_and_submit_end_to_end(service, anvil) -> None:
    sock, proc = service
    # the API signs with the fund's key, the journal holds unbroadcast intents: owner only
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((sock.parent / "router-journal.sqlite").stat().st_mode) == 0o600
    to = "0x" + dest(1).hex()
    r = _cli("submit", "--router", f"unix:{sock}", "--to", to, "--value", "12345", "--wait",
             "--json", "--id", "cli-1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "landed" and out["status"] == 1 and out["nonce"] == 0
    assert "OK: nonce 0" in r.stderr
    # the same id again: the first intent's handle, nothing signed twice
    r2 = _cli("submit", "--router", f"unix:{sock}", "--to", to, "--value", "12345", "--json",
              "--id", "cli-1")
    assert r2.returncode == 0 and json.loads(r2.stdout)["nonce"] == 0
    with ApiClient(str(sock)) as client:
        sent = [client.submit(Intent(to=dest(10 + i), value=7 + i, id=f"api-{i}"))
                for i in range(5)]
        assert [n for n, _ in sent] == [1, 2, 3, 4, 5]
        for i in range(5):
            st = client.wait(f"api-{i}", timeout=30)
            assert st.state == "landed" and st.receipt_status == 1
        stats = client.stats()
        assert stats["submitted"] == 6
        assert 0 < stats["decision_us_p50"] <= stats["decision_us_max"]  # live newHeads latency
    assert sorted(mined_nonces(anvil)) == list(range(6))
    assert balance(anvil, dest(1)) == 12345
    assert [balance(anvil, dest(10 + i)) for i in range(5)] == [7, 8, 9, 10, 11]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not sock.exists()
    # structured logs on stderr: JSON lines with hashes and outcomes, never key or signed bytes
    lines = [json.loads(x) for x in proc.stderr.read().decode().splitlines() if x.startswith("{")]
    sends = [x for x in lines if x["msg"] == "broadcast"]
    assert len(sends) >= 6 and {"endpoint", "tx", "nonce", "outcome", "us"} <= set(sends[0])
    text = json.dumps(lines)
    assert DEV_KEY_0.hex() not in text
    assert out["tx_hash"][2:] in text


def _raw(sock: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock))
    return s


def test_api_bad_frames_answered_and_connection_kept(service) -> None:
    sock, _ = service
    s = _raw(sock)
    cases = [
        (pack_frame(0x7E, 1), api.E_UNKNOWN_OP, "unknown opcode"),
        (pack_frame(api.OP_SUBMIT, 2, b"\x00" * 10), api.E_BAD_LENGTH, "fixed part"),
        (pack_frame(api.OP_SUBMIT, 3, api.encode_submit(Intent(to=b"\x01" * 20, id="x"))
                    + b"extra"), api.E_BAD_LENGTH, "lengths say"),
        (pack_frame(api.OP_STATUS, 4, b"nope"), api.E_NOT_FOUND, "no intent"),
        (pack_frame(api.OP_STATUS, 5, b"\xff\xfe"), api.E_MALFORMED, "UTF-8"),
        (pack_frame(api.OP_WAIT, 6, b"\x01"), api.E_BAD_LENGTH, "WAIT payload"),
        (pack_frame(api.OP_SUBMIT, 7, api.encode_submit(
            Intent(to=b"\x01" * 20, value=2 * 10**24, id="too-much"))), api.E_REFUSED, "value"),
        (header(api.OP_PING, 8, 0, version=9), api.E_BAD_VERSION, "version 9"),
    ]
    for frame, code, text in cases:
        s.sendall(frame)
        op, rid, payload = read_frame(s)
        assert op == OP_ERROR, frame
        got_code, message = error_of(payload)
        assert (got_code, text in message) == (code, True), (message, frame)
    s.sendall(pack_frame(api.OP_PING, 99))
    assert read_frame(s)[:2] == (api.OP_PING | 0x80, 99)  # the connection survived all of that
    s.sendall(header(api.OP_PING, 100, 0, magic=b"XX"))
    op, _, payload = read_frame(s)
    assert op == OP_ERROR and error_of(payload)[0] == api.E_BAD_MAGIC
    assert s.recv(1) == b""  # a frame that is not ours: answered, then the connection closed
    s.close()
    with ApiClient(str(sock)) as client:
        with pytest.raises(ApiError, match="value"):
            client.submit(Intent(to=b"\x01" * 20, value=2 * 10**24, id="too-much-2"))
        assert client.stats()["next_nonce"] == 0  # refused intents consumed no nonce


def test_config_and_input_errors_exit_2(tmp_path: Path, anvil) -> None:
    bad_key = _config(tmp_path, anvil, "unix:/nonexistent", chain_idd="1")
    r = _cli("run", "--config", str(bad_key))
    assert r.returncode == 2 and "unknown keys ['chain_idd']" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("run", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    (tmp_path / "broken.toml").write_text("chain_id = [")
    r = _cli("run", "--config", str(tmp_path / "broken.toml"))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    with running_signer(tmp_path) as signer:
        wrong = _config(tmp_path, anvil, str(signer.address), sender='"0x' + "11" * 20 + '"')
        r = _cli("run", "--config", str(wrong))
        assert r.returncode == 2 and "is not the signer's address" in r.stderr
    r = _cli("submit", "--router", "unix:/nonexistent.sock", "--to", "0x1234")
    assert r.returncode == 2 and "intent.to" in r.stderr
    r = _cli("submit", "--router", "unix:/nonexistent.sock", "--to", "0x" + "11" * 20,
             "--value", "ten")
    assert r.returncode == 2 and "--value" in r.stderr
    r = _cli("submit", "--router", f"unix:{tmp_path}/none.sock", "--to", "0x" + "11" * 20)
    assert r.returncode == 1 and "router API" in r.stderr
    assert all("Traceback" not in x for x in (r.stderr,))
    assert os.path.exists(tmp_path / "router.toml")


def _measurements(path: Path, pcrs: dict[int, bytes]) -> Path:
    doc = {"Measurements": {"HashAlgorithm": "Sha384 { ... }",
                            **{f"PCR{i}": v.hex() for i, v in pcrs.items()}}}
    path.write_text(json.dumps(doc))
    return path


def _run_until_ready_or_exit(cfg: Path, sock: Path) -> tuple[int | None, str]:
    proc = subprocess.Popen([sys.executable, "-m", "router", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)
    return (None if sock.exists() or code == 0 else code), proc.stderr.read()  # type: ignore[union-attr]


def test_signer_attested_before_routing(tmp_path: Path, anvil) -> None:
    from enclave.nsm.emulator import EmulatedNsm

    pcrs = {0: bytes([1]) * 48, 1: bytes([2]) * 48, 2: bytes([3]) * 48}
    good = _measurements(tmp_path / "good.json", pcrs)
    bad = _measurements(tmp_path / "bad.json", {**pcrs, 0: bytes([9]) * 48})
    nsm = EmulatedNsm(pcrs=pcrs)
    (tmp_path / "root.pem").write_bytes(nsm.root_pem)
    sock = tmp_path / "router.sock"
    with running_signer(tmp_path, nsm=nsm) as signer:
        cfg = _config(tmp_path, anvil, str(signer.address))
        base = cfg.read_text()
        cfg.write_text(base + '[attestation]\nmeasurements = "good.json"\nroot = "root.pem"\n')
        code, err = _run_until_ready_or_exit(cfg, sock)
        assert code is None and "signer attested: PCR0 0101010101010101.." in err, err
        assert f"key bound ({DEV_ADDR_0})" in err, err
        cfg.write_text(base + '[attestation]\nmeasurements = "bad.json"\nroot = "root.pem"\n')
        code, err = _run_until_ready_or_exit(cfg, sock)
        assert code == 1 and "PCR0" in err and "signer attestation refused" in err, err
        assert not sock.exists()
        # the real AWS root: an emulator's document does not chain to it
        cfg.write_text(base + '[attestation]\nmeasurements = "good.json"\n')
        code, err = _run_until_ready_or_exit(cfg, sock)
        assert code == 1 and "signer attestation refused" in err, err
        cfg.write_text(base + '[attestation]\nmeasurements = "missing.json"\n')
        code, err = _run_until_ready_or_exit(cfg, sock)
        assert code == 2 and "attestation measurements" in err, err
    with running_signer(tmp_path) as signer:  # no NSM at all
        cfg = _config(tmp_path, anvil, str(signer.address))
        cfg.write_text(cfg.read_text() + '[attestation]\nmeasurements = "good.json"\n')
        code, err = _run_until_ready_or_exit(cfg, sock)
        assert code == 1 and "Secure Module" in err, err
    assert bad.exists() and good.exists()
