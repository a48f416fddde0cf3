"""reproducible."""
