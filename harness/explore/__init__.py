"""Exploration: generated fault schedules, run for real, shrunk to a minimal failing one."""
