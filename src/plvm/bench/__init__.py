"""Micro-benchmarks of plvm components (run them as ``python -m plvm.bench.<name>``)."""
