"""TensorFlow: runs Keras and SavedModel sources (the reference for parity and latency of their artifacts).

The model is called through one tf.function per input signature (dynamic dims unknown), traced once, so
latency measures the graph, not Python dispatch. Outputs come in the source's order (``TfModel``: a Keras
model's flattened outputs, a SavedModel signature's outputs sorted by key).

Threads: TensorFlow sizes its pools once, when its runtime starts; they cannot change afterwards. The
source loader pins them to the job's thread count before loading, and this runner pins them again when it
loads a model itself. The description states the sizes really in effect, so a mismatch (the runtime was
started earlier with other sizes) shows in the report instead of skewing latency silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.sources.tf_sources import TfModel, import_tensorflow, load_tf_model, pin_threads


class TensorflowSession(Session):
    def __init__(self, model: TfModel, artifact: Artifact, threads: int) -> None:
        tf = import_tensorflow()
        intra, inter = pin_threads(tf, threads)
        self.model = model
        self.specs = artifact.inputs
        self.names = [s.name for s in artifact.inputs]
        pools = f"{intra or 'all'} intra-op / {inter or 'default'} inter-op threads"
        if intra != threads:
            pools += f" (asked for {threads}: TensorFlow's runtime had started with other sizes)"
        self.description = f"TensorFlow {tf.__version__} {model.kind} ({model.loaded_with.split(' (')[0]}), {pools}"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.names if n not in feed]
        if missing:
            raise ConversionError(f"the TensorFlow model needs input(s) {', '.join(missing)} the feed lacks")
        return self.model([feed[n] for n in self.names], self.specs)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


class TensorflowRunner(Runner):
    name = "tensorflow"
    formats = ("keras", "savedmodel")
    requires = ("tensorflow",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        model: Any = artifact.obj
        if not isinstance(model, TfModel):
            assert artifact.path is not None
            import_tensorflow(threads)
            model = load_tf_model(artifact.format, Path(artifact.path), threads)
        return TensorflowSession(model, artifact, threads)


def register(registry: Registry) -> None:
    registry.add_runner(TensorflowRunner)
