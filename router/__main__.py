"""`python -m router`: see router/_cli.py."""

from router._cli import main

raise SystemExit(main())
