"""`python -m router watch --router unix:PATH [--id ID] [--json]`: print a running router's intent
events as they happen (its local API's WATCH), one line each; `--json` prints one JSON object a
line (`IntentEvent.to_json()`).

Runs until interrupted (exit 0) or the router ends the stream: exit 1 when the router dropped
events because this reader was too slow (events lost) or the connection broke.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from router.errors import MalformedInput

if TYPE_CHECKING:
    from router.events import IntentEvent


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("watch", help="print a running router's intent events")
    parser.add_argument("--router", required=True, metavar="unix:PATH", help="the router's API")
    parser.add_argument("--id", metavar="ID", help="only this intent's events (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line on stdout")
    parser.set_defaults(func=run, json_stream=True)  # JSON Lines: one event a line, live


def line_of(ev: IntentEvent) -> str:
    """One human-readable line: seq, kind, id, nonce and the fields the kind carries."""
    parts = [f"#{ev.seq}", ev.kind.value, ev.intent_id, f"nonce={ev.nonce}"]
    for name in ("tx_hash", "old_hash", "new_hash", "block_hash"):
        v = getattr(ev, name)
        if v is not None:
            parts.append(f"{name}=0x{v.hex()}")
    if ev.block_number is not None:
        parts.append(f"block={ev.block_number}")
    if ev.confirmations is not None:
        parts.append(f"confirmations={ev.confirmations}")
    if ev.reason is not None:
        parts.append(f"reason={ev.reason!r}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from router.api import ApiClient

    if not args.router.startswith("unix:"):
        raise MalformedInput("--router must be unix:PATH")
    if args.id is not None and not 0 < len(args.id) <= 128:
        raise MalformedInput("--id must be 1..128 characters")
    with ApiClient(args.router[5:], timeout=10) as api, api.watch(args.id) as events:
        try:
            for ev in events:
                text = json.dumps(ev.to_json()) if args.json else line_of(ev)
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:  # the normal way to stop watching
            return 0
    return 0
