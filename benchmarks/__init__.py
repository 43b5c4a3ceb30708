"""Benchmarks of cvlocal against its peers (``make bench`` runs ``benchmarks/run.py``)."""
