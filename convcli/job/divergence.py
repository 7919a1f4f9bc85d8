"""Divergence localization inside a job: which rows get it, which reference graph each uses, and how a crash in
it stays a note on the row. The locating itself is ``parity/divergence.py``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from convcli.core.artifact import Artifact
from convcli.core.errors import ConvcliError, UnavailableError, first_line
from convcli.core.executor import StepOutcome
from convcli.core.intermediates import ReferenceGraph
from convcli.core.planner import Plan, PlannedTarget
from convcli.core.registry import Registry
from convcli.core.step import StepContext
from convcli.reports.model import ArtifactReport

PARITY_FAILURES = ("parity:", "max abs err", "cosine", "top-1 agreement")
TORCH_FORMATS = ("pytorch", "torchscript", "exported-program")


def fails_parity(row: ArtifactReport) -> bool:
    """A failed row with at least one parity failure (tolerance or parity gate); rows failing only on latency,
    size or accuracy drop are left alone."""
    return row.status == "failed" and any(f.startswith(PARITY_FAILURES) for f in row.failures)


def chain_reference(the_plan: Plan, target: PlannedTarget, outcomes: dict[str, StepOutcome],
                    onnx_source: Path | None) -> Path | None:
    """The fp32 ONNX a target's chain went through last before leaving ONNX or lowering precision (the
    exported and simplified graph for a PyTorch source); the source file for an ONNX source without one."""
    found: Path | None = None
    for sid in target.chain:
        out = outcomes[sid].artifact if sid in outcomes else None
        if out is None or out.format != "onnx" or out.precision != "fp32" or out.path is None:
            if found is not None and out is not None and out.format != "onnx":
                break
            continue
        found = out.path
    return found if found is not None else onnx_source


class ReferenceExport:
    """For rows whose chain never passed through ONNX (``check``/``debug``; in ``convert`` a PyTorch -> ncnn row
    through pnnx): the source exported to ONNX and simplified (what a ``convert`` chain would have started from),
    done once and only when a failing row needs it. ONNX sources are their own reference; other sources have none.
    ``source`` may be a callable, so that a fully cached run never loads the model for it."""

    def __init__(self, registry: Registry, source: Artifact | Callable[[], Artifact], threads: int) -> None:
        self.registry, self.threads = registry, threads
        self._source = source
        self._dir: Path | None = None
        self._path: Path | None = None
        self._error: str | None = None

    @property
    def source(self) -> Artifact:
        if callable(self._source):
            self._source = self._source()
        return self._source

    def get(self, artifact: Artifact | None = None) -> Path:
        """The reference graph for ``artifact``. An fp32 ONNX artifact whose nodes record PyTorch module scopes
        (convcli's own export) is its own reference: the source's module hooks supply the reference values, so
        the export (seconds) is skipped."""
        if self.source.format == "onnx" and self.source.path is not None:
            return self.source.path
        if (artifact is not None and artifact.format == "onnx" and artifact.precision == "fp32"
                and artifact.path is not None and self.source.format in TORCH_FORMATS):
            with contextlib.suppress(Exception):
                if ReferenceGraph.read(artifact.path).module_outputs():
                    return artifact.path
        if self._path is not None:
            return self._path
        if self._error is not None:
            raise UnavailableError(self._error)
        if self.source.format not in TORCH_FORMATS:
            self._error = (f"no fp32 ONNX reference graph for a {self.source.format} source here (convert it "
                           "with `convcli convert --to onnx` and debug against that)")
            raise UnavailableError(self._error)
        self._dir = Path(tempfile.mkdtemp(prefix="convcli-reference-"))
        try:
            exporter = self.registry.step_named("OnnxFromPytorch" if self.source.format == "pytorch" else
                                                "OnnxFromTorchscript" if self.source.format == "torchscript"
                                                else "OnnxFromExportedProgram")
            (self._dir / "export").mkdir()
            (self._dir / "simplify").mkdir()
            onnx = exporter().run(self.source, StepContext(workdir=self._dir / "export", threads=self.threads))
            with contextlib.suppress(ConvcliError):  # the unsimplified export still names the tensors
                onnx = self.registry.step_named("SimplifyOnnx")().run(
                    onnx, StepContext(workdir=self._dir / "simplify", threads=self.threads))
            assert onnx.path is not None
            self._path = onnx.path
            return onnx.path
        except Exception as exc:
            self._error = f"exporting the source to a reference ONNX failed: {first_line(exc)}"
            raise UnavailableError(self._error) from None

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
