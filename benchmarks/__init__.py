"""Benchmarks of compositional-ai against plain code, pandas and raw torch (`make bench`)."""
