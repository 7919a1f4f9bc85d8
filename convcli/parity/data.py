"""Data for parity, accuracy and calibration: seeded random inputs, .npy/.npz files, image folders (with
declared preprocessing) and labelled sets (class sub-folders or a CSV of file,label).

Every data set is a dict of arrays stacked on the first (batch) dimension, plus optional labels.
"""

from __future__ import annotations

import csv
import itertools
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.core.errors import InputError
from convcli.core.tensors import TensorSpec, numpy_dtype

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm")


class ImagePreprocess(BaseModel):
    """How image files become a model input. Unset fields are inferred from the input spec."""

    model_config = ConfigDict(extra="forbid")
    resize: tuple[int, int] | None = Field(default=None, description="(height, width); default: the input's.")
    scale: float = Field(default=1 / 255, description="Multiplier applied to 0..255 pixel values first.")
    mean: list[float] | None = Field(default=None, description="Per-channel mean subtracted after scaling.")
    std: list[float] | None = Field(default=None, description="Per-channel std divided by after the mean.")
    color: Literal["rgb", "bgr", "gray"] | None = Field(
        default=None, description="Channel order; default: gray for 1 channel, else rgb.")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Layout of the model input.")


@dataclass
class DataSet:
    """Samples for a model's inputs (stacked on axis 0), optional integer labels, and where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: str

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0] if self.inputs else 0

    def take(self, n: int | None) -> DataSet:
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return DataSet({k: v[:n] for k, v in self.inputs.items()}, labels, f"{self.description}, first {n}")

    def subset(self, indices: Sequence[int], description: str) -> DataSet:
        """The samples at ``indices`` (in that order), with their labels."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return DataSet({k: v[idx] for k, v in self.inputs.items()}, labels, description)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self), size):
            yield {k: v[i : i + size] for k, v in self.inputs.items()}


def random_array(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values of ``spec``'s dtype within its declared value range."""
    low, high = spec.value_range()
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.dtype.startswith(("int", "uint")):
        return rng.integers(int(low), int(high), size=shape).astype(numpy_dtype(spec.dtype))
    return rng.uniform(low, high, size=shape).astype(numpy_dtype(spec.dtype))


def random_data(specs: list[TensorSpec], samples: int, seed: int = 0) -> DataSet:
    """Seeded data within each input's declared value range, one sample per row of the batch axis."""
    rng = np.random.default_rng(seed)
    out = {s.name: random_array(s, (samples, *s.example_shape()[1:]), rng) for s in specs}
    return DataSet(out, None, f"random (seed {seed}, {samples} samples)")


def load_arrays(path: Path, specs: list[TensorSpec]) -> DataSet:
    """``.npy`` (one input) or ``.npz`` (keys are input names; an optional ``labels`` key)."""
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"data file {path} cannot be read as .npy/.npz: {exc}") from None
    labels = None
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise InputError(f"{path}: a .npy file feeds one input, the model has {len(specs)}",
                             hint="use a .npz with one array per input name")
        arrays = {specs[0].name: loaded}
    else:
        arrays = {k: loaded[k] for k in loaded.files}
        labels = arrays.pop("labels", None)
        missing = [s.name for s in specs if s.name not in arrays]
        if missing:
            raise InputError(f"{path}: no array for input(s) {', '.join(missing)}; it has {', '.join(arrays)}")
    for spec in specs:
        arr = arrays[spec.name]
        if arr.ndim != len(spec.shape):
            raise InputError(f"{path}: array '{spec.name}' has shape {arr.shape}, input {spec.text()} "
                             f"needs {len(spec.shape)} dims")
        arrays[spec.name] = arr.astype(numpy_dtype(spec.dtype))
    return DataSet({s.name: arrays[s.name] for s in specs}, labels, f"arrays {path}")


