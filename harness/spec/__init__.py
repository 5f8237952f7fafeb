"""Scenario specs: a scenario as data (deployment, load, schedule, checks, expectation)."""
