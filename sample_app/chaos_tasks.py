"""Tasks that exist to be broken: a task that hangs, a short nap, and auto-retrying fetches.

They complement :mod:`celery_chaos.sample_app.tasks` for the time-limit and retry scenarios.
None of them reads a new environment variable: their behaviour is chosen by their arguments, and the
auto-retry policies are fixed here so scenarios can import the numbers they check.
All go to the app's default queue (``default``).
"""

from __future__ import annotations

import threading
import time

import requests
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

HANG = "celery_chaos.sample_app.chaos_tasks.hang"
NAP = "celery_chaos.sample_app.chaos_tasks.nap"
FETCH_WITH_BACKOFF = "celery_chaos.sample_app.chaos_tasks.fetch_with_backoff"
FETCH_WITH_JITTER = "celery_chaos.sample_app.chaos_tasks.fetch_with_jitter"

#: Auto-retry policy of both fetches: countdown = min(BACKOFF_MAX, BACKOFF_FACTOR * 2**n).
BACKOFF_FACTOR = 1
BACKOFF_MAX = 2
AUTORETRY_MAX_RETRIES = 3


def _hang_forever(mode: str) -> None:
    if mode == "block":  # a blocking wait that never returns
        threading.Event().wait()
    elif mode == "sleep":  # an endless loop of short sleeps
        while True:
            time.sleep(0.1)
    else:
        raise ValueError(f"unknown hang mode {mode!r}: use 'sleep' or 'block'")


@shared_task(bind=True, name=HANG)
def hang(self: Task, mode: str = "sleep", on_soft: str = "raise") -> None:
    """Never return on its own.

    ``mode``: ``sleep`` (an endless loop) or ``block`` (``Event().wait()``, never set).
    ``on_soft``: ``raise`` lets ``SoftTimeLimitExceeded`` end the task (state FAILURE);
    ``ignore`` swallows it and hangs again, so only the hard time limit can end it.
    """
    while True:
        try:
            _hang_forever(mode)
        except SoftTimeLimitExceeded:
            if on_soft != "ignore":
                raise


@shared_task(name=NAP)
def nap(seconds: float) -> float:
    """Sleep ``seconds`` and return them: a well-behaved task of known length."""
    time.sleep(float(seconds))
    return float(seconds)


def _get(url: str) -> dict[str, int]:
    response = requests.get(url, timeout=10)
    response.raise_for_status()  # 4xx/5xx -> requests.HTTPError, which auto-retries
    return {"status": response.status_code, "length": len(response.content)}


_AUTORETRY = {
    "autoretry_for": (requests.RequestException,),
    "retry_backoff": BACKOFF_FACTOR,
    "retry_backoff_max": BACKOFF_MAX,
    "retry_kwargs": {"max_retries": AUTORETRY_MAX_RETRIES},
}


@shared_task(name=FETCH_WITH_BACKOFF, retry_jitter=False, **_AUTORETRY)
def fetch_with_backoff(url: str) -> dict[str, int]:
    """GET ``url``; on an error, auto-retry after exactly min(2, 2**n) s, at most 3 times."""
    return _get(url)


@shared_task(name=FETCH_WITH_JITTER, retry_jitter=True, **_AUTORETRY)
def fetch_with_jitter(url: str) -> dict[str, int]:
    """GET ``url``; on an error, auto-retry after a uniform draw in [0, min(2, 2**n)] s."""
    return _get(url)
