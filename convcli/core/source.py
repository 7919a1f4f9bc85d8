"""The source-loader interface: turn what the user names (a file, a ``file.py:factory``) into an Artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from convcli.core.step import Availability, check_packages

if TYPE_CHECKING:
    from convcli.core.artifact import Artifact
    from convcli.core.tensors import TensorSpec


@dataclass
class SourceRequest:
    """What the user asked to load. ``threads``: the job's thread count, for runtimes whose thread pools
    must be sized before the model is loaded (TensorFlow)."""

    spec: str
    inputs: list[TensorSpec] | None = None
    weights: Path | None = None
    threads: int | None = None


class SourceLoader:
    """Recognises and loads one kind of source. ``matches`` must be cheap and import no backend."""

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    # Packages beyond ``requires`` that may shape what ``load`` returns (e.g. keras / tf_keras for TensorFlow
    # sources); their versions go into the source's cache key with those of ``requires``.
    also_uses: ClassVar[tuple[str, ...]] = ()
    priority: ClassVar[int] = 0  # higher wins when several match

    @classmethod
    def availability(cls) -> Availability:
        return check_packages(cls.requires)

    @classmethod
    def matches(cls, spec: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def content_digest(cls, spec: str) -> str | None:
        """A hash of everything the loaded model depends on, for sources that are not files (an in-memory model
        from the Python API); None: the cache key is made from the files ``spec`` names (``job/keys.py``)."""
        return None

    def load(self, request: SourceRequest) -> Artifact:  # pragma: no cover - interface
        raise NotImplementedError
