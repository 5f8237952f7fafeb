"""Load stage of the harness."""
