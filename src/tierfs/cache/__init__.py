"""Tier 1: chunk files on local NVMe with an SQLite index."""
