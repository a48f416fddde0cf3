"""When the router is ready to take intents (/readyz): every check passes.

- `started`: `Router.start()` finished (chain checked, journal recovered, heads followed).
- `journal`: this router holds the journal's lease (not fenced by another router, lease not run
  out): without it the router refuses to sign.
- `signer`: the signer answered its last exchange. Every signing call and the exporter's STATS
  poll (every `stats_interval` s) is an exchange; a transport failure opens the signer breaker
  (`signer_cooldown`) and makes the router not ready until an exchange succeeds again, so
  readiness returns within one poll interval of the signer's return. A refusal by the policy is an
  answer (ready). While the breaker is open the router is not ready either (a signing call fails
  fast then), even if no exchange has been tried since.
- `endpoints`: at least one RPC endpoint answers (the router broadcasts through them).
- `head`: a head arrived within `head_max_age` seconds (default 60: several missed blocks on
  any chain with blocks every few seconds; raise it for slower chains). A router whose head source
  is gone cannot see its transactions land or be reorged out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core import Router

__all__ = ["Readiness", "check_readiness"]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    #: One short sentence per failed check (empty when ready).
    reasons: list[str] = field(default_factory=list)
    #: Each check by name: True when it passes.
    checks: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"ready": self.ready, "checks": self.checks, "reasons": self.reasons}


def check_readiness(router: Router, *, head_max_age: float) -> Readiness:
    reasons: list[str] = []
    checks: dict[str, bool] = {}

    def check(name: str, ok: bool, why: str) -> None:
        checks[name] = ok
        if not ok:
            reasons.append(why)

    check("started", router.started, "router not started")
    check("journal", not router.fenced and router.journal.lease_remaining() > 0,
          "journal lease not held (another router owns this sender, or renewal is late)")
    signer = router.signer
    signer_ok = signer.up is not False and signer.available
    check("signer", signer_ok, "signer unreachable" + (
        f" ({signer.down_reason})" if signer.down_reason else ""))
    down = len(router.endpoint_errors)
    check("endpoints", down < len(router.rpcs), f"none of the {len(router.rpcs)} RPC endpoints "
          "answers")
    last = router.last_head_ns
    age = None if last is None else (time.perf_counter_ns() - last) / 1e9
    check("head", age is not None and age <= head_max_age,
          "no head received yet" if age is None
          else f"no head for {age:.1f} s (limit {head_max_age:g} s)")
    return Readiness(not reasons, reasons, checks)
