"""The signing policy: a TOML file baked into the image (so PCR2 covers it) and checked before every
signature. A denied request is never signed; it gets a `PolicyDenied` naming the rule.

Schema (every key is required unless marked optional; unknown keys are an error, so a typo cannot
silently loosen or tighten a rule)::

    schema = 1
    mode = "production"            # or "development"; production refuses development keys
    chain_ids = [1]                # allowed EIP-155 chain ids (non-empty)
    max_value = "5000000000000000000"      # wei; integer or decimal string (TOML ints stop at 2**63)
    max_fee_per_gas = "300000000000"       # wei; caps maxFeePerGas, and gasPrice for legacy txs
    max_gas = 3000000
    sign_digest = false            # optional: development only; allow SIGN_DIGEST (raw digests
                                   # bypass every transaction rule)
    allow_create = false           # optional: allow contract creation (no `to`)
    any_destination = false        # optional: development only; skips the destination list
    presign_pool = 1024            # optional: presignatures kept ready (0, the default: off, every
                                   # signature is RFC 6979); at most 65536 (enclave/presign.py)
    signer_address = "0x..."       # optional: the only key this signer may load (20-byte hex);
                                   # refuses a key from a tampered KMS envelope (PROTOCOL.md)

Numbers are finite, and positive where a rate is meant; hex is exactly `0x` and the stated number of
ASCII hex digits, nothing else (no spaces, signs or underscores, which `bytes.fromhex` or `int` accept).

    [rate_limit]                   # token bucket over all signing operations
    per_second = 50
    burst = 100

    [[destinations]]               # optional, repeatable
    address = "0x..."              # 20-byte hex
    selectors = ["0xa9059cbb"]     # optional: calldata must start with one of these 4-byte selectors
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from enclave.errors import PolicyDenied, PolicyFileError, RateLimited
from enclave.keys import KeyOrigin, SigningKey
from enclave.presign import MAX_POOL
from enclave.tx import UINT256_MAX, UnsignedTx

__all__ = ["DEFAULT_POLICY", "Destination", "Policy", "RateLimiter", "load_policy"]

_monotonic_ns = time.monotonic_ns

#: The production policy shipped inside the package (and so inside the EIF).
DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
_MAX_POLICY_FILE = 1 << 20

_TOP_KEYS = {
    "schema", "mode", "chain_ids", "max_value", "max_fee_per_gas", "max_gas", "sign_digest",
    "allow_create", "any_destination", "rate_limit", "destinations", "presign_pool",
    "signer_address",
}  # fmt: skip
_REQUIRED = {"schema", "mode", "chain_ids", "max_value", "max_fee_per_gas", "max_gas", "rate_limit"}


@dataclass(frozen=True)
class Destination:
    """An allowed `to` address; `selectors` None means any calldata (including none)."""

    address: bytes
    selectors: frozenset[bytes] | None = None


@dataclass(frozen=True)
class Policy:
    """A parsed policy; build it with `load_policy` / `Policy.from_toml`."""

    mode: Literal["production", "development"]
    chain_ids: frozenset[int]
    max_value: int
    max_fee_per_gas: int
    max_gas: int
    rate_per_second: float
    rate_burst: int
    destinations: Mapping[bytes, Destination] = field(default_factory=dict)
    sign_digest: bool = False
    allow_create: bool = False
    any_destination: bool = False
    #: Presignatures kept ready (0: off, deterministic RFC 6979 signatures only).
    presign_pool: int = 0
    #: The 20-byte address of the only key this policy signs with, or None (any key of the mode).
    signer_address: bytes | None = None

    @classmethod
    def from_toml(cls, text: str | bytes, *, source: str = "policy") -> Policy:
        """Parse and validate a policy document.

        Raises:
            PolicyFileError: not TOML, unknown/missing keys, wrong types, out-of-range values.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyFileError(f"{source}: not UTF-8") from None
        try:
            doc = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as e:
            # ValueError: tomllib refuses integer literals past Python's int/str digit limit
            raise PolicyFileError(f"{source}: not TOML ({_show(str(e))})") from e
        return _parse(doc, source)

    def check_key(self, key: SigningKey) -> None:
        """Refuse keys this policy may not sign with (production: no development keys).

        Raises:
            PolicyDenied: rule `key_origin`, or `signer_address` (not the pinned key).
        """
        if self.mode == "production" and key.origin is KeyOrigin.DEV:
            raise PolicyDenied(
                "key_origin", "a production policy refuses development keys (use the KMS key)"
            )
        pinned = self.signer_address
        if pinned is not None and key.address_bytes != pinned:
            raise PolicyDenied(
                "signer_address", f"key {key.address} is not the pinned signer 0x{pinned.hex()}"
            )

    def check_digest(self) -> None:
        """Raises PolicyDenied (rule `sign_digest`) unless raw digest signing is enabled."""
        if not self.sign_digest:
            raise PolicyDenied("sign_digest", "raw digest signing is disabled by this policy")

    def check_tx(self, tx: UnsignedTx) -> None:
        """Check every transaction rule; the first failing rule is raised.

        Raises:
            PolicyDenied: rule named in the message (chain_ids, allow_create, destinations,
                selectors, max_value, max_fee_per_gas, max_gas).
        """
        if tx.chain_id not in self.chain_ids:
            raise PolicyDenied(
                "chain_ids",
                f"chain id {tx.chain_id} not allowed (allowed: {sorted(self.chain_ids)})",
            )
        if tx.to is None:
            if not self.allow_create:
                raise PolicyDenied("allow_create", "contract creation is not allowed")
        elif not self.any_destination:
            dest = self.destinations.get(tx.to)
            if dest is None:
                raise PolicyDenied("destinations", f"destination 0x{tx.to.hex()} is not allowed")
            if dest.selectors is not None and bytes(tx.data[:4]) not in dest.selectors:
                got = "no calldata" if not tx.data else f"selector 0x{bytes(tx.data[:4]).hex()}"
                raise PolicyDenied(
                    "selectors", f"{got} not allowed for destination 0x{tx.to.hex()}"
                )
        if tx.value > self.max_value:
            raise PolicyDenied("max_value", f"value {tx.value} wei above {self.max_value}")
        if tx.max_fee_per_gas > self.max_fee_per_gas:
            raise PolicyDenied(
                "max_fee_per_gas",
                f"fee per gas {tx.max_fee_per_gas} wei above {self.max_fee_per_gas}",
            )
        if tx.gas > self.max_gas:
            raise PolicyDenied("max_gas", f"gas {tx.gas} above {self.max_gas}")


