"""Benchmarks and experiments (``pytest benchmarks/FILE.py``, ``python -m benchmarks.NAME``);
a package so that tests import ``benchmarks.learning_efficiency``."""
