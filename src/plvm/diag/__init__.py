"""Diagnostics that earn their place: measurements a design is checked with before a long run (``plvm diag``)."""
