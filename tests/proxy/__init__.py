"""Tests for the embedded Toxiproxy-compatible fault proxy (harness.faults.proxy)."""
