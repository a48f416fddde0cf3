"""Process-level fault injection for the router (issue 12's acceptance suite).

`harness.run_chaos` drives real anvil, the real signer process and `python -m router run`, kills
them at random points while intents stream through the router's API, and checks the outcome
against the chain itself. `python -m chaos` (with tests/ on sys.path; `nox -s chaos`) runs it at
length; tests/chaos/test_chaos.py runs one bounded run under `nox -s tests`.
"""
