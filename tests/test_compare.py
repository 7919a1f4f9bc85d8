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
