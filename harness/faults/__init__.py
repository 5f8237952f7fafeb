"""Faults stage of the harness."""
