"""Two small apps for ``celery-chaos audit`` tests: Celery's defaults, and an already safe one."""
