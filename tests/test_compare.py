import numpy as np
import pytest

from convcli.parity.compare import DEFAULT_TOLERANCES, Tolerance, accuracy, compare_outputs


def test_identical_outputs_pass_with_zero_error() -> None:
    ref = [np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)]
    result = compare_outputs(["logits"], ref, [ref[0].copy()], DEFAULT_TOLERANCES["fp32"])
    assert result.passed
    assert result.max_abs_err == 0.0
    assert result.cosine_min == pytest.approx(1.0)
    assert result.top1_agreement == 1.0


def test_perturbed_output_fails_and_names_the_output() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(8, 10)).astype(np.float32)
    got = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)
    result = compare_outputs(["logits"], [ref], [got], DEFAULT_TOLERANCES["fp32"])
    assert not result.passed
    assert "logits" in result.message and "atol" in result.message
    assert 0 < result.max_abs_err < 1
    assert result.rel_l2_err is not None and result.rel_l2_err > 0


def test_every_failing_output_is_listed_and_shape_mismatch_is_caught() -> None:
    a = np.ones((2, 3), np.float32)
    result = compare_outputs(["a", "b"], [a, a], [a * 2, np.ones((2, 4), np.float32)], Tolerance(atol=1e-3))
    assert not result.passed
    assert "a:" in result.message and "b: shape" in result.message


def test_top1_and_cosine_gates() -> None:
    ref = np.eye(4, dtype=np.float32)
    got = ref[[1, 0, 2, 3]]
    result = compare_outputs(["p"], [ref], [got], Tolerance(min_top1=0.9))
    assert result.top1_agreement == 0.5
    assert not result.passed


def test_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, np.array([1, 0, 0])) == 2 / 3


def test_fp16_absolute_term_scales_with_the_output_range() -> None:
    """Logits up to ~4 off by 0.025 everywhere (what fp16 does to a MobileNetV2) pass fp16 and fail fp32; the
    same error on outputs of magnitude 0.1 fails fp16 too, and a 0.1 error on the large logits fails it."""
    rng = np.random.default_rng(0)
    big = rng.uniform(-4, 4, size=(8, 1000)).astype(np.float32)
    big[np.arange(8), np.arange(8)] = 5.0  # a clear top-1 per sample, as a trained classifier has
    noise = np.where(rng.random(big.shape) < 0.5, 0.025, -0.025).astype(np.float32)
    assert compare_outputs(["y"], [big], [big + noise], DEFAULT_TOLERANCES["fp16"]).passed
    assert not compare_outputs(["y"], [big], [big + noise], DEFAULT_TOLERANCES["fp32"]).passed
    small = big / 40
    result = compare_outputs(["y"], [small], [small + noise], DEFAULT_TOLERANCES["fp16"])
    assert not result.passed and "atol=0.01" in result.message
    assert not compare_outputs(["y"], [big], [big + 4 * noise], DEFAULT_TOLERANCES["fp16"]).passed


def test_nan_in_the_source_is_named_with_its_share_and_metrics_stay_finite() -> None:
    ref = np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32)
    result = compare_outputs(["y"], [ref], [ref.copy()], DEFAULT_TOLERANCES["fp32"])
    out = result.outputs[0]
    assert out.source_nonfinite is not None and "'y'" in out.source_nonfinite and "25%" in out.source_nonfinite
    assert out.nonfinite is None  # the artifact reproduces the source's NaN exactly
    assert all(np.isfinite(v) for v in (result.max_abs_err, result.cosine_min, result.rel_l2_err))


def test_nan_where_the_source_is_finite_fails_the_output() -> None:
    ref = np.ones((2, 3), np.float32)
    got = ref.copy()
    got[0, 1] = np.nan
    result = compare_outputs(["y"], [ref], [got], DEFAULT_TOLERANCES["int8"])
    assert not result.passed and "non-finite values differ" in result.message
    assert np.isfinite(result.cosine_min) and np.isfinite(result.max_abs_err)


def test_degenerate_references_are_recognised() -> None:
    from convcli.parity.compare import degenerate_reasons

    assert "all zero" in degenerate_reasons(np.zeros((4, 3)), 1e-4)[0]
    assert "same for all 4 samples" in degenerate_reasons(np.tile(np.arange(3.0), (4, 1)), 1e-4)[0]
    assert "too small" in degenerate_reasons(np.random.default_rng(0).normal(size=(4, 3)) * 1e-6, 1e-4)[0]
    assert degenerate_reasons(np.random.default_rng(0).normal(size=(4, 3)), 1e-4) == []


def test_top1_is_judged_only_for_classifier_kinds() -> None:
    from convcli.parity.compare import KindChoice, assume_kind

    ref = np.eye(4, dtype=np.float32) * 0.1
    got = ref[[1, 0, 2, 3]]
    tol = Tolerance(min_top1=0.9)
    unknown = compare_outputs(["output"], [ref], [got], tol)
    assert unknown.passed and unknown.outputs[0].kind == "tensor" and unknown.outputs[0].top1_agreement == 0.5
    declared = compare_outputs(["output"], [ref], [got], tol, [KindChoice(kind="logits", declared=True)])
    assert not declared.passed and "top-1 agreement 0.500" in declared.message
    assert assume_kind("logits", ref).kind == "logits"
    assert assume_kind("output", ref, labelled=True).kind == "logits"
    assert assume_kind("output", np.full((3, 4), 0.25)).kind == "probabilities"
    assert assume_kind("output", ref, declared="embedding").declared


