"""The data a job measures on: parity inputs, the labelled set and calibration samples, read on first use."""

from __future__ import annotations

from dataclasses import dataclass

from convcli.core.errors import InputError
from convcli.core.tensors import TensorSpec
from convcli.parity.data import DataSet, load_data, load_images, random_data
from convcli.recipes.schema import JobSpec


@dataclass
class JobData:
    parity: DataSet
    labelled: DataSet | None
    calibration: DataSet | None


def load_job_data(spec: JobSpec, inputs: list[TensorSpec]) -> JobData:
    d = spec.data
    parity = (load_data(d.parity, inputs, d.preprocess, d.samples) if d.parity
              else random_data(inputs, d.samples, d.seed))
    labelled = None
    if d.validation is not None:
        labelled = load_images(d.validation, inputs, d.preprocess, d.validation_samples)
        if labelled.labels is None:
            raise InputError(f"validation data {d.validation} has no labels",
                             hint="use class sub-folders or a CSV of file,label")
    calibration = (load_data(d.calibration, inputs, d.preprocess, d.calibration_samples)
                   if d.calibration else None)
    return JobData(parity, labelled, calibration)


def batch_sizes(inputs: list[TensorSpec], spec: JobSpec) -> tuple[int, list[int]]:
    """Parity batch and latency batches: a static first dim is the only size the model takes."""
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    static = first.size if first is not None and not first.dynamic else None
    if static is not None:
        for b in spec.latency.batches or []:
            if b != static:
                raise InputError(f"latency batch {b}: the model's batch dimension is fixed to {static}")
        return static, [static]
    return min(spec.data.samples, 16), list(spec.latency.batches or [1])


class LazyData:
    """Parity, labelled and calibration data, read on first use (a fully cached run never reads it)."""

    def __init__(self, spec: JobSpec, inputs: list[TensorSpec]) -> None:
        self.spec, self.inputs = spec, inputs
        self._data: JobData | None = None

    def get(self) -> JobData:
        if self._data is None:
            self._data = load_job_data(self.spec, self.inputs)
        return self._data


