"""`python -m router submit --router unix:PATH --to 0x.. --value WEI [--wait]`: hand one intent to
a running router (its local API) and print the outcome; `--json` for machines. Options:
`--gas estimate` (the router asks the node), `--max-fee WEI`, `--priority-fee WEI` (overrides of
the router's fee policy, refused above its cap), `--deadline T` (unix seconds, or +S from now: the
router cancels the intent if it is still pending then).

Exit 0: accepted (and, with --wait, landed with receipt status 1); 1: refused, failed, reverted
or timed out; 2: malformed input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from router._cli import emit_json, stderr_console
from router.errors import MalformedInput

if TYPE_CHECKING:
    from router.intent import Intent


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("submit", help="submit one intent to a running router")
    parser.add_argument("--router", required=True, metavar="unix:PATH", help="the router's API")
    parser.add_argument("--intent", metavar="FILE",
                        help='intent JSON {"to", "value", "data", "gas", "id"} (- for stdin)')
    parser.add_argument("--to", metavar="0xADDR")
    parser.add_argument("--value", default="0", metavar="WEI", help="decimal or 0x-hex wei")
    parser.add_argument("--data", default="0x", metavar="0xHEX")
    parser.add_argument("--gas", default="21000", metavar="N|estimate",
                        help="gas limit, or 'estimate' (eth_estimateGas + margin; default 21000)")
    parser.add_argument("--max-fee", metavar="WEI", help="max_fee_per_gas override")
    parser.add_argument("--priority-fee", metavar="WEI", help="max_priority_fee_per_gas override")
    parser.add_argument("--deadline", metavar="T|+S",
                        help="cancel if still pending at unix time T (or S seconds from now)")
    parser.add_argument("--id", metavar="ID", help="idempotency key (default: random)")
    parser.add_argument("--wait", action="store_true", help="wait for the receipt")
    parser.add_argument("--confirmations", type=int, default=1, metavar="N")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    parser.set_defaults(func=run)


def _intent(args: argparse.Namespace) -> Intent:
    from router.intent import Intent

    if args.intent:
        try:
            text = sys.stdin.read() if args.intent == "-" else Path(args.intent).read_text("utf-8")
            obj = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MalformedInput(f"{args.intent}: cannot read intent JSON ({e})") from e
        if isinstance(obj, dict) and "id" not in obj:
            obj["id"] = uuid.uuid4().hex
        return Intent.from_json(obj)
    if not args.to:
        raise MalformedInput("give --to (or --intent FILE)")
    fields: dict[str, object] = {
        "to": args.to, "value": _num(args.value, "--value"), "data": args.data,
        "gas": None if args.gas == "estimate" else _num(args.gas, "--gas"),
        "id": args.id or uuid.uuid4().hex}
    if args.max_fee is not None:
        fields["max_fee_per_gas"] = _num(args.max_fee, "--max-fee")
    if args.priority_fee is not None:
        fields["max_priority_fee_per_gas"] = _num(args.priority_fee, "--priority-fee")
    if args.deadline is not None:
        fields["deadline"] = _deadline(args.deadline)
    return Intent.from_json(fields)


def _deadline(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise MalformedInput(f"--deadline: not unix seconds or +seconds: {text[:40]!r}") from e
    return time.time() + value if text.startswith("+") else value


def _num(text: str, name: str) -> int:
    try:
        return int(text, 16) if text.startswith("0x") else int(text, 10)
    except ValueError as e:
        raise MalformedInput(f"{name}: not a decimal or 0x-hex integer: {text[:40]!r}") from e


def run(args: argparse.Namespace) -> int:
    from router.api import ApiClient, ApiError

    if not args.router.startswith("unix:"):
        raise MalformedInput("--router must be unix:PATH")
    intent = _intent(args)
    console = stderr_console()
    out: dict[str, object] = {"id": intent.id}
    refused: ApiError | None = None
    with ApiClient(args.router[5:], timeout=10) as api:
        try:
            nonce, tx_hash = api.submit(intent)
            out.update(nonce=nonce, tx_hash="0x" + tx_hash.hex())
            # A known id (also across router restarts) answers with the existing intent: its
            # state may be anything, so ask rather than assume "pending".
            out.update(api.status(intent.id).to_json())
            if args.wait:
                status = api.wait(intent.id, args.confirmations, args.timeout)
                out.update(status.to_json())
        except ApiError as e:
            refused = e
            out.update(error={"code": e.code, "message": str(e)})
    ok = "error" not in out and (not args.wait or out.get("status") == 1)
    if args.json:
        emit_json(out)
    if refused is not None:
        console.print(f"[bold red]refused:[/] {escape(str(refused))}")
    elif args.wait:
        console.print(f"{'OK' if ok else 'FAILED'}: nonce {out['nonce']} in block "
                      f"{out.get('block_number')} ({out.get('tx_hash')})")
    else:
        console.print(f"{out['state']}: nonce {out['nonce']} ({out['tx_hash']})")
    ok = ok and out.get("state") not in ("failed", "cancelled", "replaced")
    return 0 if ok else 1
