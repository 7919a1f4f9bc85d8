"""Intermediate tensors of one model run, named in the reference ONNX graph's terms (issue 10).

When an artifact fails parity, ``parity/divergence.py`` runs the reference graph and the artifact on a few failing
samples, asks each runner for its intermediate tensors (``Runner.intermediates``) and walks them in topological
order to find the first tensor that drifts. Every runtime names its tensors differently (ONNX Runtime keeps the
ONNX names, OpenVINO keeps them as friendly/tensor names, LiteRT and ncnn rename), so each runner maps what it
captured back to the **reference ONNX tensor name**: the one vocabulary the locator compares in.

The reference graph is the fp32 ONNX model the artifact's chain started from (for a PyTorch source: the exported
and simplified ONNX; for an ONNX source: the source file). A runner receives its path as ``reference`` and may
read it (``onnx.load(reference, load_external_data=False)``) to learn the names it should map to.

Contract for an implementation (a LiteRT or ncnn runner does exactly this):

* ``feed`` is a small batch (1-4 samples) keyed by the source's input names, in the source's layout, exactly as
  ``Session.run`` receives it. A fixed-batch runtime runs it one sample at a time and joins the results with
  ``Intermediates.join``.
* ``wanted``: reference ONNX tensor names the caller wants (``None``: every tensor you can capture). Returning
  more is allowed (extras are ignored), returning fewer is expected (what you cannot match is counted, see below).
  On big graphs the locator first asks for a subset, then bisects with narrower ``wanted`` lists, so honouring it
  saves time.
* ``tensors``: backend tensor name -> numpy array for the whole batch, float32 (cast fp16/int8-dequantized data up;
  an int8 tensor must be **dequantized** with its scale/zero point, never returned raw), in the **reference ONNX
  tensor's layout**: transpose NHWC back to NCHW where the runtime changed the layout (the locator also accepts a
  rank-4 array whose (0, 3, 1, 2) transpose has the reference shape, but do it yourself when you know).
* ``order``: backend tensor names in the backend's execution (topological) order; every key of ``tensors`` appears.
* ``reference``: backend tensor name -> reference ONNX tensor name it corresponds to. Only tensors with an entry
  here are compared; a backend tensor without one is *unmatched*.
* ``info``: backend tensor name -> ``TensorInfo`` (the backend layer that produced it and its op type; source
  module/line where the runtime knows them). Optional but it makes the report readable.
* ``unmatched``: reason -> how many backend tensors had no reference name for that reason (e.g.
  ``{"fused by the converter": 12, "no ONNX name recorded": 3}``). The report prints the total and the reasons, so
  an artifact whose tensors match nothing says so in one line instead of reporting "no divergence".
* Raise ``UnavailableError`` (one line, with a hint) when the runtime cannot return intermediates at all (the
  default ``Runner.intermediates`` does); the locator then reports the row's divergence as unavailable with that
  line. Any other exception is caught by the locator and becomes a note on the row, never a crashed run.

Matching tips: onnx2tf keeps ONNX node names in TFLite tensor names (often with suffixes); pnnx/onnx2ncnn keep
ONNX output tensor names as ncnn blob names when converting from ONNX. Where a converter fuses ops (Conv+Relu),
map the fused output to the *last* ONNX tensor it covers (the Relu's output), and count the swallowed ones as
unmatched ("fused").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TensorInfo:
    """Where a captured tensor came from, in the backend's own words."""

    layer: str = ""
    op: str = ""
    module: str | None = None
    source_line: str | None = None


@dataclass
class Intermediates:
    """Intermediate tensors of one run of one model on one feed (see the module docstring for the contract)."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    reference: dict[str, str] = field(default_factory=dict)
    info: dict[str, TensorInfo] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)

    @property
    def unmatched_count(self) -> int:
        return sum(self.unmatched.values())

    def count_unmatched(self, reason: str, n: int = 1) -> None:
        self.unmatched[reason] = self.unmatched.get(reason, 0) + n

    def by_reference(self) -> dict[str, np.ndarray]:
        """Reference ONNX tensor name -> array, for every matched tensor (the first backend tensor wins when two
        map to the same reference name)."""
        out: dict[str, np.ndarray] = {}
        for name in self.order:
            ref = self.reference.get(name)
            if ref is not None and ref not in out and name in self.tensors:
                out[ref] = self.tensors[name]
        return out

    @staticmethod
    def join(parts: list[Intermediates]) -> Intermediates:
        """One Intermediates for a batch run sample by sample: arrays concatenated on axis 0, names, info and
        counts from the first part (every part ran the same graph)."""
        if not parts:
            return Intermediates()
        first = parts[0]
        tensors = {k: np.concatenate([p.tensors[k] for p in parts], axis=0) for k in first.tensors
                   if all(k in p.tensors for p in parts)}
        return Intermediates(tensors=tensors, order=[n for n in first.order if n in tensors],
                             reference=dict(first.reference), info=dict(first.info), unmatched=dict(first.unmatched))
