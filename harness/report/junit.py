"""JUnit XML for CI systems: one test case per scenario, judged as the run's exit code is.

A scenario that ended as declared passes (a negative control that was caught passes);
one that did not is a ``failure`` carrying the invariant's problems; an infrastructure
error, or a scenario that never reached its check or a verdict, is an ``error``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from celery_chaos.results import RunVerdict, ScenarioResult

#: Characters XML 1.0 cannot hold (task output may contain them).
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _BAD_XML.sub("\ufffd", text)


def _case(s: ScenarioResult) -> ET.Element:
    case = ET.Element(
        "testcase",
        classname=f"celery_chaos.{s.broker or 'scenario'}",
        name=_clean(s.name),
        time=f"{float(s.metrics.get('wall_s', 0) or 0):.3f}",
    )
    problems = [p for inv in s.invariants for p in inv.problems]
    verdict = s.verdict.value
    if s.error:
        ET.SubElement(
            case, "error", message=_clean(s.error[:500]), type="InfrastructureError"
        ).text = _clean(s.error)
    elif not s.checked:
        ET.SubElement(case, "error", message="stopped before its check", type="NotChecked")
    elif verdict == "unknown" and s.expect != "unknown":
        ET.SubElement(case, "error", message="no verdict: the deployment never became quiet",
                      type="Unknown").text = _clean("\n".join(problems))
    elif not s.as_expected:
        msg = f"verdict {verdict}, declared {s.expect}"
        ET.SubElement(case, "failure", message=msg, type="InvariantViolated").text = _clean(
            "\n".join([msg, *problems])
        )
    queue = s.queue
    counts = {k: v for k, v in queue.counts.model_dump().items() if v} if queue else {}
    out = [f"verdict: {verdict} (declared {s.expect})", f"faults: {', '.join(s.faults) or '-'}"]
    out.append("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    ET.SubElement(case, "system-out").text = _clean("\n".join(out))
    return case


def write_junit(path: Path, run: RunVerdict) -> Path:
    """Write ``junit.xml`` for a run (atomically) and return its path."""
    cases = [_case(s) for s in run.scenarios]
    if run.exit_code == 1 and not any(c.find("failure") is not None for c in cases):
        # Every verdict as declared, yet the session failed: say so, or CI reads a pass.
        session = ET.Element("testcase", classname="celery_chaos.session", name="pytest session")
        ET.SubElement(
            session, "failure", message="a test of the session failed", type="TestFailed"
        ).text = (
            "Every scenario's verdict was as declared, but a test of the same pytest session "
            "failed (an assertion on a scenario's numbers, or a library test): see its output."
        )
        cases.append(session)
    suite = ET.Element(
        "testsuite",
        name=f"celery-chaos {run.run_id}",
        tests=str(len(cases)),
        failures=str(sum(c.find("failure") is not None for c in cases)),
        errors=str(sum(c.find("error") is not None for c in cases)),
        skipped="0",
        time=f"{sum(float(s.metrics.get('wall_s', 0) or 0) for s in run.scenarios):.3f}",
        timestamp=run.started,
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("run_id", run.run_id),
        ("verdict", run.verdict.value),
        ("as_expected", str(run.as_expected).lower()),
        ("exit_code", str(run.exit_code)),
        *((f"version.{k}", v) for k, v in run.versions.items()),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    suite.extend(cases)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
    return path
