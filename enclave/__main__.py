"""`python -m enclave`: see enclave/_cli.py."""

from enclave._cli import main

raise SystemExit(main())
