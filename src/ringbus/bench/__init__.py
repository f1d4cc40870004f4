"""Benchmarks that measure ringbus beside its peers in one run and report ratios (``ringbus bench``)."""
