"""Experiments that check the paper's claims with this package (see experiments/README.md)."""
