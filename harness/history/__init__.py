"""History stage of the harness."""
