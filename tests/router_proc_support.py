"""`python -m router run` as a real process that tests can SIGKILL and restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from anvil_support import DEV_ADDR_0, ROOT, Anvil


def write_config(tmp: Path, anvil: Anvil, signer: str, *, rpc: list[str] | None = None,
                 ws: list[str] | None = None, extra: str = "", router: str = "") -> Path:
    """A router TOML beside `tmp`'s files; the journal defaults to tmp/router-journal.sqlite."""
    rpc = rpc if rpc is not None else [anvil.rpc_url]
    ws = ws if ws is not None else [anvil.ws_url]
    quoted = ", ".join(f'"{u}"' for u in rpc)
    ws_q = ", ".join(f'"{u}"' for u in ws)
    body = (
        f"chain_id = {anvil.chain_id}\n"
        f'signer = "{signer}"\n'
        f'listen = "unix:{tmp / "router.sock"}"\n'
        f'sender = "{DEV_ADDR_0}"\n'
        f"rpc = [{quoted}]\n"
        f"ws = [{ws_q}]\n"
        f"{extra}\n"
        '[fees]\npriority_fee = "1000000000"\nbump_percent = 13\n'
        f"[router]\nrebroadcast_after_seconds = 1.0\n{router}\n"
    )
    path = tmp / "router.toml"
    path.write_text(body)
    return path


class RouterProcess:
    """One router service process; `kill()` is SIGKILL (nothing flushed, nothing closed)."""

    def __init__(self, config: Path, *args: str) -> None:
        self.config = config
        self.args = args
        self.sock = config.parent / "router.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "router.log"

    def start(self, timeout: float = 30) -> RouterProcess:
        if self.sock.exists():
            self.sock.unlink()  # a SIGKILLed router leaves its socket behind
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "run", "--config", str(self.config), *self.args],
            cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"router did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
