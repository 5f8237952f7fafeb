"""Checks stage of the harness."""