def _image_array(file: Path, spec: TensorSpec, pre: ImagePreprocess) -> np.ndarray:
    from PIL import Image

    layout = pre.layout
    dims = spec.example_shape()
    if len(dims) != 4:
        raise InputError(f"input {spec.text()}: image data needs a 4-D input (N,C,H,W or N,H,W,C)")
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if pre.resize:
        height, width = pre.resize
    color = pre.color or ("gray" if channels == 1 else "rgb")
    try:
        img: Image.Image = Image.open(file)
        img = img.convert("L" if color == "gray" else "RGB")
    except Exception as exc:
        raise InputError(f"image {file} cannot be read: {exc}") from None
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if color == "bgr":
        arr = arr[:, :, ::-1]
    arr = (arr * pre.scale).astype(np.float32)
    if pre.mean is not None:
        arr = arr - np.asarray(pre.mean, dtype=np.float32)
    if pre.std is not None:
        arr = np.divide(arr, np.asarray(pre.std, dtype=np.float32), dtype=np.float32)
    if layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return arr.astype(np.float32)


def _class_index(names: list[str]) -> dict[str, int]:
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def list_images(path: Path, limit: int | None = None) -> tuple[list[Path], list[int]]:
    """The image files ``load_images`` reads, in its order, and their labels (empty when unlabelled), without
    opening any image: cheap enough to check a labelled set before anything is converted."""
    files: list[Path] = []
    labels: list[int] = []
    if path.is_file() and path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
        if rows and rows[0][0].strip().lower() in ("file", "path", "filename"):
            rows = rows[1:]
        names = sorted({r[1].strip() for r in rows if len(r) > 1})
        index = _class_index(names)
        for r in rows:
            if len(r) < 2:
                raise InputError(f"{path}: row {r} is not 'file,label'")
            files.append((path.parent / r[0].strip()).resolve())
            labels.append(index[r[1].strip()])
    elif path.is_dir():
        subdirs = sorted(d for d in path.iterdir() if d.is_dir())
        if subdirs:
            index = _class_index([d.name for d in subdirs])
            for d in subdirs:
                for f in sorted(d.iterdir()):
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        files.append(f)
                        labels.append(index[d.name])
        else:
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise InputError(f"data path {path} does not exist or is not a folder or .csv")
    if not files:
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    if limit is not None and len(files) > limit:
        # A stable spread over classes rather than the first class only.
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in picks]
        labels = [labels[i] for i in picks] if labels else []
    return files, labels


def load_images(path: Path, specs: list[TensorSpec], pre: ImagePreprocess, limit: int | None = None) -> DataSet:
    """A folder of images (flat: unlabelled; class sub-folders: labelled) or a CSV of file,label."""
    if len(specs) != 1:
        raise InputError(f"{path}: image data feeds a model with one input, this one has {len(specs)}")
    files, labels = list_images(path, limit)
    batch = np.stack([_image_array(f, specs[0], pre) for f in files])
    label_arr = np.asarray(labels, dtype=np.int64) if labels else None
    kind = "labelled images" if labels else "images"
    return DataSet({specs[0].name: batch}, label_arr, f"{kind} {path} ({len(files)} files)")


@dataclass(frozen=True)
class LabelledSplit:
    """A labelled set divided into a tuning part (what accuracy-aware INT8 steps may look at) and a held-out
    part (what the report's accuracy and the accuracy gate are measured on); disjoint, together the whole set.
    Indices are positions in the set's load order (class folders, then files, sorted; or CSV rows)."""

    fraction: float
    tuning: tuple[int, ...]
    held_out: tuple[int, ...]
    rule: str

    @property
    def size(self) -> int:
        return len(self.tuning) + len(self.held_out)

    def describe(self, name: str) -> str:
        return (f"{name}: {self.size} samples, {len(self.tuning)} for int8 tuning ({self.rule}), "
                f"{len(self.held_out)} held out for accuracy")


