"""Ethereum JSON-RPC gateway: existing clients (ethers, viem, web3.py, foundry) talk to the router
unchanged (README.md beside this file). `server.GatewayServer` serves it; this package's root stays
light so `router.config` can validate the listen address without importing aiohttp."""

from __future__ import annotations
