"""Start and drive a real anvil (from the pinned npm package) on loopback for chain tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from reproducible.boot.qemu import stop_process

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BINARY = (
    ROOT / "tests" / "node" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
)
# anvil's default mnemonic ("test test ... junk") account 0; public test data, funded on start.
DEV_KEY_0 = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
DEV_ADDR_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def anvil_binary() -> Path:
    path = Path(os.environ.get("SENTINEL_ANVIL", DEFAULT_BINARY))
    if not path.exists():
        raise RuntimeError(
            f"anvil not found at {path}: run the tests through `nox -s tests`, which installs it"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Anvil:
    port: int
    chain_id: int
    process: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    _id: int = 0

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Anvil:
        cmd = [
            str(anvil_binary()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--silent",
            *self.args,
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"anvil exited with {self.process.returncode}: {err}")
            try:
                self.rpc("eth_chainId")
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("anvil did not answer within 20 s")

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)

    def rpc(self, method: str, *params: object) -> object:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        req = urllib.request.Request(
            self.rpc_url, body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.loads(resp.read())
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def receipt(self, tx_hash: str, timeout: float = 20.0) -> dict[str, object]:
        """The transaction's receipt once mined (automine answers eth_sendTransaction before
        the receipt is always queryable on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if isinstance(receipt, dict):
                return receipt
            if time.monotonic() > deadline:
                raise AssertionError(f"{tx_hash} not mined within {timeout} s")
            time.sleep(0.05)


def start_anvil(chain_id: int = 31337, args: list[str] | None = None) -> Anvil:
    return Anvil(port=free_port(), chain_id=chain_id, args=list(args or [])).start()
