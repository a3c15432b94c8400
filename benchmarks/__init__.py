"""Benchmark and measurement scripts of the lightjax repository (not part of the installed library).

``python -m benchmarks.bench`` (lightjax vs PyTorch eager; see :mod:`benchmarks.bench`), ``python -m
benchmarks.compile_kernels`` (XLA compile time vs distinct kernels). They import the library and, for the
PyTorch reference modules, the repository's ``tests/`` helpers; the library never imports them.
"""