def test_a_tolerance_override_merges_field_by_field() -> None:
    from convcli.parity.compare import merge_tolerance

    merged = merge_tolerance("fp16", Tolerance(atol=0.05))
    assert merged.atol == 0.05 and merged.min_cosine == DEFAULT_TOLERANCES["fp16"].min_cosine
    assert merged.min_top1 == DEFAULT_TOLERANCES["fp16"].min_top1 and merged.atol_per_range
    assert merge_tolerance("fp16", Tolerance(min_top1=None)).min_top1 is None  # null disables one check


def _logits_of_magnitude_ten(rng: np.random.Generator) -> np.ndarray:
    ref = np.clip(rng.normal(scale=3.0, size=(8, 1000)), -9.0, 9.0).astype(np.float32)
    ref[np.arange(8), np.arange(8)] = 10.0  # a clear top-1 per sample, as a trained classifier has
    return ref


def test_fp32_absolute_term_scales_with_the_output_range() -> None:
    """Kernel-reordering noise (3e-4 everywhere, as inception_v3's ONNX export shows on logits up to ~7) on
    logits of magnitude ~10 passes fp32; the fixed 1e-4 it replaces failed it. The same noise on outputs of
    magnitude ~1 still fails: below magnitude 1 the limit is the old 1e-4."""
    rng = np.random.default_rng(0)
    ref = _logits_of_magnitude_ten(rng)
    noise = np.where(rng.random(ref.shape) < 0.5, 3e-4, -3e-4).astype(np.float32)
    result = compare_outputs(["logits"], [ref], [ref + noise], DEFAULT_TOLERANCES["fp32"])
    assert result.passed, result.message
    old = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)
    assert not compare_outputs(["logits"], [ref], [ref + noise], old).passed
    small = ref / 10
    result = compare_outputs(["logits"], [small], [small + noise], DEFAULT_TOLERANCES["fp32"])
    assert not result.passed and "atol=0.0001," in result.message


def test_fp32_one_wrong_channel_of_large_logits_still_fails() -> None:
    """One class's logit off by 0.02 in every sample (a classifier row scaled by ~1%, measured on inception_v3:
    0.025) fails fp32 on top of reordering noise, although the cosine (0.99999999) cannot see it; so does one
    channel off by 0.5% of the range. The scaled term is 1e-4 of the output's largest value: 1e-3 here."""
    rng = np.random.default_rng(1)
    ref = _logits_of_magnitude_ten(rng)
    noise = np.where(rng.random(ref.shape) < 0.5, 3e-4, -3e-4).astype(np.float32)
    for err in (0.02, 0.05):
        got = ref + noise
        got[:, 500] += err
        result = compare_outputs(["logits"], [ref], [got], DEFAULT_TOLERANCES["fp32"])
        assert not result.passed and result.cosine_min > 0.9999, (err, result.cosine_min)
        assert "beyond atol=0.001," in result.message and "values beyond" in result.message


def test_fp32_too_small_floor_is_unchanged_by_the_scaled_term() -> None:
    """The degenerate 'too small' rule compares max|ref| with the row's effective atol, 1e-4·max(1, max|ref|):
    below magnitude 1 that is 1e-4 as before, and an output above 1 can never be at most 1e-4 of itself."""
    rng = np.random.default_rng(2)
    tiny = rng.normal(size=(4, 3)).astype(np.float32) * 1e-5
    out = compare_outputs(["y"], [tiny], [tiny.copy()], DEFAULT_TOLERANCES["fp32"]).outputs[0]
    assert any("too small" in d and "<= 0.0001" in d for d in out.degenerate), out.degenerate
    big = _logits_of_magnitude_ten(rng)
    assert compare_outputs(["y"], [big], [big.copy()], DEFAULT_TOLERANCES["fp32"]).outputs[0].degenerate == []


