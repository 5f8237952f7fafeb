"""Tests for the embedded Toxiproxy-compatible fault proxy (celery_chaos.faults.proxy)."""
