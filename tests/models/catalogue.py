"""The test model catalogue: every small real model the tests convert, in one place (Polygraphy's
tests/models/meta.py habit). Specs are what a user would type on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ModelCase:
    name: str
    spec: str
    weights: Path | None = None
    inputs: tuple[str, ...] = ()
    validation: Path | None = None
    extra: tuple[str, ...] = field(default=())

    def args(self) -> list[str]:
        out = [self.spec]
        if self.weights:
            out += ["--weights", str(self.weights)]
        for i in self.inputs:
            out += ["--input", i]
        if self.validation:
            out += ["--validation", str(self.validation)]
        return [*out, *self.extra]


DIGITS = ModelCase("digits_cnn", f"{ROOT}/recipes/models/digits_cnn.py:build",
                   weights=ROOT / "recipes/models/digits_cnn.pt",
                   validation=ROOT / "calibration_data/digits/val")
TRANSFORMER = ModelCase("tiny_transformer", f"{ROOT}/recipes/models/tiny_transformer.py:build")
BRANCHY = ModelCase("branchy", f"{HERE}/small.py:branchy", inputs=("x:batch=2x4:float32",))
TWO_OUTPUTS = ModelCase("two_outputs", f"{HERE}/small.py:two_outputs", inputs=("x:batch=2x3x8x8:float32",))
CATALOGUE = {c.name: c for c in (DIGITS, TRANSFORMER, BRANCHY, TWO_OUTPUTS)}
