"""celery-chaos: chaos validation for Celery deployments.

Data flow, one package each: deployment -> load -> faults -> history -> checks -> report.
"""

__version__ = "0.1.0"
