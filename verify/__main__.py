"""`python -m verify`: see `verify._cli`."""

from __future__ import annotations

from verify._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
