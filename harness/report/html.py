"""The run's ``index.html``: a minimal page (a later stage adds charts) rendered with jinja2."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from harness.report.results import RunVerdict

_env = Environment(
    loader=PackageLoader("harness.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

VERDICT_WORDS = {
    "valid": "Every invariant held: no task was lost under the faults injected.",
    "invalid": "An invariant was violated: see the scenarios marked invalid below.",
    "unknown": "The harness could not reach a verdict (the deployment never became quiet).",
}


def write_index(run_dir: Path, verdict: RunVerdict) -> Path:
    """Render ``index.html`` for a run directory and return its path."""
    html = _env.get_template("run.html.j2").render(
        run=verdict,
        words=VERDICT_WORDS,
        rel=lambda p: _relative(p, run_dir),
    )
    out = run_dir / "index.html"
    tmp = out.with_name("index.html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def _relative(path: str, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path
