"""Benchmarks of metaq-trio: ``python bench/run.py [part] [--quick]`` (see bench/run.py)."""