def load_policy(path: str | os.PathLike[str] = DEFAULT_POLICY) -> Policy:
    """Read and parse a policy file.

    Raises:
        PolicyFileError: unreadable, too large, or invalid (see `Policy.from_toml`).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(_MAX_POLICY_FILE + 1)
    except OSError as e:
        raise PolicyFileError(f"policy file {p}: cannot read ({e.strerror or e})") from e
    if len(raw) > _MAX_POLICY_FILE:
        raise PolicyFileError(f"policy file {p}: larger than {_MAX_POLICY_FILE} bytes")
    return Policy.from_toml(raw, source=f"policy file {p}")


class RateLimiter:
    """Token bucket shared by every connection; time is injected for tests (`now_ns`)."""

    def __init__(self, per_second: float, burst: int, *, now_ns: int | None = None) -> None:
        self._rate = per_second / 1e9  # tokens per nanosecond
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic_ns() if now_ns is None else now_ns
        self._lock = threading.Lock()

    def take(self, now_ns: int | None = None) -> None:
        """Consume one token (on the signing hot path: plain comparisons, one lock round).

        Raises:
            RateLimited: the bucket is empty.
        """
        now = _monotonic_ns() if now_ns is None else now_ns
        lock = self._lock
        lock.acquire()
        try:
            tokens = self._tokens
            elapsed = now - self._last
            if elapsed > 0:  # a clock read older than another thread's update refills nothing
                tokens += elapsed * self._rate
                if tokens > self._burst:
                    tokens = self._burst
                self._last = now
            if tokens < 1.0:
                self._tokens = tokens
                raise RateLimited(
                    f"more than {self._rate * 1e9:g}/s (burst {self._burst:g}); retry later"
                )
            self._tokens = tokens - 1.0
        finally:
            lock.release()


# --- parsing ----------------------------------------------------------------------------------------


def _err(source: str, message: str) -> PolicyFileError:
    return PolicyFileError(f"{source}: {message}")


def _show(v: Any) -> str:
    """A value for an error message: bounded, and never a conversion that can itself fail (an
    integer past Python's int/str digit limit cannot be printed in decimal)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 256:
        return f"an integer of {v.bit_length()} bits"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _uint(source: str, name: str, v: Any, *, limit: int = UINT256_MAX) -> int:
    if isinstance(v, bool):
        raise _err(source, f"{name} must be an integer (got a boolean)")
    if isinstance(v, str):
        if not v.isdecimal() or not v.isascii():
            raise _err(source, f"{name} must be a decimal integer (got {_show(v)})")
        if len(v) > len(str(limit)):  # before int(): no conversion of thousands of digits
            raise _err(source, f"{name} must be in 0..{limit} (got {len(v)} digits)")
        v = int(v)
    if not isinstance(v, int):
        raise _err(source, f"{name} must be an integer (got {type(v).__name__})")
    if not 0 <= v <= limit:
        raise _err(source, f"{name} must be in 0..{limit} (got {_show(v)})")
    return v


def _bool(source: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _err(source, f"{name} must be true or false (got {type(v).__name__})")
    return v


_HEX = re.compile(r"0[xX]([0-9a-fA-F]*)")


def _hex_bytes(source: str, name: str, v: Any, size: int) -> bytes:
    # fullmatch on an ASCII class: bytes.fromhex alone skips whitespace, which turned "0x" and
    # eight spaces into an empty selector and a padded address into a 19-byte one.
    m = _HEX.fullmatch(v) if isinstance(v, str) else None
    if m is None or len(m.group(1)) != 2 * size:
        raise _err(source, f"{name} must be 0x followed by {2 * size} hex digits (got {_show(v)})")
    out = bytes.fromhex(m.group(1))
    if len(out) != size:  # the pattern makes this impossible; a short entry would never match
        raise _err(source, f"{name} must be {size} bytes (got {len(out)})")
    return out


def _parse(doc: dict[str, Any], source: str) -> Policy:
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _err(source, f"unknown keys {unknown}")
    missing = sorted(_REQUIRED - set(doc))
    if missing:
        raise _err(source, f"missing keys {missing}")
    if doc["schema"] != 1 or isinstance(doc["schema"], bool):
        raise _err(source, f"schema {_show(doc['schema'])} (supported: 1)")
    mode = doc["mode"]
    if mode not in ("production", "development"):
        raise _err(source, f"mode must be 'production' or 'development' (got {_show(mode)})")
    chain_ids = doc["chain_ids"]
    if not isinstance(chain_ids, list) or not chain_ids:
        raise _err(source, "chain_ids must be a non-empty list of integers")
    chains = frozenset(_uint(source, "chain_ids[]", c, limit=(1 << 64) - 1) for c in chain_ids)
    if 0 in chains:
        raise _err(source, "chain id 0 is not a chain (EIP-155)")
    rate = doc["rate_limit"]
    if not isinstance(rate, dict) or set(rate) != {"per_second", "burst"}:
        raise _err(source, "[rate_limit] must have exactly per_second and burst")
    per_second = rate["per_second"]
    # nan compares false with everything and inf never runs dry: either turned the limit off.
    if (
        isinstance(per_second, bool)
        or not isinstance(per_second, int | float)
        or not math.isfinite(per_second)
        or per_second <= 0
    ):
        raise _err(
            source, f"rate_limit.per_second must be a finite positive number (got {_show(per_second)})"
        )
    burst = _uint(source, "rate_limit.burst", rate["burst"], limit=1 << 32)
    if burst < 1:
        raise _err(source, "rate_limit.burst must be at least 1")
    any_destination = _bool(source, "any_destination", doc.get("any_destination", False))
    if mode == "production" and any_destination:
        raise _err(source, "any_destination is for development policies only")
    # A raw digest can be the signing hash of any transaction: allowing it skips every rule above.
    sign_digest = _bool(source, "sign_digest", doc.get("sign_digest", False))
    if mode == "production" and sign_digest:
        raise _err(source, "sign_digest is for development policies only")
    signer_address = None
    if "signer_address" in doc:
        signer_address = _hex_bytes(source, "signer_address", doc["signer_address"], 20)
    destinations: dict[bytes, Destination] = {}
    raw_dests = doc.get("destinations", [])
    if not isinstance(raw_dests, list):
        raise _err(source, "destinations must be an array of tables ([[destinations]])")
    for i, d in enumerate(raw_dests):
        where = f"destinations[{i}]"
        if not isinstance(d, dict) or "address" not in d or set(d) - {"address", "selectors"}:
            raise _err(source, f"{where} must have address and optional selectors only")
        address = _hex_bytes(source, f"{where}.address", d["address"], 20)
        if address in destinations:
            raise _err(source, f"{where}.address 0x{address.hex()} listed twice")
        selectors = None
        if "selectors" in d:
            if not isinstance(d["selectors"], list) or not d["selectors"]:
                raise _err(source, f"{where}.selectors must be a non-empty list (omit it for any)")
            selectors = frozenset(
                _hex_bytes(source, f"{where}.selectors[]", s, 4) for s in d["selectors"]
            )
        destinations[address] = Destination(address, selectors)
    return Policy(
        mode=mode,
        chain_ids=chains,
        max_value=_uint(source, "max_value", doc["max_value"]),
        max_fee_per_gas=_uint(source, "max_fee_per_gas", doc["max_fee_per_gas"]),
        max_gas=_uint(source, "max_gas", doc["max_gas"], limit=(1 << 64) - 1),
        rate_per_second=float(per_second),
        rate_burst=burst,
        destinations=destinations,
        sign_digest=sign_digest,
        allow_create=_bool(source, "allow_create", doc.get("allow_create", False)),
        any_destination=any_destination,
        presign_pool=_presign_pool(source, doc.get("presign_pool", 0)),
        signer_address=signer_address,
    )


def _presign_pool(source: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(source, f"presign_pool must be an integer (got {type(v).__name__})")
    if not 0 <= v <= MAX_POOL:
        raise _err(source, f"presign_pool must be in 0..{MAX_POOL} (0 = off; got {_show(v)})")
    return v
