"""The JUnit XML view of a report, for CI test dashboards (GitHub, GitLab, Jenkins, Azure).

One ``<testsuite>`` per report (inside ``<testsuites>``). One ``<testcase>`` per artifact, named by its id
with the source spec as classname: ``<failure>`` when a gate failed, ``<error>`` when converting or running
it failed, ``<skipped>`` when it cannot be built here. Each failed gate line is also a test case of its own
(``onnx-fp16 gate: accuracy drop``), so a dashboard shows which gate broke without opening the log.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from convcli.reports.markdown import divergence_note, fmt_ms, fmt_pct, fmt_size
from convcli.reports.model import ArtifactReport, Report

# Characters XML 1.0 cannot carry at all (ElementTree would write them and produce a file no parser reads).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_GATE_NAME = re.compile(r"^(.*?)(?::|\s+[-+]?[\d.]|$)")


def _clean(text: object) -> str:
    return _INVALID_XML.sub("?", str(text))


def gate_name(line: str) -> str:
    """The stable part of a failure line (``parity``, ``accuracy drop``, ``p50``), without its numbers, so
    the same gate keeps the same test name from run to run."""
    match = _GATE_NAME.match(line.strip())
    return (match.group(1).strip() if match else "") or line.strip()[:40] or "gate"


def _artifact_output(a: ArtifactReport) -> str:
    """What a CI log reader wants next to the verdict: how it was made and what was measured."""
    lines = [f"status: {a.status}", f"format: {a.format} {a.precision}"]
    for label, value in (("chain", a.chain), ("runner", a.runner), ("path", a.path)):
        if value:
            lines.append(f"{label}: {value}")
    p = a.parity
    if p:
        lines.append(f"parity on {p.samples} samples: max abs err "
                     + ("-" if p.max_abs_err is None else f"{p.max_abs_err:.3g}")
                     + ", cosine " + ("-" if p.cosine_min is None else f"{p.cosine_min:.6f}")
                     + ", top-1 agreement " + fmt_pct(p.top1_agreement, 1))
    if a.accuracy is not None:
        drop = f" (drop {a.accuracy_drop * 100:.2f} points)" if a.accuracy_drop is not None else ""
        lines.append(f"accuracy: {fmt_pct(a.accuracy)}{drop}")
    for batch, s in a.latency_by_batch.items():
        lines.append(f"latency batch {batch}: p50 {fmt_ms(s.p50)} ms, p90 {fmt_ms(s.p90)} ms, "
                     f"{s.throughput:,.0f} samples/s")
    if a.speedup_vs_source is not None:
        lines.append(f"speedup vs source: {a.speedup_vs_source:.2f}x" + (" (within noise)" if a.speed_within_noise
                                                                         else ""))
    if a.cached and a.measured is not None:
        lines.append(f"measured in run {a.measured.run_id} (cached)")
    if a.size_bytes is not None:
        lines.append(f"size: {fmt_size(a.size_bytes)}")
    lines += [f"flag: {f}" for f in a.flags]
    if note := divergence_note(a, with_id=False):
        lines.append(f"divergence: {note}")
    return "\n".join(lines)


def render_junit(report: Report) -> str:
    """The report as JUnit XML (UTF-8, with declaration); counts match the test cases written."""
    classname = _clean(report.source.spec)
    cases: list[ET.Element] = []
    counts = {"failures": 0, "errors": 0, "skipped": 0}

    def case(name: str) -> ET.Element:
        el = ET.Element("testcase", classname=classname, name=_clean(name))
        cases.append(el)
        return el

    for a in report.artifacts:
        el = case(a.id)
        if a.status == "failed":
            lines = a.failures or [a.error or "failed"]
            sub = ET.SubElement(el, "failure", message=_clean(lines[0]), type="GateFailed")
            where = divergence_note(a, with_id=False)
            sub.text = _clean("\n".join(lines + ([a.parity.message] if a.parity and a.parity.message
                                                 and f"parity: {a.parity.message}" not in lines else [])
                                         + ([f"divergence: {where}"] if where else [])))
            counts["failures"] += 1
        elif a.status == "error":
            sub = ET.SubElement(el, "error", message=_clean(a.error or "error"), type="ConversionError")
            sub.text = _clean(a.error or "")
            counts["errors"] += 1
        elif a.status == "unavailable":
            ET.SubElement(el, "skipped", message=_clean(f"unavailable: {a.error or 'no reason given'}"))
            counts["skipped"] += 1
        ET.SubElement(el, "system-out").text = _clean(_artifact_output(a))
        seen: dict[str, int] = {}
        for line in a.failures:
            gate = gate_name(line)
            seen[gate] = seen.get(gate, 0) + 1
            suffix = f" #{seen[gate]}" if seen[gate] > 1 else ""
            gate_case = case(f"{a.id} gate: {gate}{suffix}")
            ET.SubElement(gate_case, "failure", message=_clean(line), type="GateFailed").text = _clean(line)
            counts["failures"] += 1

    total_seconds = sum(s.seconds for s in report.steps)
    suite = ET.Element("testsuite", name=_clean(f"convcli {report.source.spec}"), tests=str(len(cases)),
                       failures=str(counts["failures"]), errors=str(counts["errors"]),
                       skipped=str(counts["skipped"]), time=f"{total_seconds:.3f}",
                       timestamp=_clean(report.created))
    props = ET.SubElement(suite, "properties")
    s = report.settings
    for name, value in (("schema", report.schema_), ("convcli_version", report.convcli_version),
                        ("command", report.command), ("exit_code", report.exit_code), ("summary", report.summary),
                        ("fastest_passed", report.fastest_passed or ""), ("threads", s.threads),
                        ("parity_data", s.parity_data), ("accuracy_data", s.accuracy_data or ""),
                        ("cpu", s.machine.get("cpu", "")),
                        ("cpu_flags", ",".join(s.machine.get("cpu_flags") or []))):
        ET.SubElement(props, "property", name=name, value=_clean(value))
    suite.extend(cases)
    steps = "\n".join(f"{st.id} {st.name} ({st.source} -> {st.target}): {st.status}, {st.seconds:.2f} s"
                      + (f": {st.error}" if st.error else "") for st in report.steps)
    ET.SubElement(suite, "system-out").text = _clean(f"{report.summary}; exit code {report.exit_code}"
                                                     + (f"\n{steps}" if steps else ""))
    root = ET.Element("testsuites", name="convcli", tests=suite.get("tests", "0"),
                      failures=suite.get("failures", "0"), errors=suite.get("errors", "0"),
                      skipped=suite.get("skipped", "0"), time=suite.get("time", "0"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
