"""Boot what we build under QEMU and check it end to end (`python -m reproducible.boot`)."""