def test_int8_checks_size_as_well_as_direction() -> None:
    """Cosine is blind to scale: an int8 output ten times too large, or a one-value-per-sample output three times
    too large (cosine +1 per sample), fails on the relative L2 limit."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 10)).astype(np.float32)
    assert not compare_outputs(["y"], [logits], [logits * 10], DEFAULT_TOLERANCES["int8"]).passed
    scalar = rng.uniform(1, 2, size=(8, 1)).astype(np.float32)
    result = compare_outputs(["y"], [scalar], [scalar * 3], DEFAULT_TOLERANCES["int8"])
    assert not result.passed and "relative L2 error" in result.message
    assert compare_outputs(["y"], [logits], [logits * 1.02], DEFAULT_TOLERANCES["int8"]).passed


def test_integer_outputs_must_be_equal() -> None:
    ids = np.arange(16, dtype=np.int64).reshape(8, 2) * 100
    off = ids.copy()
    off[0, 0] += 1  # another class id, however close the number
    for precision in ("fp32", "fp16"):
        result = compare_outputs(["ids"], [ids], [off], DEFAULT_TOLERANCES[precision])
        assert not result.passed and "integer values differ" in result.message
    assert compare_outputs(["ids"], [ids], [off], DEFAULT_TOLERANCES["int8"]).passed  # 1 of 16 <= 10% at int8
    many = ids + 1
    assert not compare_outputs(["ids"], [ids], [many], DEFAULT_TOLERANCES["int8"]).passed


def test_an_empty_output_is_compared_without_crashing_and_flagged() -> None:
    empty = np.zeros((0, 4), np.float32)
    result = compare_outputs(["boxes"], [empty], [empty.copy()], DEFAULT_TOLERANCES["fp32"])
    assert result.outputs[0].degenerate == ["empty: it has no values on the parity data"]


def test_top1_does_not_count_the_sources_own_near_ties() -> None:
    from convcli.parity.compare import KindChoice

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 10)).astype(np.float32)
    ref[0, :2] = [3.0, 3.0 - 1e-5]  # a tie in the source: fp16 may break it either way
    got = ref + 2e-5 * np.where(np.arange(10) == 1, 1, 0)
    logits = [KindChoice(kind="logits", declared=True)]
    result = compare_outputs(["y"], [ref], [got.astype(np.float32)], DEFAULT_TOLERANCES["fp16"], logits)
    assert result.passed and result.outputs[0].top1_ties_excused == 1 and result.top1_agreement == 1.0
    flipped = ref.copy()
    flipped[:4] = flipped[:4, ::-1]  # real disagreements are still counted
    assert not compare_outputs(["y"], [ref], [flipped], DEFAULT_TOLERANCES["fp16"], logits).passed


def test_fp32_atol_is_floored_at_twice_the_sources_own_float32_error_and_no_further() -> None:
    """A deep network's float32 output is itself off the exact (float64) result; an artifact may differ from the
    source by up to twice that error (two equally accurate computations), and by no more. The float64 run happens
    only when the plain limit fails, and is ignored when the source's float32 output no longer points the float64
    one's way (the source is then no reliable reference)."""
    from convcli.parity.rounding import compare_with_rounding_floor

    rng = np.random.default_rng(0)
    ref64 = rng.uniform(-2, 2, size=(4, 1000))
    ref32 = (ref64 + rng.choice([-1e-3, 1e-3], size=ref64.shape)).astype(np.float32)  # source's own error 1e-3
    tol = DEFAULT_TOLERANCES["fp32"]  # atol 2e-4 on this range
    calls: list[int] = []

    def float64() -> list[np.ndarray]:
        calls.append(1)
        return [ref64]

    assert compare_with_rounding_floor(["y"], [ref32], [ref32.copy()], tol, float64=float64).passed
    assert not calls  # a passing comparison never runs the source in float64

    within = ref32 + np.float32(1.8e-3)
    plain = compare_with_rounding_floor(["y"], [ref32], [within], tol)
    assert not plain.passed and plain.outputs[0].rounding_floor is None
    floored = compare_with_rounding_floor(["y"], [ref32], [within], tol, float64=float64)
    assert floored.passed and calls == [1]
    out = floored.outputs[0]
    assert out.rounding_floor == pytest.approx(1e-3, rel=1e-3) and out.atol == pytest.approx(2e-3, rel=1e-3)

    beyond = compare_with_rounding_floor(["y"], [ref32], [ref32 + np.float32(2.5e-3)], tol, float64=float64)
    assert not beyond.passed and "2x the source's own float32 error 0.001" in beyond.message

    # Not fp32: fp16 has no rounding factor, the float64 run is not asked for.
    assert DEFAULT_TOLERANCES["fp16"].rounding_factor is None
    # A source whose float32 result is off direction (cosine < 0.99999) is no reference: the plain limit stands.
    noisy = (ref64 + rng.normal(scale=0.05, size=ref64.shape)).astype(np.float32)
    wrong = compare_with_rounding_floor(["y"], [noisy], [noisy + np.float32(1e-3)], tol, float64=lambda: [ref64])
    assert not wrong.passed and wrong.outputs[0].rounding_floor is None


def test_float64_outputs_restore_the_model_bit_for_bit_and_decline_what_they_cannot_widen() -> None:
    import torch

    from convcli.runners.torch_runner import TorchSession
    from convcli.sources.torch_sources import float64_outputs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    (out,) = float64_outputs(model, [x]) or [None]
    assert out is not None and out.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-5)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())

    session = TorchSession(model, ["x"], threads=1)
    (wide,) = session.run_float64({"x": x.numpy()}) or [None]
    assert wide is not None and np.array_equal(wide, out)

    class FixedDtype(torch.nn.Module):  # a dtype written into the code: no float64 path
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.ones(8, 2, dtype=torch.float32)

    assert float64_outputs(FixedDtype(), [x]) is None
    assert float64_outputs(torch.nn.Linear(8, 2).half(), [x.half()]) is None
    assert float64_outputs(torch.jit.script(torch.nn.Linear(8, 2)), [x]) is None
