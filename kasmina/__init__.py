"""Kasmina: the seed executor for morphogenetic training."""
__version__ = "0.1.0"
