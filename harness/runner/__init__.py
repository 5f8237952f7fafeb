"""The runner: a scenario spec executed on a backend, and the catalog of shipped specs."""
