"""An artifact is one model in one format and precision: files on disk (or an in-memory source) plus
what parity needs to run it (input specs, output names, layout)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from convcli.core.tensors import TensorSpec

# Files staged beside a model for convcli's own use (divergence localization), not part of what is deployed: they
# travel with the artifact (hashes, cache, OUTDIR) but never count towards its size or a max_size_mb gate.
LAYER_MAP_SUFFIX = ".onnx2tf-names.json"  # onnx2tf layer -> ONNX tensor names, written by TfliteFromOnnx
SIDECAR_SUFFIXES = (LAYER_MAP_SUFFIX,)


@dataclass
class Artifact:
    """One model. ``path`` is the primary file (model.onnx, model.xml, ...); ``files`` are all files it
    consists of (for size and hashes). ``obj`` holds an in-memory model (a PyTorch source) when there is one.
    ``layout`` maps input name -> layout where it differs from the source's (e.g. "NHWC" for onnx2tf output).
    """

    format: str
    path: Path | None
    inputs: list[TensorSpec]
    output_names: list[str] = field(default_factory=list)
    precision: str = "fp32"
    files: list[Path] = field(default_factory=list)
    layout: dict[str, str] = field(default_factory=dict)
    output_layout: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    obj: Any = None

    def derive(self, **changes: Any) -> Artifact:
        """A new artifact based on this one (details are copied, not shared)."""
        changes.setdefault("details", dict(self.details))
        return replace(self, **changes)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.all_files() if p.is_file() and not p.name.endswith(SIDECAR_SUFFIXES))

    def all_files(self) -> list[Path]:
        files = list(self.files)
        if self.path is not None and self.path not in files and self.path.is_file():
            files.insert(0, self.path)
        return files

    @property
    def label(self) -> str:
        return f"{self.format}-{self.precision}"
