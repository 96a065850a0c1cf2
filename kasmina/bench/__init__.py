"""Benchmarks of Kasmina's moving parts (``python tools/bench_store.py`` runs the store one)."""
