"""`python -m router run --config FILE`: the router as a service.

Connects to the signer (checking the configured sender against the signer's key), starts the
router on the configured endpoints and serves the local API (router/api.py) until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from router._cli import stderr_console
from router.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from router.core import RouterConfig
    from router.journal import Journal
    from router.listen import ListenAddress
    from router.signer_client import SignerClient

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the router service (TOML configuration)")
    parser.add_argument("--config", required=True, metavar="FILE", help="router TOML file")
    parser.add_argument("--log-format", choices=("text", "json"), default="json",
                        help="stderr log lines: JSON objects (default) or plain text")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info")
    parser.add_argument("--standby", action="store_true",
                        help="wait for the journal's lease (another router holds the sender) and "
                             "take over when it lapses (PostgreSQL journal)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.core import RouterConfig
    from router.journal import open_journal
    from router.signer_client import SignerClient, parse_signer_address

    _setup_logging(args.log_format, "debug" if getattr(args, "verbose", False) else args.log_level)
    cfg = load_config(args.config)
    if not cfg.ws:
        log.warning("no ws endpoint configured: heads are polled over rpc")
    if cfg.cpu is not None and cfg.cpu not in os.sched_getaffinity(0):
        raise ConfigError(f"{args.config}: cpu {cfg.cpu} is not available to this process")
    check = None
    if cfg.attestation is not None:
        from router.attest import SignerCheck

        check = SignerCheck(cfg.attestation)  # every (re)connection is attested before use
    try:
        client = SignerClient.connect(cfg.signer, io_timeout=cfg.signer_timeout,
                                      on_connect=check)
    except TransportError as e:
        if cfg.sender is None:
            raise
        # The sender is configured: start without the signer (heads, re-broadcasts and the API
        # go on; signing fails fast until it answers, and the first call connects and attests).
        log.error("signer unreachable at start; running without it", extra={
            "error": e.diagnostics()})
        client = SignerClient(parse_signer_address(cfg.signer), io_timeout=cfg.signer_timeout,
                              on_connect=check)
    try:
        if check is not None and check.attested is not None:
            pcrs = check.attested.pcrs
            stderr_console().print(
                "signer attested: "
                + ", ".join(f"PCR{i} {pcrs[i].hex()[:16]}.." for i in sorted(pcrs))
                + f", key bound ({check.attested.address})"
            )
        try:
            signer_address = client.address().address
        except TransportError:
            if cfg.sender is None:
                raise
            signer_address = cfg.sender
        if cfg.sender is not None and cfg.sender.lower() != signer_address.lower():
            raise ConfigError(
                f"{args.config}: sender {cfg.sender} is not the signer's address {signer_address}"
            )
        try:
            router_cfg = RouterConfig(chain_id=cfg.chain_id, sender=signer_address,
                                      rpc_urls=cfg.rpc, ws_url=None, ws_urls=cfg.ws,
                                      fees=cfg.fees, signer_cpu=cfg.cpu, **cfg.tuning)
        except TypeError as e:
            raise ConfigError(f"{args.config} [router]: {e}") from e
        journal = open_journal(
            cfg.journal, base_dir=Path(args.config).parent, chain_id=cfg.chain_id,
            sender=signer_address, holder=f"{socket.gethostname()}:{os.getpid()}",
            lease_seconds=cfg.journal_lease_seconds, sync=cfg.journal_sync,
            acquire_timeout=None if args.standby else 0.0)
        return asyncio.run(_serve(router_cfg, client, cfg.listen[len("unix:"):], journal,
                                  gateway=cfg.gateway, metrics=cfg.metrics))
    finally:
        client.close()


def _setup_logging(fmt: str, level: str) -> None:
    from router._logfmt import JsonFormatter

    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    for handler in root.handlers:
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
    # aiohttp/websockets chatter is not the router's story
    for name in ("aiohttp", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def _serve(router_cfg: RouterConfig, client: SignerClient, path: str,
                 journal: Journal, *, gateway: ListenAddress | None = None,
                 metrics: ListenAddress | None = None) -> int:
    from router.api import ApiServer
    from router.core import Router
    from router.gateway.server import GatewayServer

    router = Router(router_cfg, client, journal=journal)
    api = ApiServer(router, path)
    rpc = None if gateway is None else GatewayServer(router, gateway.host, gateway.port)
    exporter = None
    if metrics is not None:
        from router.metrics.server import MetricsServer

        # Before start(): /healthz answers and /readyz says "not started" while recovering.
        # The address was checked (loopback or allowed) when the configuration was read.
        exporter = MetricsServer(router, metrics, allow_remote=True)
        await exporter.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await router.start()
        if rpc is not None:
            await rpc.start()
            stderr_console().print(f"JSON-RPC gateway on {rpc.url} (HTTP and WebSocket)")
        await api.start()
        # Start-up garbage (imports, recovery) is never scanned again: collections stay short.
        gc.freeze()
        stderr_console().print(
            f"router for {router.config.sender} on chain {router.config.chain_id}: "
            f"API on unix:{path}, next nonce {router.nonces.next_nonce}"
            + (f", metrics on {exporter.url}/metrics" if exporter is not None else "")
        )
        await stop.wait()
    finally:
        if rpc is not None:
            await rpc.close()
        await api.close()
        if exporter is not None:
            await exporter.close()
        await router.close()
    return 0
