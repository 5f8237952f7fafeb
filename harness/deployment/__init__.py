"""Deployment stage of the harness."""
