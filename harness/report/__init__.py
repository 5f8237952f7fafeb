"""Report stage of the harness."""
