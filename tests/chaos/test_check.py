"""The judge of a chaos run, on hand-written blocks: each finding is classified as what it is.

(The chaos run itself, against real processes, is test_chaos.py; these check the bookkeeping
that turns a chain and STATUS answers into counts, so a wrong count cannot hide a finding.)
"""

from __future__ import annotations

import pytest

from .__main__ import main
from .check import Seen, judge, scan_chain
from .harness import ChaosConfig, intents_for, plan_faults

SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
OTHER = "0x70997970C51812dc3A010C7d01b50e0d4c7dc79C"


def _tx(nonce: int, to: str, value: int, sender: str = SENDER) -> dict[str, str]:
    return {"from": sender.lower(), "to": to, "value": hex(value), "nonce": hex(nonce),
            "hash": "0x" + f"{nonce:02x}{value % 256:02x}".ljust(64, "0")}


def _chain(blocks: list[list[dict[str, str]]]) -> object:
    def rpc(method: str, *params: object) -> object:
        if method == "eth_blockNumber":
            return hex(len(blocks) - 1)
        assert method == "eth_getBlockByNumber"
        return {"transactions": blocks[int(str(params[0]), 16)]}
    return rpc


def test_every_kind_of_finding_is_counted_as_itself() -> None:
    it = intents_for(7, 8)
    to = ["0x" + i.to.hex() for i in it]
    blocks = [
        [],
        [_tx(0, to[0], it[0].value), _tx(1, to[1], it[1].value), _tx(0, SENDER, 0, OTHER)],
        [_tx(2, to[1], it[1].value), _tx(3, SENDER.lower(), 0), _tx(4, to[3], it[3].value),
         _tx(5, to[6], it[6].value)],
    ]
    scan = scan_chain(_chain(blocks), SENDER, it)  # type: ignore[arg-type]
    seen = {
        it[0].id: Seen("landed", bytes.fromhex(blocks[1][0]["hash"][2:])),
        it[1].id: Seen("landed"),  # on chain twice: a duplicate
        it[2].id: Seen("unknown"),  # not on chain, router forgot it: lost
        it[3].id: Seen("pending"),  # on chain but the router still says pending: stalled
        it[4].id: Seen("landed"),  # not on chain: a phantom, lost and mismatched
        it[5].id: Seen("failed", reason=None),  # failed, no reason: unexplained
        it[6].id: Seen("cancelled", reason="cancelled"),  # "cancelled" yet on chain: mismatched
        it[7].id: Seen("replaced", reason="replaced"),  # an honest terminal non-landed state
    }
    v = judge(it, scan, seen)
    assert (v.landed, v.duplicates, v.lost, v.stalled) == (4, 1, 2, 1)
    assert (v.unknown_status, v.mismatched, v.unexplained, v.not_landed) == (1, 2, 1, 2)
    assert (v.fillers, v.foreign, v.nonce_gap) == (1, 0, False)
    assert any(it[1].id in e and "2 times" in e for e in v.examples)
    assert v.examples[0].startswith((it[1].id, it[2].id, it[4].id))  # worst first


def test_a_hole_in_the_senders_nonces_is_reported() -> None:
    it = intents_for(1, 2)
    blocks = [[_tx(0, "0x" + it[0].to.hex(), it[0].value)],
              [_tx(2, "0x" + it[1].to.hex(), it[1].value)]]
    v = judge(it, scan_chain(_chain(blocks), SENDER, it),  # type: ignore[arg-type]
              {i.id: Seen("landed") for i in it})
    assert v.nonce_gap and "0..k" in v.examples[0]


def test_a_transaction_with_the_wrong_value_is_not_taken_for_the_intent() -> None:
    it = intents_for(1, 1)
    blocks = [[_tx(0, "0x" + it[0].to.hex(), it[0].value + 1)]]
    scan = scan_chain(_chain(blocks), SENDER, it)  # type: ignore[arg-type]
    assert scan.by_intent == {} and scan.foreign == 1


def test_plan_is_seeded_spread_and_within_bounds() -> None:
    cfg = ChaosConfig(seed=5)
    plan = plan_faults(cfg)
    assert plan == plan_faults(ChaosConfig(seed=5)) != plan_faults(ChaosConfig(seed=6))
    assert len(plan) == cfg.router_kills + cfg.signer_kills + cfg.anvil_kills + cfg.reorgs
    assert [f.at for f in plan] == sorted(f.at for f in plan)
    assert all(0 < f.at < cfg.stream_seconds for f in plan)
    assert all(1 <= f.depth <= 5 for f in plan if f.kind == "reorg")
    assert len({i.to for i in intents_for(5, 200)}) == 200


@pytest.mark.parametrize("bad", [dict(intents=0), dict(stream_seconds=0.0), dict(reorgs=-1),
                                 dict(max_reorg_depth=0)])
def test_impossible_configuration_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ChaosConfig(seed=1, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--intents", "0"], ["--runs", "x"]])
def test_cli_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
