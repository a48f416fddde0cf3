"""ChainView / HeadTracker logic on synthetic headers: extension, duplicates, gaps, reorgs of any
depth with and without missed heads, side branches, and headers contradicting their parent."""

from __future__ import annotations

import asyncio

import pytest

from router.errors import MalformedHeader, ReorgTooDeep
from router.fees import FeePolicy, Fees
from router.heads import ChainView, Header, HeadTracker, NeedParent, parse_header


def h(number: int, branch: int = 0, parent_branch: int | None = None, ts: int | None = None) -> Header:
    pb = branch if parent_branch is None else parent_branch
    return Header(number, _hash(number, branch), _hash(number - 1, pb) if number else bytes(32),
                  1000 + number if ts is None else ts, 30_000_000, 21_000, 10**9)


def _hash(number: int, branch: int) -> bytes:
    return number.to_bytes(8, "big") + branch.to_bytes(8, "big") + b"\x42" * 16


def chain(n: int) -> ChainView:
    view = ChainView(depth=16)
    view.reset(h(0))
    for i in range(1, n + 1):
        view.ingest(h(i))
    return view


def test_extension_and_duplicates() -> None:
    view = chain(5)
    assert view.tip == h(5)
    up = view.ingest(h(6))
    assert up is not None and not isinstance(up, NeedParent)
    assert up.added == (h(6),) and not up.is_reorg
    assert view.ingest(h(6)) is None  # duplicate of the tip
    assert view.ingest(h(3)) is None  # an old canonical head re-sent after a reconnect
    assert view.tip == h(6)


def test_reorg_with_known_parent_is_decided_without_fetching() -> None:
    view = chain(5)
    # new block 5 on top of our block 4: depth-1 reorg
    up = view.ingest(h(5, branch=1, parent_branch=0))
    assert not isinstance(up, NeedParent) and up is not None
    assert up.removed == (h(5),) and up.added == (h(5, 1, 0),) and up.ancestor == h(4)
    assert view.is_canonical(_hash(5, 1)) and not view.is_canonical(_hash(5, 0))


def test_gap_and_deep_reorg_resolved_by_fetching_ancestors() -> None:
    view = chain(10)
    side = {x.hash: x for x in [h(8, 1, 0)] + [h(i, 1) for i in range(9, 14)]}
    fetched: list[int] = []

    async def fetch(block_hash: bytes) -> Header | None:
        fetched.append(side[block_hash].number)
        return side[block_hash]

    # we missed 8..12 of the side branch (reorg of depth 3 at 8, plus a gap): head 13 arrives
    up = asyncio.run(HeadTracker(view, fetch).ingest(h(13, 1)))
    assert up is not None
    assert [x.number for x in up.removed] == [8, 9, 10]
    assert [x.number for x in up.added] == [8, 9, 10, 11, 12, 13]
    assert up.ancestor == h(7)
    assert fetched == [12, 11, 10, 9, 8]
    # a plain gap (no reorg): 14..16 missed
    side.update({x.hash: x for x in [h(i, 1) for i in range(14, 17)]})
    up = asyncio.run(HeadTracker(view, fetch).ingest(h(17, 1)))
    assert up is not None and not up.is_reorg and [x.number for x in up.added] == [14, 15, 16, 17]


def test_reorg_deeper_than_the_ring_is_reported() -> None:
    view = chain(40)

    async def fetch(block_hash: bytes) -> Header | None:
        n = int.from_bytes(block_hash[:8], "big")
        return h(n, 1, 1 if n > 1 else 0)

    with pytest.raises(ReorgTooDeep, match="longer than 16|no common ancestor within 16"):
        asyncio.run(HeadTracker(view, fetch).ingest(h(41, 1)))
    assert view.tip == h(40)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        # claims our block 5 as parent but calls itself #8
        (Header(8, _hash(8, 1), _hash(5, 0), 2000, 30_000_000, 0, None), r"is #5 \(expected #7\)"),
        (Header(6, _hash(6, 1), _hash(5, 0), 1, 30_000_000, 0, None), "is before its parent"),
    ],
    ids=["number-skips", "timestamp-backwards"],
)
def test_header_contradicting_its_parent(bad: Header, match: str) -> None:
    view = chain(5)
    with pytest.raises(MalformedHeader, match=match):
        view.ingest(bad)
    assert view.tip == h(5)


BASE = {"number": "0x5", "hash": "0x" + "11" * 32, "parentHash": "0x" + "22" * 32,
        "timestamp": "0x10", "gasLimit": "0x100", "gasUsed": "0x10", "baseFeePerGas": "0x7"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hash": BASE["parentHash"]}, "parentHash equals"),
        ({"gasUsed": "0x101"}, "above gasLimit"),
        ({"number": None}, "header.number"),
        ({"number": "5"}, "header.number"),
        ({"hash": "0x11"}, "header.hash: expected 0x-hex of 32 bytes"),
        ({"timestamp": "0x" + "f" * 17}, "header.timestamp"),
        ({"number": "0x0"}, "genesis header with a non-zero parentHash"),
        ({"baseFeePerGas": "0xg"}, "baseFeePerGas"),
    ],
    ids=["self-parent", "gas-over-limit", "no-number", "decimal-number", "short-hash",
         "timestamp-overflow", "fake-genesis", "bad-basefee"],
)
def test_parse_header_refuses_impossible_fields(change: dict[str, object], match: str) -> None:
    obj = {**BASE, **change}
    with pytest.raises(MalformedHeader, match=match):
        parse_header(obj)


def test_fee_bump_rule() -> None:
    policy = FeePolicy(priority_fee=10**9, max_fee_cap=100 * 10**9, bump_percent=13)
    old = Fees(3 * 10**9, 10**9)
    new = policy.for_resign(10**9, old, replace=True)
    assert new is not None and new.covers(old, 10) and new.covers(old, 13)
    assert new == Fees(3_390_000_000, 1_130_000_000)
    # a base-fee jump dominates the bump
    assert policy.for_resign(40 * 10**9, old, replace=True) == Fees(81 * 10**9, 1_130_000_000)
    # no bump possible under the cap: the caller re-sends the old bytes
    assert policy.for_resign(10**9, Fees(99 * 10**9, 10**9), replace=True) is None
    # ceiling division: never a wei under the node's rule
    odd = Fees(1_000_000_001, 7)
    bumped = policy.bump(odd)
    assert bumped is not None and bumped.covers(odd, 13)
    with pytest.raises(ValueError, match="never replace"):
        FeePolicy(bump_percent=5)
