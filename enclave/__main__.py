"""`python -m enclave`: see enclave/_cli.py."""

from enclave._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
