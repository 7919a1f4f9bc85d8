"""A conversion job: ``run_job`` (convert + measure + judge + write) and ``check_artifacts`` (measure + judge
existing files). Modules, in the order data flows: ``source`` (which model, loaded lazily), ``keys`` (cache keys),
``data`` (parity/labelled/calibration sets), ``run`` (orchestration), ``output`` (staging, OUTDIR, manifest),
``evaluation`` (measuring), ``judge`` (the pass/fail rules)."""

from convcli.job.run import JobResult, check_artifacts, check_calibration, run_job
from convcli.job.source import find_loader, load_source, target_requests

__all__ = ["JobResult", "check_artifacts", "check_calibration", "find_loader", "load_source", "run_job",
           "target_requests"]
