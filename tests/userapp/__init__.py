"""A small third-party-style Celery app used to prove the harness runs apps that are not the sample."""
