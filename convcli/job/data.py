"""The data a job measures on: parity inputs, the labelled set and calibration samples, read on first use."""

from __future__ import annotations

from dataclasses import dataclass

from convcli.core.errors import InputError
from convcli.core.tensors import TensorSpec
from convcli.parity.data import (
    DataSet,
    LabelledSplit,
    check_data,
    list_images,
    load_data,
    load_images,
    random_data,
    split_labelled,
)
from convcli.recipes.schema import JobSpec


@dataclass
class JobData:
    """``labelled`` is what accuracy is measured on (the held-out part when the set is split); ``tuning`` is the
    only part of the labelled set that steps see (``StepContext.validation``)."""

    parity: DataSet
    labelled: DataSet | None
    calibration: DataSet | None
    tuning: DataSet | None = None


def check_job_data(spec: JobSpec, inputs: list[TensorSpec]) -> None:
    """Every data path the job names fits the model's inputs, checked before any conversion (exit 2)."""
    d = spec.data
    if d.validation is not None and d.validation.suffix.lower() in (".npy", ".npz"):
        raise InputError(f"--validation {d.validation}: the labelled set is images with labels, not arrays",
                         hint="class sub-folders of images, or a CSV of file,label")
    for flag, path in (("--data", d.parity), ("--validation", d.validation), ("--calibration", d.calibration)):
        if path is not None:
            check_data(path, inputs, flag)


def plan_split(spec: JobSpec, tunes: bool) -> LabelledSplit | None:
    """The tuning/held-out split of ``data.validation`` when a planned step tunes on the labelled set (else
    None: the whole set measures accuracy). Lists files only, so a set too small to split is exit 2 before
    anything is converted."""
    d = spec.data
    if not tunes or d.validation is None:
        return None
    _, labels = list_images(d.validation, d.validation_samples)
    if not labels:
        raise InputError(f"validation data {d.validation} has no labels",
                         hint="use class sub-folders or a CSV of file,label")
    return split_labelled(labels, d.tuning_fraction)


def load_job_data(spec: JobSpec, inputs: list[TensorSpec], split: LabelledSplit | None = None) -> JobData:
    d = spec.data
    parity = (load_data(d.parity, inputs, d.preprocess, d.samples) if d.parity
              else random_data(inputs, d.samples, d.seed))
    labelled = tuning = None
    if d.validation is not None:
        labelled = load_images(d.validation, inputs, d.preprocess, d.validation_samples)
        if labelled.labels is None:
            raise InputError(f"validation data {d.validation} has no labels",
                             hint="use class sub-folders or a CSV of file,label")
        if split is not None:
            assert split.size == len(labelled), "the split was planned on a different listing of the set"
            whole = labelled.description
            tuning = labelled.subset(split.tuning, f"{whole}: int8 tuning part, {len(split.tuning)} samples "
                                                   f"({split.rule}; the other {len(split.held_out)} held out)")
            labelled = labelled.subset(split.held_out, f"{whole}: held-out part, {len(split.held_out)} samples "
                                                       f"(not seen by int8 tuning)")
    calibration = (load_data(d.calibration, inputs, d.preprocess, d.calibration_samples)
                   if d.calibration else None)
    return JobData(parity, labelled, calibration, tuning)


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
    """Parity, labelled and calibration data, read on first use (a fully cached run never reads it). With a
    ``split``, steps get the tuning part (``tuning``) and accuracy is measured on the rest (``labelled``)."""

    def __init__(self, spec: JobSpec, inputs: list[TensorSpec], split: LabelledSplit | None = None) -> None:
        self.spec, self.inputs, self.split = spec, inputs, split
        self._data: JobData | None = None

    def get(self) -> JobData:
        if self._data is None:
            self._data = load_job_data(self.spec, self.inputs, self.split)
        return self._data

    def for_steps(self) -> DataSet | None:
        """The labelled samples a step may tune on: the tuning part, or the whole set when nothing is split
        (no planned step reads it then, so it is never handed out)."""
        data = self.get()
        return data.tuning if self.split is not None else data.labelled