def split_labelled(labels: Sequence[int], fraction: float, field: str = "data.tuning_fraction") -> LabelledSplit:
    """Split a labelled set per class: within each class (in load order) sample i goes to tuning when
    floor((i+1)*fraction) > floor(i*fraction), so fraction 0.5 tunes on every 2nd sample of each class and
    every class keeps its share in both parts. Labelled folders are ordered by class, so a "first N" split
    would tune on some classes and judge on others. Deterministic: no seed, the same files give the same split.

    Raises InputError (naming ``field``) when a class is too small to give both parts a sample."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"{field}={fraction}: must be between 0 and 1 (exclusive)")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    tuning: list[int] = []
    eps = 1e-9  # 0.1 * 10 must floor to 1, not 0.999...
    for label, members in sorted(by_class.items()):
        picked = [idx for k, idx in enumerate(members)
                  if math.floor((k + 1) * fraction + eps) > math.floor(k * fraction + eps)]
        if not picked or len(picked) == len(members):
            need = next(m for m in itertools.count(2) if 0 < math.floor(m * fraction + eps) < m)
            raise InputError(
                f"{field}={fraction} splits every class of the labelled set between int8 tuning and held-out "
                f"accuracy: class {label} has {len(members)} sample(s), too few for both parts (at least {need})",
                hint=f"add labelled samples, change {field} (--tuning-fraction), or raise data.validation_samples "
                     "if set")
        tuning.extend(picked)
    tuning.sort()
    chosen = set(tuning)
    held_out = tuple(i for i in range(len(labels)) if i not in chosen)
    step = 1 / fraction
    rule = (f"every {round(step)}{_ordinal(round(step))} sample per class" if abs(step - round(step)) < 1e-6
            else f"{fraction:.0%} of each class, evenly spread")
    return LabelledSplit(fraction, tuple(tuning), held_out, rule)


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def array_shapes(path: Path) -> dict[str | None, tuple[int, ...]]:
    """Shapes of the arrays in a ``.npy`` (key None) or ``.npz`` from their headers, without reading the data."""
    try:
        if path.suffix.lower() == ".npy":
            return {None: tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)}
        shapes: dict[str | None, tuple[int, ...]] = {}
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                              else np.lib.format.read_array_header_2_0(fh))
                shapes[member[:-4]] = tuple(header[0])
        return shapes
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"data file {path} cannot be read as .npy/.npz: {exc}") from None


def check_data(path: Path, specs: list[TensorSpec], flag: str) -> None:
    """What ``load_data`` would refuse, found from file listings and array headers only (no image is opened, no
    array read), so bad data is exit 2 before anything is converted rather than an error after it."""
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist")
    if path.suffix.lower() in (".npy", ".npz"):
        shapes = array_shapes(path)
        if None in shapes:
            if len(specs) != 1:
                raise InputError(f"{flag} {path}: a .npy file feeds one input, the model has {len(specs)}",
                                 hint="use a .npz with one array per input name")
            shapes = {specs[0].name: shapes[None]}
        missing = [s.name for s in specs if s.name not in shapes]
        if missing:
            raise InputError(f"{flag} {path}: no array for input(s) {', '.join(missing)}; it has "
                             f"{', '.join(str(k) for k in shapes) or 'none'}",
                             hint="name each array after the model input it feeds")
        for spec in specs:
            if len(shapes[spec.name]) != len(spec.shape):
                raise InputError(f"{flag} {path}: array '{spec.name}' has shape {shapes[spec.name]}, input "
                                 f"{spec.text()} needs {len(spec.shape)} dims")
        return
    if len(specs) != 1:
        raise InputError(f"{flag} {path}: image data feeds a model with one input, this one has {len(specs)}",
                         hint="give a .npz with one array per input name")
    if len(specs[0].shape) != 4:
        raise InputError(f"{flag} {path}: image data needs a 4-D input (N,C,H,W or N,H,W,C), not {specs[0].text()}",
                         hint="give .npy/.npz arrays instead")
    list_images(path)


def load_data(path: Path, specs: list[TensorSpec], pre: ImagePreprocess | None = None,
              limit: int | None = None) -> DataSet:
    """Pick the reader by what ``path`` is."""
    if path.suffix.lower() in (".npy", ".npz"):
        return load_arrays(path, specs).take(limit)
    return load_images(path, specs, pre or ImagePreprocess(), limit)
