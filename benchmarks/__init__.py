"""Benchmarks of xffl_hpc, each a ratio against a baseline measured in the same run.

Run all with ``python -m benchmarks`` (``--quick`` for a smoke run, ``--json PATH`` for
the results file). Nothing here is imported by the package or asserted on by the tests.
"""
