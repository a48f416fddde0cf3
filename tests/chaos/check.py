"""The invariants, judged from the chain itself (JSON-RPC), with the router's STATUS beside it.

Every intent is distinguishable on chain by its destination (one address per intent); the
router's own zero-value self-transfers (gap fillers, cancels) are counted apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from router.intent import Intent

LANDED = "landed"
PENDING = "pending"
#: Terminal states other than landed: the intent will not land and the bot is told so.
TERMINAL_NOT_LANDED = frozenset({"failed", "replaced", "cancelled"})
#: STATUS answered "no intent with id": the router does not know the intent (forgot it).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class OnChain:
    """One of the sender's transactions in the canonical chain."""

    block_number: int
    tx_hash: bytes
    nonce: int


@dataclass(frozen=True)
class Seen:
    """What the router says about one intent: its STATUS state, and for a terminal non-landed
    one the reason it gives (None if it gives none)."""

    state: str
    tx_hash: bytes | None = None
    reason: str | None = None


@dataclass
class ChainScan:
    """The sender's transactions in the canonical chain, sorted out."""

    by_intent: dict[str, list[OnChain]] = field(default_factory=dict)
    fillers: int = 0  # zero-value transfers to the sender itself
    foreign: int = 0  # the sender's transactions that match no intent and are no filler
    nonces: list[int] = field(default_factory=list)
    tip: int = 0


def scan_chain(rpc: Callable[..., object], sender: str, intents: Sequence[Intent]) -> ChainScan:
    """Read every canonical block (0..tip) and map the sender's transactions to intents.

    Raises:
        ValueError: the node answered something that is not a block.
    """
    by_to = {"0x" + i.to.hex(): i for i in intents}
    sender_l = sender.lower()
    out = ChainScan()
    out.tip = int(str(rpc("eth_blockNumber")), 16)
    for n in range(out.tip + 1):
        block = rpc("eth_getBlockByNumber", hex(n), True)
        if not isinstance(block, dict):
            raise ValueError(f"block {n}: not a block ({block!r:.60})")
        for tx in block["transactions"]:
            if str(tx["from"]).lower() != sender_l:
                continue
            nonce = int(tx["nonce"], 16)
            out.nonces.append(nonce)
            to = str(tx.get("to") or "").lower()
            value = int(tx["value"], 16)
            intent = by_to.get(to)
            if intent is not None and value == intent.value:
                out.by_intent.setdefault(intent.id, []).append(
                    OnChain(n, bytes.fromhex(tx["hash"][2:]), nonce))
            elif to == sender_l and value == 0:
                out.fillers += 1
            else:
                out.foreign += 1
    return out


@dataclass
class Verdict:
    """Counts over all intents; `examples` names the first offending intents."""

    intents: int = 0
    landed: int = 0  # on chain (exactly once or more)
    not_landed: int = 0  # terminal non-landed per STATUS and not on chain, with a reason
    duplicates: int = 0  # on chain more than once
    lost: int = 0  # not on chain and no terminal non-landed state (incl. "landed" phantoms)
    stalled: int = 0  # STATUS pending after quiescence
    unknown_status: int = 0  # STATUS "no intent with id"
    mismatched: int = 0  # STATUS contradicts the chain (landed elsewhere, "failed" but on chain)
    unexplained: int = 0  # "failed" without a reason
    states: Counter[str] = field(default_factory=Counter)
    fillers: int = 0
    foreign: int = 0
    nonce_gap: bool = False
    examples: list[str] = field(default_factory=list)
    _notes: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def _note(self, text: str, rank: int) -> None:
        """Keep the 12 worst findings (rank 0 worst), in intent order within a rank."""
        self._notes.append((rank, text))
        self.examples = [t for _, t in sorted(self._notes, key=lambda n: n[0])[:12]]


def judge(intents: Sequence[Intent], scan: ChainScan, seen: Mapping[str, Seen]) -> Verdict:
    """Classify each intent by the chain and by what the router says about it."""
    v = Verdict(intents=len(intents), fillers=scan.fillers, foreign=scan.foreign)
    v.nonce_gap = sorted(scan.nonces) != list(range(len(scan.nonces)))
    if v.nonce_gap:
        v._note(f"sender nonces on chain are not 0..k: {sorted(scan.nonces)[:20]}", 0)
    for intent in intents:
        hits = scan.by_intent.get(intent.id, [])
        s = seen.get(intent.id, Seen(UNKNOWN))
        v.states[s.state] += 1
        where = ", ".join(f"block {h.block_number} nonce {h.nonce}" for h in hits) or "not on chain"
        if hits:
            v.landed += 1
        if len(hits) > 1:
            v.duplicates += 1
            v._note(f"{intent.id}: on chain {len(hits)} times ({where}); STATUS {s.state}", 0)
        if s.state == PENDING:
            v.stalled += 1
            v._note(f"{intent.id}: STATUS pending after quiescence ({where})", 1)
        elif s.state == UNKNOWN:
            v.unknown_status += 1
            if not hits:
                v.lost += 1
                v._note(f"{intent.id}: lost (not on chain, router does not know the id)", 0)
            else:
                v._note(f"{intent.id}: {where}, but STATUS has no intent with that id", 3)
        elif s.state == LANDED:
            if not hits:
                v.lost += 1
                v.mismatched += 1
                v._note(f"{intent.id}: STATUS landed, but not on the canonical chain", 0)
            elif s.tx_hash is not None and all(h.tx_hash != s.tx_hash for h in hits):
                v.mismatched += 1
                v._note(f"{intent.id}: STATUS landed with a transaction the chain does not hold "
                        f"({where})", 1)
        elif s.state in TERMINAL_NOT_LANDED:
            if hits:
                v.mismatched += 1
                v._note(f"{intent.id}: STATUS {s.state}, but on chain ({where})", 1)
            else:
                v.not_landed += 1
                if s.state == "failed" and not s.reason:
                    v.unexplained += 1
                    v._note(f"{intent.id}: STATUS failed without a reason", 2)
        else:
            v.mismatched += 1
            v._note(f"{intent.id}: STATUS answered {s.state!r}", 1)
            if not hits:
                v.lost += 1
    return v
