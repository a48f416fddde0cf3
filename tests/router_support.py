"""Helpers for the router tests: a router wired to a real anvil, and chain checks."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from anvil_support import DEV_ADDR_0, DEV_KEY_0, Anvil
from signer_support import running_signer

from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import Policy
from router.config import RunConfig, load_config
from router.core import Router, RouterConfig
from router.fees import FeePolicy
from router.intent import Intent
from router.signer_client import SignerClient
from router.signing import InProcessSigner, TxSigner

# A fresh destination per test keeps balance assertions independent of anvil's funded accounts.
SENDER = DEV_ADDR_0


def dev_signer() -> InProcessSigner:
    return InProcessSigner(SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV))


def config_for(anvil: Anvil, **overrides: object) -> RouterConfig:
    kwargs: dict[str, object] = dict(
        chain_id=anvil.chain_id,
        sender=SENDER,
        rpc_urls=(anvil.rpc_url,),
        ws_url=anvil.ws_url,
        fees=FeePolicy(),
        rebroadcast_after_seconds=1.0,
    )
    kwargs.update(overrides)
    return RouterConfig(**kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def signer_over_unix(policy: Policy | None = None) -> Iterator[SignerClient]:
    """The real enclave signer (SignerServer, dev key) on a Unix socket, and a client to it."""
    with tempfile.TemporaryDirectory(prefix="sentinel-signer-") as tmp:
        with running_signer(Path(tmp), policy=policy) as server:
            client = SignerClient.connect(str(server.address), spin_us=0)
            try:
                yield client
            finally:
                client.close()


@contextlib.asynccontextmanager
async def running_router(
    anvil: Anvil, signer: TxSigner | None = None, **overrides: object
) -> AsyncIterator[Router]:
    """A started Router on `anvil`; without `signer`, it signs through the real signer server
    over a Unix socket."""
    with contextlib.ExitStack() as stack:
        if signer is None:
            signer = stack.enter_context(signer_over_unix())
        router = Router(config_for(anvil, **overrides), signer)
        await router.start()
        try:
            yield router
        finally:
            await router.close()


def dest(i: int) -> bytes:
    return (0xD0D0_0000 + i).to_bytes(20, "big")


def transfers(n: int, base_value: int = 1000, tag: str = "t") -> list[Intent]:
    return [Intent(to=dest(i), value=base_value + i, id=f"{tag}-{i}") for i in range(n)]


def balance(anvil: Anvil, address: bytes) -> int:
    return int(str(anvil.rpc("eth_getBalance", "0x" + address.hex(), "latest")), 16)


def mined_nonces(anvil: Anvil, sender: str = SENDER) -> list[int]:
    """Every nonce of `sender` in the canonical chain, in block order (duplicates would show)."""
    tip = int(str(anvil.rpc("eth_blockNumber")), 16)
    out: list[int] = []
    for n in range(tip + 1):
        block = anvil.rpc("eth_getBlockByNumber", hex(n), True)
        assert isinstance(block, dict)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower():
                out.append(int(tx["nonce"], 16))
    return out


async def wait_for(pred: object, timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


#: The smallest valid `python -m router run` configuration; tests append the keys they check.
RUN_CONFIG_BASE = """chain_id = 31337
signer = "unix:/tmp/s.sock"
listen = "unix:/tmp/r.sock"
rpc = ["http://127.0.0.1:8545"]
"""


def load_run_config(tmp_path: Path, extra: str) -> RunConfig:
    """`load_config` of RUN_CONFIG_BASE + `extra`, written to tmp_path/router.toml."""
    p = tmp_path / "router.toml"
    p.write_text(RUN_CONFIG_BASE + extra)
    return load_config(p)
