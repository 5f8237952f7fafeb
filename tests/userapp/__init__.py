"""A small third-party-style Celery app: proves the harness runs apps other than the sample."""
