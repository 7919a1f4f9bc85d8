"""The source's own float32 rounding error, measured against the same model computed in float64: the floor of the
fp32 elementwise tolerance on deep networks.

Why: fp32's absolute term (1e-4 of the output's range) assumes a correct conversion differs from the source by a
few roundings. Over 100+ layers with large inner activations that is false for PyTorch itself. Measured on
torchvision models with random weights and re-estimated BatchNorm statistics (AMD EPYC, docs/coverage.md):
resnet152's PyTorch float32 logits are 1.0e-3 off the float64 result on logits of range 1.9 (atol 1.9e-4), and
ONNX Runtime and OpenVINO land 1.07-1.58x that far from PyTorch's float32 output on resnet101/152,
wide_resnet101_2, resnext101 and inception_v3. No fixed atol can both accept those and reject a real error that
is smaller than the source's own rounding: on resnet152 one filter of the last conv scaled by 1.2 moves the logits
by 4.6e-4, less than PyTorch's own float32 error, so no float32 comparison can see it.

The rule: when an fp32 comparison fails its elementwise limit, the source is run once more in float64 on the
same inputs, and each output's atol becomes ``max(atol, rounding_factor x max|source32 - source64|)``. Two
float32 computations each as accurate as the source's differ by at most twice its error, hence the default
factor 2. The floor is used only when the source's float32 output still points the same way as its float64 one
(cosine >= ROUNDING_COSINE); otherwise the source's float32 output is not a reliable reference and the plain
tolerance stands. The cosine and top-1 checks are never loosened.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convcli.parity.compare import KindChoice, ParityResult, Tolerance, compare_outputs

# A failing comparison whose every sample still has this cosine is rounding that crossed the tolerance, not a
# baked-in size or a wrong op, which move outputs far off direction.
ROUNDING_COSINE = 0.99999


def rounding_floors(ref32: list[np.ndarray], ref64: list[np.ndarray] | None) -> list[float | None] | None:
    """Per output, ``max|ref32 - ref64|``: the source's own float32 error. None for an output that is not a float,
    differs in shape, is non-finite, or whose float32 result no longer points the float64 one's way."""
    if ref64 is None or len(ref64) != len(ref32):
        return None
    floors: list[float | None] = []
    for r32, r64 in zip(ref32, ref64, strict=True):
        a, b = np.asarray(r32), np.asarray(r64)
        if a.shape != b.shape or not np.issubdtype(a.dtype, np.floating) or not np.issubdtype(b.dtype, np.floating):
            floors.append(None)
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if a.size == 0 or not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
            floors.append(None)
            continue
        n = a.shape[0] if a.ndim else 1
        fa, fb = a64.reshape(n, -1), b64.reshape(n, -1)
        na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
        cos = np.where((na == 0) & (nb == 0), 1.0, (fa * fb).sum(axis=1) / np.maximum(na * nb, 1e-300))
        floors.append(float(np.abs(a64 - b64).max()) if float(cos.min()) >= ROUNDING_COSINE else None)
    return floors


def compare_with_rounding_floor(names: list[str], ref: list[np.ndarray], got: list[np.ndarray], tol: Tolerance,
                                kinds: list[KindChoice] | None = None,
                                rows: tuple[list[list[int]], list[list[int]]] | None = None,
                                float64: Callable[[], list[np.ndarray] | None] | None = None) -> ParityResult:
    """``compare_outputs``; when that fails and the tolerance has a rounding factor, the source's float64 outputs
    (``float64()``, computed only now: a passing comparison costs nothing) set each output's floor and the
    outputs are judged again with them. ``float64`` is None, or returns None, when the source cannot run in
    float64 (a runtime without doubles, an op without a float64 kernel): the plain result stands."""
    result = compare_outputs(names, ref, got, tol, kinds, rows)
    if result.passed or float64 is None or not tol.rounding_factor or tol.atol is None:
        return result
    floors = rounding_floors(ref, float64())
    if floors is None or all(f is None for f in floors):
        return result
    return compare_outputs(names, ref, got, tol, kinds, rows, rounding=floors)


def rounding_record(result: ParityResult) -> dict[str, float]:
    """The largest rounding floor a comparison used, for a step's check record (empty when none was measured)."""
    floors = [o.rounding_floor for o in result.outputs if o.rounding_floor is not None]
    return {"rounding_floor": max(floors)} if floors else {}
