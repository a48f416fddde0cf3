"""`python -m reproducible`: see reproducible/_cli.py."""

from reproducible._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
