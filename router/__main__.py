"""`python -m router`: see router/_cli.py."""

from router._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
