"""The signing policy: one test per rule, the file schema, and the shipped policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from signer_support import DEV_POLICY, dev_key

from enclave.errors import PolicyDenied, PolicyFileError, RateLimited
from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import DEFAULT_POLICY, Policy, RateLimiter, load_policy
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx

TOKEN = "0x" + "a0" * 20
ROUTER = "0x" + "b1" * 20
TRANSFER = bytes.fromhex("a9059cbb")

BASE = f"""
schema = 1
mode = "production"
chain_ids = [1, 10]
max_value = "5000000000000000000"
max_fee_per_gas = 300000000000
max_gas = 500000

[rate_limit]
per_second = 10
burst = 2

[[destinations]]
address = "{TOKEN}"
selectors = ["0xa9059cbb", "0x095ea7b3"]

[[destinations]]
address = "{ROUTER}"
"""

POLICY = Policy.from_toml(BASE)
OK = UnsignedTx(
    TX_EIP1559, 1, 0, 60000, bytes.fromhex(TOKEN[2:]), 0, TRANSFER + bytes(64), 10**11, 10**9
)


def test_allowed_transaction_passes() -> None:
    POLICY.check_tx(OK)
    POLICY.check_tx(OK._replace(to=bytes.fromhex(ROUTER[2:]), data=b"", value=5 * 10**18))


@pytest.mark.parametrize(
    "tx,rule",
    [
        (OK._replace(chain_id=5), "chain_ids"),
        (OK._replace(to=None), "allow_create"),
        (OK._replace(to=b"\x33" * 20), "destinations"),
        (OK._replace(data=bytes.fromhex("23b872dd") + bytes(96)), "selectors"),
        (OK._replace(data=b""), "selectors"),
        (OK._replace(data=b"\xa9\x05"), "selectors"),
        (OK._replace(to=bytes.fromhex(ROUTER[2:]), value=5 * 10**18 + 1), "max_value"),
        (OK._replace(max_fee_per_gas=3 * 10**11 + 1), "max_fee_per_gas"),
        (OK._replace(tx_type=TX_LEGACY, max_fee_per_gas=3 * 10**11 + 1, max_priority_fee_per_gas=0),
         "max_fee_per_gas"),
        (OK._replace(gas=500001), "max_gas"),
    ],
    ids=["chain", "create", "destination", "selector", "no-calldata", "short-calldata", "value",
         "fee-1559", "fee-legacy", "gas"],
)  # fmt: skip
def test_each_rule_denies(tx: UnsignedTx, rule: str) -> None:
    with pytest.raises(PolicyDenied, match=f"policy {rule}:") as info:
        POLICY.check_tx(tx)
    assert info.value.rule == rule


def test_limits_are_inclusive() -> None:
    POLICY.check_tx(OK._replace(gas=500000, max_fee_per_gas=3 * 10**11))


def test_sign_digest_rule() -> None:
    with pytest.raises(PolicyDenied, match="sign_digest"):
        POLICY.check_digest()
    Policy.from_toml(
        BASE.replace("max_gas = 500000", "max_gas = 500000\nsign_digest = true").replace(
            'mode = "production"', 'mode = "development"'
        )
    ).check_digest()


def test_production_refuses_dev_keys() -> None:
    with pytest.raises(PolicyDenied, match="key_origin"):
        POLICY.check_key(dev_key())
    POLICY.check_key(SigningKey(b"\x01" * 32, origin=KeyOrigin.KMS))
    load_policy(DEV_POLICY).check_key(dev_key())


def test_create_and_any_destination_in_development() -> None:
    dev = load_policy(DEV_POLICY)
    dev.check_tx(OK._replace(chain_id=31337, to=None))
    dev.check_tx(OK._replace(chain_id=31337, to=b"\x44" * 20, data=b"\x01"))
    with pytest.raises(PolicyDenied, match="chain_ids"):
        dev.check_tx(OK)


def test_rate_limit_token_bucket() -> None:
    t0 = 10**12
    limiter = RateLimiter(per_second=10, burst=2, now_ns=t0)
    limiter.take(t0)
    limiter.take(t0)
    with pytest.raises(RateLimited, match="retry later") as info:
        limiter.take(t0)
    assert info.value.rule == "rate_limit"
    limiter.take(t0 + 100_000_000)  # 0.1 s later: one token refilled
    with pytest.raises(RateLimited):
        limiter.take(t0 + 100_000_001)
    with pytest.raises(RateLimited):
        limiter.take(t0 - 5)  # a stale clock read (another thread was later) refills nothing
    limiter.take(t0 + 10**10)  # refill is capped at the burst
    limiter.take(t0 + 10**10)
    with pytest.raises(RateLimited):
        limiter.take(t0 + 10**10)


def test_shipped_policies_load() -> None:
    prod = load_policy(DEFAULT_POLICY)
    assert prod.mode == "production" and not prod.sign_digest and not prod.any_destination
    assert load_policy(DEV_POLICY).mode == "development"


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


@pytest.mark.parametrize(
    "text,match",
    [
        ("schema = ", "not TOML"),
        (_edit("max_gas = 500000", "max_gas = 500000\nmax_gass = 1"), r"unknown keys \['max_gass'\]"),
        (_edit("max_gas = 500000", ""), r"missing keys \['max_gas'\]"),
        (_edit("schema = 1", "schema = 2"), "schema 2"),
        (_edit('mode = "production"', 'mode = "prod"'), "mode must be"),
        (_edit("chain_ids = [1, 10]", "chain_ids = []"), "non-empty"),
        (_edit("chain_ids = [1, 10]", "chain_ids = [0]"), "chain id 0"),
        (_edit("chain_ids = [1, 10]", "chain_ids = [true]"), "boolean"),
        (_edit('max_value = "5000000000000000000"', 'max_value = "5e18"'), "decimal integer"),
        (_edit('max_value = "5000000000000000000"', "max_value = -1"), "must be in"),
        (_edit("max_gas = 500000", "max_gas = 500000\nany_destination = true"), "development policies only"),
        (_edit("max_gas = 500000", "max_gas = 500000\nsign_digest = 1"), "true or false"),
        (_edit("burst = 2", "burst = 0"), "at least 1"),
        (_edit("per_second = 10", "per_second = 0"), "positive number"),
        (_edit("per_second = 10", "per_sec = 10"), "exactly per_second and burst"),
        (_edit(f'address = "{TOKEN}"', 'address = "0x1234"'), "40 hex digits"),
        (_edit(f'address = "{ROUTER}"', f'address = "{TOKEN}"'), "listed twice"),
        (_edit('selectors = ["0xa9059cbb", "0x095ea7b3"]', "selectors = []"), "non-empty list"),
        (_edit('selectors = ["0xa9059cbb", "0x095ea7b3"]', 'selectors = ["0xzz059cbb"]'), "8 hex digits"),
        (_edit(f'address = "{ROUTER}"', f'address = "{ROUTER}"\nlabel = "x"'), "address and optional selectors"),
    ],
    ids=["not-toml", "unknown", "missing", "schema", "mode", "no-chains", "chain-0", "bool-chain",
         "float-value", "negative", "any-dest-prod", "bool-type", "burst", "rate", "rate-keys",
         "short-address", "duplicate", "empty-selectors", "bad-selector", "extra-dest-key"],
)  # fmt: skip
def test_policy_file_errors(text: str, match: str) -> None:
    with pytest.raises(PolicyFileError, match=match):
        Policy.from_toml(text)


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyFileError, match="not UTF-8"):
        load_policy(bad)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(PolicyFileError, match="larger than"):
        load_policy(big)
