"""Input descriptions: names, shapes with named dynamic dimensions, dtypes and value ranges.

``--input NAME:SHAPE:DTYPE[:LOW..HIGH]``. A dim is an integer (static), a name (dynamic, example size from
DEFAULT_DIM_SIZES) or ``name=N`` (dynamic with example size N). Names may contain any letter, ``x`` included, so
SHAPE has one reading only:

- with a ``,`` anywhere, ``,`` alone separates dims: ``ids:batch=2,max_len:int64``;
- otherwise an ``x`` separates dims only right after a digit (after a static size or a ``name=N``), and a bare
  name (no ``=N``) can only be the last dim: ``ids:batch=2xmax_len=5:int64``, ``x:batch=2x3x32x32``;
- a bare name containing ``x`` that would also read as several dims (``batchx3``, ``maxlen``: ``ma`` x ``len``)
  is refused, naming the two ways to write it unambiguously.

Examples: ``x:batch=2x1x8x8:float32``, ``ids:batch=2xseq=16:int64:0..1000``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from convcli.core.errors import InputError

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
# Example sizes for named dims. A batch of 2 (not 1): the dynamo exporter can silently specialise a
# batch-1 example to a static 1.
DEFAULT_DIM_SIZES = {"batch": 2, "n": 2, "seq": 8, "sequence": 8, "height": 32, "width": 32}
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Dim(BaseModel):
    """One dimension: static when ``name`` is None, else dynamic with an example ``size``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(description="Static size, or the example size used to export a dynamic dimension.")
    name: str | None = Field(default=None, description="Name of a dynamic dimension (batch, seq, ...).")

    @property
    def dynamic(self) -> bool:
        return self.name is not None

    def text(self) -> str:
        return str(self.size) if self.name is None else f"{self.name}={self.size}"


class TensorSpec(BaseModel):
    """A model input: name, shape, dtype and, for generated integer data, the value range."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Input name as the model and artifacts will call it.")
    shape: list[Dim] = Field(description="Dimensions; dynamic ones carry a name and an example size.")
    dtype: str = Field(default="float32", description=f"One of {', '.join(DTYPES)}.")
    low: float | None = Field(default=None, description="Lowest generated value (random data).")
    high: float | None = Field(default=None, description="Highest generated value, exclusive for integers.")

    def example_shape(self, overrides: dict[str, int] | None = None) -> tuple[int, ...]:
        overrides = overrides or {}
        return tuple(overrides.get(d.name, d.size) if d.name else d.size for d in self.shape)

    @property
    def dynamic_dims(self) -> dict[int, str]:
        return {i: d.name for i, d in enumerate(self.shape) if d.name}

    def text(self) -> str:
        base = f"{self.name}:{'x'.join(d.text() for d in self.shape)}:{self.dtype}"
        if self.low is not None and self.high is not None:
            base += f":{self.low:g}..{self.high:g}"
        return base

    def value_range(self) -> tuple[float, float]:
        if self.low is not None and self.high is not None:
            return self.low, self.high
        if self.dtype == "bool":
            return 0, 2
        if self.dtype.startswith(("int", "uint")):
            return 0, 10
        return 0.0, 1.0


def parse_dim(text: str, where: str) -> Dim:
    """One dim written alone (between ``,`` separators, or the whole SHAPE): its name may contain ``x``."""
    text = text.strip()
    if text.isdigit():
        return Dim(size=int(text))
    name, _, size = text.partition("=")
    if not _DIM_NAME.match(name) or (size and not size.isdigit()):
        raise InputError(
            f"{where}: dimension '{text}' is neither an integer nor NAME or NAME=SIZE",
            hint="e.g. --input x:batch=2x3x32x32:float32, or with ',' between every dim: ids:batch=2,max_len:int64",
        )
    return Dim(name=name, size=int(size) if size else DEFAULT_DIM_SIZES.get(name, 2))


# A dim followed by an ``x`` separator (or the end): a static size or ``name=N``. The name runs up to ``=``.
_SIZED_DIM = re.compile(r"(\d+|[A-Za-z_][A-Za-z0-9_]*=\d+)(?:[xX](?=.)|$)")


def _split_reading(name: str) -> list[str] | None:
    """How the old every-``x`` grammar would split a bare ``name`` into several valid dims (``batchx3`` ->
    ``batch``, ``3``), or None when ``name`` can only be one dim (``box``, ``xdim``)."""
    for i, c in enumerate(name):
        if c in "xX" and i > 0:
            pieces = [name[:i], *re.split("[xX]", name[i + 1:])]
            if all(p.isdigit() or _DIM_NAME.match(p) for p in pieces):
                return pieces
    return None


def parse_shape(text: str, where: str) -> list[Dim]:
    """SHAPE in its one reading (see the module docstring), or InputError showing how to write it."""
    text = text.strip()
    if not text:
        return []
    if "," in text:
        return [parse_dim(d, where) for d in text.split(",")]
    dims: list[Dim] = []
    pos = 0
    while pos < len(text):
        m = _SIZED_DIM.match(text, pos)
        if m is None:
            break
        dims.append(parse_dim(m.group(1), where))
        pos = m.end()
    rest = text[pos:]
    if not rest:
        return dims
    if not _DIM_NAME.match(rest):
        raise InputError(
            f"{where}: dimension '{rest}' is neither an integer nor NAME or NAME=SIZE",
            hint="dims are separated by 'x' after a number or by ',', e.g. --input x:batch=2x3x32x32:float32 "
                 "or ids:batch=2,max_len:int64",
        )
    pieces = _split_reading(rest)
    if pieces is not None:
        head, size = text[:pos], DEFAULT_DIM_SIZES.get(rest, 2)
        several = "x".join(p if p.isdigit() else f"{p}={DEFAULT_DIM_SIZES.get(p, 2)}" for p in pieces)
        commas = ",".join([*(d.text() for d in dims), rest])
        raise InputError(
            f"{where}: '{rest}' reads as one dimension or as {' x '.join(repr(p) for p in pieces)}",
            hint=f"one dimension: give it a size ({head}{rest}={size}) or separate dims with ',' ({commas}); "
                 f"several: {head}{several}",
        )
    dims.append(parse_dim(rest, where))
    return dims


def parse_input_spec(text: str) -> TensorSpec:
    """Parse one ``--input`` value; errors name the value and show the expected form."""
    where = f"--input '{text}'"
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise InputError(f"{where}: expected NAME:SHAPE[:DTYPE[:LOW..HIGH]]", hint="e.g. --input x:1x3x32x32:float32")
    name, shape_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) > 2 and parts[2] else "float32"
    if dtype not in DTYPES:
        raise InputError(f"{where}: dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    dims = parse_shape(shape_text, where)
    low = high = None
    if len(parts) == 4:
        m = re.fullmatch(r"\s*(-?[\d.eE+-]+)\.\.(-?[\d.eE+-]+)\s*", parts[3])
        if not m:
            raise InputError(f"{where}: value range '{parts[3]}' must look like LOW..HIGH, e.g. 0..1000")
        low, high = float(m.group(1)), float(m.group(2))
        if high <= low:
            raise InputError(f"{where}: value range {parts[3]} is empty (HIGH must be above LOW)")
    return TensorSpec(name=name, shape=dims, dtype=dtype, low=low, high=high)


def numpy_dtype(dtype: str) -> Any:
    import numpy as np

    return np.dtype("bool" if dtype == "bool" else dtype)
