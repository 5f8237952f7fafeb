"""The sample app's tasks.

They are ``shared_task``s so that any app built by
:func:`celery_chaos.sample_app.app.create_app` registers them; each reads its service
settings from ``self.app.conf`` (the ``sample_*`` keys written by
:func:`celery_chaos.sample_app.config.configure`) at run time.
"""

from __future__ import annotations

import html
import os
import smtplib
import sqlite3
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests
from celery import Task, shared_task

from celery_chaos.sample_app.config import FETCH_URL, GENERATE_REPORT, SEND_EMAIL

FROM_ADDRESS = "sample-app@localhost"
#: Header carrying the Celery task id, so a sink can tell redeliveries from distinct sends.
TASK_ID_HEADER = "X-Celery-Task-Id"


@shared_task(bind=True, name=SEND_EMAIL)
def send_email(self: Task, to: str, subject: str, body: str) -> dict[str, Any]:
    """Deliver one message over SMTP, then sleep ``sample_email_send_seconds``.

    The sleep comes after delivery, so a worker killed during it leaves a delivered email
    whose task was not yet acknowledged (the duplicate-delivery window).
    """
    conf = self.app.conf
    msg = EmailMessage()
    msg["From"] = FROM_ADDRESS
    msg["To"] = to
    msg["Subject"] = subject
    task_id = self.request.id
    if task_id:
        msg[TASK_ID_HEADER] = task_id
    msg.set_content(body)
    with smtplib.SMTP(
        conf.sample_smtp_host, int(conf.sample_smtp_port), timeout=conf.sample_smtp_timeout
    ) as smtp:
        refused = smtp.send_message(msg)
    if conf.sample_email_send_seconds:
        time.sleep(conf.sample_email_send_seconds)
    return {"to": to, "subject": subject, "task_id": task_id, "refused": sorted(refused)}


def _load_report(db_path: str, report_id: int) -> tuple[str, list[tuple[str, float]]]:
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        head = conn.execute("SELECT title FROM reports WHERE id = ?", (report_id,)).fetchone()
        if head is None:
            raise LookupError(f"report {report_id} not found in {db_path}")
        rows = conn.execute(
            "SELECT label, amount FROM report_rows WHERE report_id = ? ORDER BY position",
            (report_id,),
        ).fetchall()
    finally:
        conn.close()
    return head[0], [(str(label), float(amount)) for label, amount in rows]


def render_report(report_id: int, title: str, rows: list[tuple[str, float]]) -> str:
    """Deterministic HTML for one report (no timestamps, so a re-run writes the same bytes)."""
    body = "\n".join(
        f"<tr><td>{html.escape(label)}</td><td>{amount:.2f}</td></tr>" for label, amount in rows
    )
    total = sum(amount for _, amount in rows)
    return (
        "<!doctype html>\n"
        f"<html><head><title>{html.escape(title)}</title></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<table data-report-id="{report_id}">\n<tr><th>item</th><th>amount</th></tr>\n'
        f"{body}\n<tr><th>total</th><th>{total:.2f}</th></tr>\n</table>\n</body></html>\n"
    )


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@shared_task(bind=True, name=GENERATE_REPORT)
def generate_report(self: Task, report_id: int) -> str:
    """Sleep, load the report's rows by id, write ``<reports_dir>/<id>.html`` atomically."""
    conf = self.app.conf
    report_id = int(report_id)
    if conf.sample_report_render_seconds:
        time.sleep(conf.sample_report_render_seconds)
    title, rows = _load_report(conf.sample_reports_db, report_id)
    out_dir = Path(conf.sample_reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report_id}.html"
    _atomic_write(path, render_report(report_id, title, rows))
    return str(path)


@shared_task(bind=True, name=FETCH_URL, max_retries=3)
def fetch_url(self: Task, url: str) -> dict[str, int]:
    """GET ``url``; retry on connection errors, timeouts and HTTP 5xx."""
    conf = self.app.conf
    countdown = conf.sample_fetch_retry_countdown
    try:
        response = requests.get(url, timeout=conf.sample_fetch_timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise self.retry(exc=exc, countdown=countdown) from exc
    if response.status_code >= 500:
        exc = requests.HTTPError(f"GET {url} answered HTTP {response.status_code}")
        raise self.retry(exc=exc, countdown=countdown)
    return {"status": response.status_code, "length": len(response.content)}
