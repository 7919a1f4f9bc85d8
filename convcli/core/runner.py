"""The runner interface: load an artifact in a runtime and execute it on numpy inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from convcli.core.errors import UnavailableError
from convcli.core.step import Availability, check_packages

if TYPE_CHECKING:
    from convcli.core.artifact import Artifact
    from convcli.core.intermediates import Intermediates


class Session:
    """A loaded model. ``run`` takes a feed keyed by the source's input names and returns outputs in the
    source's output order, already mapped back to the source's layout.

    ``fixed_batch`` is set by runtimes whose artifact has a static batch size (e.g. 1): ``__call__`` then
    splits larger feeds and concatenates the results, so parity can use one batch for every artifact.
    """

    fixed_batch: int | None = None
    description: str = ""

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = next(iter(feed.values())).shape[0] if feed else 0
        fb = self.fixed_batch
        if not fb or n <= fb or n % fb:
            return self.run(feed)
        chunks = [self.run({k: v[i : i + fb] for k, v in feed.items()}) for i in range(0, n, fb)]
        return [np.concatenate([c[j] for c in chunks], axis=0) for j in range(len(chunks[0]))]

    def run_float64(self, feed: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """The same model computed in float64 on ``feed``: the source's own float32 error, which floors fp32's
        elementwise tolerance (``parity/rounding.py``). None, the default, where the runtime cannot."""
        return None

    def close(self) -> None:
        """Release the runtime's resources."""


class Runner:
    """Executes artifacts of ``formats``. Subclasses implement ``load``."""

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def availability(cls) -> Availability:
        return check_packages(cls.requires)

    def load(self, artifact: Artifact, threads: int) -> Session:  # pragma: no cover - interface
        raise NotImplementedError

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        """Run ``artifact`` once on ``feed`` and return its intermediate tensors, each mapped to the name of the
        tensor it corresponds to in the ``reference`` ONNX graph (the fp32 ONNX the artifact's chain started
        from; None when there is none). ``wanted``: reference tensor names to capture, None for all.

        The full contract (layouts, dtypes, order, unmatched counts) is in ``convcli/core/intermediates.py``.
        Runners that cannot do it keep this default, which raises ``UnavailableError``."""
        raise UnavailableError(f"the {self.name or type(self).__name__} runner cannot return intermediate tensors",
                               hint="divergence localization needs a runner that implements Runner.intermediates")
