"""`python -m router run --config FILE`: the TOML file, parsed once into typed settings.

```toml
chain_id = 31337
signer = "unix:/run/sentinel/signer.sock"     # unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT
listen = "unix:/run/sentinel/router.sock"     # the local API (Unix socket, signer framing)
sender = "0xf39F...2266"                       # optional: checked against the signer's address
rpc = ["http://127.0.0.1:8545"]               # one or more; broadcasts go to all at once
ws = ["ws://127.0.0.1:8545"]                  # newHeads from each at once (a URL or a list;
                                              # optional: without it, heads are polled over rpc)
cpu = 1                                       # optional: pin the signer thread (busy-poll client)
signer_timeout = 5.0                          # optional: seconds a signer call may take (default 5)
journal = "router-journal.sqlite"             # optional (this is the default, beside this file):
                                              # a SQLite path, "postgresql://..." (active/standby
                                              # routers: one lease per sender), or "memory"
journal_sync = "normal"                       # optional, SQLite: "normal" (default) or "full"
journal_lease_seconds = 5.0                   # optional, PostgreSQL: how long a dead router's
                                              # lease blocks the standby
gateway = "127.0.0.1:8645"                    # optional: Ethereum JSON-RPC gateway (HTTP + WS,
                                              # router/gateway/README.md); loopback only unless
gateway_allow_remote = false                  # this is true
metrics = "127.0.0.1:9464"                    # optional: Prometheus exporter (/metrics, /healthz,
                                              # /readyz); absent = off; loopback only unless
metrics_allow_remote = false                  # this is true

[fees]                                        # wei; integers or decimal strings
priority_fee = "1000000000"
base_fee_multiplier_percent = 200
max_fee_cap = "500000000000"
bump_percent = 13

[router]                                      # optional tuning
rebroadcast_after_seconds = 2.0
presign_replacements = true
fill_gaps = true
poll_interval = 1.0                           # heads by HTTP polling while no WebSocket is up
signer_cooldown = 0.5                         # after a signer failure, fail fast this long
event_confirmations = 12                      # LANDED events repeat per head up to this depth

[attestation]                                 # optional: attest the signer before routing
measurements = "measurements/0.5.0.json"      # the published PCRs the enclave must show
pcrs = [0, 1, 2]                              # optional: which of them (default: all)
root = "emulator-root.pem"                    # optional: default is the AWS Nitro root
max_age_seconds = 300
```
Relative paths (journal, [attestation]) are relative to the configuration file.
Unknown keys are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attest import AttestationPolicy
from .errors import ConfigError
from .fees import FeePolicy
from .listen import ListenAddress, parse_listen
from .signer_client import DEFAULT_IO_TIMEOUT

_TOP = {"chain_id", "signer", "listen", "sender", "rpc", "ws", "cpu", "fees", "router",
        "attestation", "signer_timeout", "journal", "journal_sync", "journal_lease_seconds",
        "gateway", "gateway_allow_remote", "metrics", "metrics_allow_remote"}
_ATTEST = {"measurements", "root", "pcrs", "max_age_seconds"}
_FEES = {"priority_fee", "base_fee_multiplier_percent", "max_fee_cap", "bump_percent",
         "bump_on_reorg"}
_ROUTER = {"rebroadcast_after_seconds", "rebroadcast_after_heads", "presign_replacements",
           "fill_gaps", "head_ring", "forget_after_blocks", "max_resigns",
           "poll_interval", "signer_cooldown", "reconcile_depth", "event_confirmations"}
DEFAULT_JOURNAL = "router-journal.sqlite"


@dataclass(frozen=True)
class RunConfig:
    chain_id: int
    signer: str
    listen: str
    sender: str | None
    rpc: tuple[str, ...]
    ws: tuple[str, ...]
    cpu: int | None
    fees: FeePolicy
    tuning: dict[str, Any]
    attestation: AttestationPolicy | None = None
    signer_timeout: float = DEFAULT_IO_TIMEOUT
    #: "memory", "postgresql://...", or an absolute SQLite path (resolved against the file).
    journal: str = DEFAULT_JOURNAL
    journal_sync: str = "normal"
    journal_lease_seconds: float = 5.0
    #: The JSON-RPC gateway's address, or None (not served).
    gateway: ListenAddress | None = None
    #: The metrics exporter's address; None: no exporter.
    metrics: ListenAddress | None = None


def load_config(path: str | Path) -> RunConfig:
    """Parse the router's TOML configuration.

    Raises:
        ConfigError: unreadable, not TOML, unknown or missing keys, wrong types; names the key.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from e
    where = str(p)
    _no_unknown(doc, _TOP, where)
    fees_doc = _table(doc, "fees", where)
    router_doc = _table(doc, "router", where)
    _no_unknown(fees_doc, _FEES, f"{where} [fees]")
    _no_unknown(router_doc, _ROUTER, f"{where} [router]")
    rpc = doc.get("rpc")
    if isinstance(rpc, str):
        rpc = [rpc]
    if not isinstance(rpc, list) or not rpc or not all(isinstance(u, str) for u in rpc):
        raise ConfigError(f"{where}: rpc must be a URL or a non-empty list of URLs")
    for u in rpc:
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: rpc entry is not an http(s) URL: {u[:60]!r}")
    ws = doc.get("ws", [])
    if isinstance(ws, str):
        ws = [ws]
    if not isinstance(ws, list) or not all(
        isinstance(u, str) and u.startswith(("ws://", "wss://")) for u in ws
    ):
        raise ConfigError(f"{where}: ws must be a ws:// or wss:// URL or a list of them")
    journal = doc.get("journal", DEFAULT_JOURNAL)
    if not isinstance(journal, str) or not journal.strip():
        raise ConfigError(f"{where}: journal must be a path, \"memory\" or a postgresql:// URL")
    if journal != "memory" and not journal.startswith(("postgresql://", "postgres://")):
        journal = str((p.parent / journal).resolve())
    journal_sync = doc.get("journal_sync", "normal")
    if journal_sync not in ("full", "normal"):
        raise ConfigError(f"{where}: journal_sync must be \"full\" or \"normal\"")
    lease = doc.get("journal_lease_seconds", 5.0)
    if (not isinstance(lease, int | float) or isinstance(lease, bool)
            or not 0.5 <= lease <= 3600):
        raise ConfigError(f"{where}: journal_lease_seconds must be a number in 0.5..3600")
    gateway = _listen(doc, "gateway", where, example="127.0.0.1:8645")
    metrics = _listen(doc, "metrics", where, example="127.0.0.1:9464")
    listen = _str(doc, "listen", where)
    if not listen.startswith("unix:") or len(listen) <= 5:
        raise ConfigError(f"{where}: listen must be unix:PATH (the API is local only)")
    sender = doc.get("sender")
    if sender is not None and not (
        isinstance(sender, str) and sender.startswith("0x") and len(sender) == 42
        and all(c in "0123456789abcdefABCDEF" for c in sender[2:])
    ):
        raise ConfigError(f"{where}: sender must be a 0x-hex address")
    signer_timeout = doc.get("signer_timeout", DEFAULT_IO_TIMEOUT)
    if (not isinstance(signer_timeout, int | float) or isinstance(signer_timeout, bool)
            or not 0 < signer_timeout < float("inf")):
        raise ConfigError(f"{where}: signer_timeout must be a positive number of seconds")
    cpu = doc.get("cpu")
    if cpu is not None and (not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0):
        raise ConfigError(f"{where}: cpu must be a non-negative integer")
    try:
        # Any: bump_on_reorg goes through as TOML gave it; the amounts are checked by _wei.
        fee_args: dict[str, Any] = {
            k: _wei(v, f"{where} [fees] {k}") if k != "bump_on_reorg" else v
            for k, v in fees_doc.items()
        }
        fees = FeePolicy(**fee_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where} [fees]: {e}") from e
    attestation = None
    if "attestation" in doc:
        att = _table(doc, "attestation", where)
        _no_unknown(att, _ATTEST, f"{where} [attestation]")
        base = p.parent
        indices = att.get("pcrs")
        if indices is not None and not (
            isinstance(indices, list) and indices
            and all(isinstance(i, int) and 0 <= i < 32 for i in indices)
        ):
            raise ConfigError(f"{where} [attestation]: pcrs must be a list of indices 0..31")
        max_age = att.get("max_age_seconds", 300)
        if not isinstance(max_age, int | float) or isinstance(max_age, bool) or max_age <= 0:
            raise ConfigError(f"{where} [attestation]: max_age_seconds must be positive")
        attestation = AttestationPolicy.from_files(
            base / _str(att, "measurements", f"{where} [attestation]"),
            root=None if "root" not in att else base / _str(att, "root", f"{where} [attestation]"),
            indices=indices,
            max_age_seconds=float(max_age),
        )
    return RunConfig(
        chain_id=_int(doc, "chain_id", where),
        signer=_str(doc, "signer", where),
        listen=listen,
        sender=sender,
        rpc=tuple(rpc),
        ws=tuple(ws),
        cpu=cpu,
        fees=fees,
        tuning=dict(router_doc),
        attestation=attestation,
        signer_timeout=float(signer_timeout),
        journal=journal,
        journal_sync=journal_sync,
        journal_lease_seconds=float(lease),
        gateway=gateway,
        metrics=metrics,
    )


def _no_unknown(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return v


def _listen(doc: dict[str, Any], key: str, where: str, *, example: str) -> ListenAddress | None:
    """An optional local service address (`gateway`, `metrics`) and its `<key>_allow_remote`."""
    allow_remote = doc.get(f"{key}_allow_remote", False)
    if not isinstance(allow_remote, bool):
        raise ConfigError(f"{where}: {key}_allow_remote must be true or false")
    if key not in doc:
        return None
    try:
        return parse_listen(doc[key], service=key, allow_remote=allow_remote, example=example)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _str(doc: dict[str, Any], key: str, where: str) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: {key} is required and must be a string")
    return v


def _int(doc: dict[str, Any], key: str, where: str) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{where}: {key} is required and must be a positive integer")
    return v


def _wei(v: object, where: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{where}: expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    raise ConfigError(f"{where}: expected an integer or a decimal string, got {v!r:.40}")
