"""Helpers shared by test modules (importable as ``tests.support.<module>``).

Test modules never import each other and never edit ``sys.path``: what two of them share
lives here. Scripts that tests start as child processes run as ``python -m
tests.support.<module>`` from the repository root.
"""
