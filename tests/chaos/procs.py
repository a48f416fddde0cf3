"""The three real processes of a chaos run: anvil, the signer and the router.

Each can be SIGKILLed and started again on the same endpoints (same port, same socket path, same
state file), which is what a crash and a supervisor's restart look like to the others.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from anvil_support import anvil_binary

from router.api import OP_PING, ApiClient
from router.errors import RouterError

ROOT = Path(__file__).resolve().parents[2]
DEV_POLICY = ROOT / "enclave" / "policy.dev.toml"


class HarnessError(RuntimeError):
    """The harness could not do its job (a process that will not start); not a router finding."""


class ProcessFailed(HarnessError):
    """A managed process exited or did not become ready in time."""


class Managed:
    """One child process, its log (appended across restarts) and its kill/start counts."""

    name = "process"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and return once it serves.

        Raises:
            ProcessFailed: it exited or did not become ready within `timeout` seconds.
        """
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open across restarts
        self._log.write(f"--- start {self.starts + 1}: {time.strftime('%H:%M:%S')}\n".encode())
        self._log.flush()
        # Own session: a terminal's Ctrl-C reaches the harness, which then stops its children.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=ROOT, start_new_session=True)
        self.starts += 1
        return self.proc

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _exited(self, what: str) -> ProcessFailed:
        assert self.proc is not None
        return ProcessFailed(f"{self.name} exited with {self.proc.returncode} {what}; "
                             f"last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class AnvilNode(Managed):
    """anvil with `--state FILE --state-interval 1`: a SIGKILLed node comes back with the chain as
    of its last dump (up to a second behind), i.e. a node that reverted its recent blocks."""

    name = "anvil"

    def __init__(self, workdir: Path, port: int, *, block_time: int = 1,
                 chain_id: int = 31337) -> None:
        super().__init__(workdir / "anvil.log")
        self.port = port
        self.chain_id = chain_id
        self.block_time = block_time
        self.state_file = workdir / "anvil-state.json"
        self.backup_file = workdir / "anvil-state.saved.json"
        self.state_restores = 0
        self._id = 0

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start (again); a state file that a SIGKILL cut mid-write (anvil rewrites it in place)
        is replaced by the last complete dump the harness saved, so the node still comes back
        with its chain, only older."""
        try:
            self._start(timeout)
        except ProcessFailed:
            if not self.backup_file.exists():
                raise
            self.state_restores += 1
            shutil.copyfile(self.backup_file, self.state_file)
            self._start(timeout)

    def save_state(self) -> bool:
        """Copy the state file aside if it is a complete JSON dump (for `start`)."""
        try:
            data = self.state_file.read_bytes()
            json.loads(data)
        except (OSError, ValueError):
            return False
        tmp = self.backup_file.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.backup_file)
        return True

    def _start(self, timeout: float) -> None:
        proc = self._spawn([
            str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
            "--chain-id", str(self.chain_id), "--silent",
            "--block-time", str(self.block_time),
            "--state", str(self.state_file), "--state-interval", "1",
            # without the states of past blocks a restored node cannot anvil_reorg
            # ("Required data unavailable")
            "--preserve-historical-states",
        ])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited("at start")
            try:
                self.rpc("eth_chainId")
                return
            except (OSError, HarnessError):
                time.sleep(0.05)
        raise ProcessFailed(f"anvil did not answer within {timeout} s")

    def rpc(self, method: str, *params: object, timeout: float = 10.0) -> object:
        """One JSON-RPC call. Raises OSError when the node is unreachable, HarnessError for an
        error answer."""
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                           "params": list(params)}).encode()
        req = urllib.request.Request(self.rpc_url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise HarnessError(f"{method}: HTTP {e.code}") from e
        if "error" in answer:
            raise HarnessError(f"{method}: {answer['error']}")
        return answer["result"]


class SignerProcess(Managed):
    """`python -m enclave serve` with anvil's public dev key and the development policy."""

    name = "signer"

    def __init__(self, workdir: Path, key_hex: str) -> None:
        super().__init__(workdir / "signer.log")
        self.socket_path = workdir / "signer.sock"
        self.key_file = workdir / "dev.key"
        self.key_file.write_text(key_hex + "\n")
        self.key_file.chmod(0o600)

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self, timeout: float = 30.0) -> None:
        # --spin-us 0: busy-polling would take a whole core of this 2-core machine.
        proc = self._spawn([
            sys.executable, "-m", "enclave", "serve", "--listen", self.address,
            "--dev-key-file", str(self.key_file), "--policy", str(DEV_POLICY), "--spin-us", "0",
        ])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited("at start")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(self.socket_path))
                    return
                except OSError:
                    time.sleep(0.05)
        raise ProcessFailed(f"signer did not listen within {timeout} s")


class RouterProcess(Managed):
    """`python -m router run --config FILE`; ready when its API answers PING."""

    name = "router"

    def __init__(self, workdir: Path, config_file: Path, api_path: Path) -> None:
        super().__init__(workdir / "router.log")
        self.config_file = config_file
        self.api_path = api_path

    def start(self, timeout: float = 40.0) -> None:
        proc = self._spawn([sys.executable, "-m", "router", "run", "--config",
                            str(self.config_file), "--log-format", "json"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited("at start")
            try:
                with ApiClient(str(self.api_path), timeout=2.0) as client:
                    client.call(OP_PING)
                return
            except RouterError:
                time.sleep(0.1)
        raise ProcessFailed(f"router API did not answer within {timeout} s")
