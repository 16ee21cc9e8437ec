"""Benchmark and sweep logic run by the scripts beside this folder (not part of the installed packages)."""
