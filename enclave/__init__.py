"""enclave."""
