"""`python -m nitro_qemu build`: print the cached QEMU binary's path (building it when missing)."""

from __future__ import annotations

import argparse
import json
import sys

from nitro_qemu import NitroQemuError
from nitro_qemu.build import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nitro_qemu")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch and build QEMU with the nitro-enclave machine")
    b.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    try:
        result = build()
    except NitroQemuError as e:
        print(f"nitro-qemu: {e}", file=sys.stderr)
        return 1
    how = "reused from the cache; built" if result.reused else "built"
    print(f"nitro-qemu: QEMU {result.version} {how} in {result.build_seconds:.0f} s: {result.binary}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"binary": str(result.binary), "version": result.version,
                       "build_seconds": result.build_seconds, "reused": result.reused}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
