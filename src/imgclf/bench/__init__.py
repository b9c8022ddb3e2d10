"""Benchmarks: training (`imgclf bench`), serving (`imgclf bench-serve`), and FLOP counts."""
