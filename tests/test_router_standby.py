"""Active and standby routers on one PostgreSQL journal (real server, real router processes):
the standby takes over when the active one is killed, nothing is lost or sent twice, and a router
that lost its lease never signs or sends again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from anvil_support import ROOT, Anvil
from router_proc_support import RouterProcess, write_config
from router_support import SENDER, transfers
from signer_support import running_signer

from router.api import ApiClient, ApiError
from router.errors import TransportError

pytest_plugins = ["postgres_support"]
pytestmark = pytest.mark.timeout(240)


def _configs(tmp: Path, anvil: Anvil, signer: str, dsn: str) -> tuple[Path, Path]:
    out = []
    for name in ("a", "b"):
        d = tmp / name
        d.mkdir()
        out.append(write_config(d, anvil, signer, extra=f'journal = "{dsn}"\n'
                                                      "journal_lease_seconds = 2.0"))
    return out[0], out[1]


def _our_txs(anvil: Anvil) -> list[dict[str, object]]:
    tip = int(str(anvil.rpc("eth_blockNumber")), 16)
    txs: list[dict[str, object]] = []
    for n in range(tip + 1):
        block = anvil.rpc("eth_getBlockByNumber", hex(n), True)
        assert isinstance(block, dict)
        txs += [t for t in block["transactions"] if t["from"].lower() == SENDER.lower()]
    return txs


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "standby exited"
        assert time.monotonic() < deadline, "standby did not take over"
        time.sleep(0.05)


def test_standby_takes_over_after_kill9(tmp_path: Path, anvil: Anvil, pg_dsn: str) -> None:
    intents = transfers(30, tag="ha")
    with running_signer(tmp_path) as signer:
        cfg_a, cfg_b = _configs(tmp_path, anvil, str(signer.address), pg_dsn)
        active = RouterProcess(cfg_a).start()
        # a second active router is refused at once: the sender's lease is held
        r = subprocess.run([sys.executable, "-m", "router", "run", "--config", str(cfg_b)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "lease" in r.stderr.lower(), r.stderr
        standby = RouterProcess(cfg_b, "--standby")
        standby.sock.unlink(missing_ok=True)
        log = standby.log.open("ab")
        standby.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "run", "--config", str(cfg_b), "--standby"],
            cwd=ROOT, stdout=log, stderr=log)
        try:
            time.sleep(1.0)
            assert not standby.sock.exists()  # waiting for the lease, not serving
            sent: dict[str, tuple[int, bytes]] = {}
            with ApiClient(str(active.sock)) as api:
                for i in intents[:15]:
                    sent[i.id] = api.submit(i)
            active.kill()  # kill -9 mid-stream
            t0 = time.monotonic()
            _wait_socket(standby.sock, standby.proc, timeout=30)
            took_over = time.monotonic() - t0
            assert took_over < 15, f"standby took {took_over:.1f} s"
            with ApiClient(str(standby.sock)) as api:
                for i in intents[:15]:  # known to the standby through the journal
                    assert api.submit(i) == sent[i.id]
                for i in intents[15:]:
                    sent[i.id] = api.submit(i)
                for i in intents:
                    st = api.wait(i.id, timeout=30)
                    assert st.state == "landed" and st.tx_hash == sent[i.id][1]
        finally:
            active.kill()
            standby.stop()
    txs = _our_txs(anvil)
    for i in intents:
        assert len([t for t in txs if str(t["to"]).lower() == "0x" + i.to.hex()]) == 1, i.id
    nonces = sorted(int(str(t["nonce"]), 16) for t in txs)
    assert nonces == list(range(len(nonces)))


def test_a_router_that_lost_its_lease_never_signs_again(tmp_path: Path, anvil: Anvil,
                                                         pg_dsn: str) -> None:
    """Fencing: the active router is frozen (SIGSTOP) past its lease, the standby takes over and
    signs; the old one, thawed, refuses to sign or send for the sender."""
    intents = transfers(6, tag="fence")
    with running_signer(tmp_path) as signer:
        cfg_a, cfg_b = _configs(tmp_path, anvil, str(signer.address), pg_dsn)
        active = RouterProcess(cfg_a).start()
        standby = RouterProcess(cfg_b, "--standby")
        log = standby.log.open("ab")
        standby.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "run", "--config", str(cfg_b), "--standby"],
            cwd=ROOT, stdout=log, stderr=log)
        try:
            with ApiClient(str(active.sock)) as api:
                api.submit(intents[0])
                assert api.wait(intents[0].id, timeout=30).state == "landed"
            assert active.proc is not None
            active.proc.send_signal(signal.SIGSTOP)
            _wait_socket(standby.sock, standby.proc, timeout=30)
            with ApiClient(str(standby.sock)) as api:
                for i in intents[1:4]:
                    api.submit(i)
                for i in intents[1:4]:
                    assert api.wait(i.id, timeout=30).state == "landed"
            before = len(_our_txs(anvil))
            active.proc.send_signal(signal.SIGCONT)
            with ApiClient(str(active.sock)) as api:
                for i in intents[4:]:
                    with pytest.raises((ApiError, TransportError), match="(?i)lease"):
                        api.submit(i)
            time.sleep(2.0)
            anvil.rpc("evm_mine")
            assert len(_our_txs(anvil)) == before  # the fenced router sent nothing
        finally:
            if active.proc is not None and active.proc.poll() is None:
                active.proc.send_signal(signal.SIGCONT)
            active.stop()
            standby.stop()
