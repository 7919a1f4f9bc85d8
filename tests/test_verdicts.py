"""End to end through ``convcli convert``: the cases where a verdict used to lie (issue: a verdict that cannot lie)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FAST

MODELS = Path(__file__).resolve().parent / "models" / "verdicts.py"


def test_a_source_that_outputs_nan_fails_with_the_output_named(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:log_shifted", "--input", "x:batch=2x8:float32", "--to", "onnx,openvino",
              "-o", out, "--no-latency")
    assert res.exit_code == 1, res.output
    report = res.report(out)
    for row in report["artifacts"]:
        assert row["status"] == "failed"
        assert any("source output 'output' is non-finite" in f for f in row["failures"]), row["failures"]
        parity = row["parity"]
        assert parity["max_abs_err"] is not None and parity["cosine_min"] is not None  # finite numbers, not nan
    assert "non-finite" in res.output


def test_an_all_zero_output_is_flagged_and_fails_with_strict(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["convert", f"{MODELS}:all_zero", "--input", "x:batch=2x8:float32", "--to", "onnx", "-o", out,
            "--no-latency"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    row = res.report(out)["artifacts"][0]
    assert row["status"] == "passed" and any("all zero" in f for f in row["flags"])
    assert "degenerate reference" in res.output
    res = cli(*args, "--strict")
    assert res.exit_code == 1
    assert res.report(out)["artifacts"][0]["status"] == "failed"


def test_an_embedding_is_not_judged_by_argmax_unless_declared_a_classifier(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["convert", f"{MODELS}:tied_embedding", "--input", "x:batch=2x16:float32", "--to", "onnx:fp16",
            "-o", out, "--no-latency", "--samples", "32"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    row = res.report(out)["artifacts"][0]
    output = row["parity"]["outputs"][0]
    assert output["kind"] == "tensor" and "declare --output-kind output:logits" in output["kind_reason"]
    # Old main failed it on raw top-1 (0.50); the flips are the source's own near-ties, counted as such.
    assert output["top1_ties_excused"] >= 8 and output["cosine_min"] > 0.9999
    res = cli(*args, "--output-kind", "output:embedding")
    assert res.exit_code == 0 and res.report(out)["artifacts"][0]["parity"]["outputs"][0]["kind"] == "embedding"
    # Declared a classifier, top-1 is judged, but these flips are the source's own near-ties (its two best values
    # differ by ~1e-7, far inside fp16's tolerance): they are excused and counted, not failed.
    res = cli(*args, "--output-kind", "output:logits")
    output = res.report(out)["artifacts"][0]["parity"]["outputs"][0]
    assert res.exit_code == 0 and output["kind"] == "logits" and output["top1_ties_excused"] > 0


def test_a_declared_kind_for_an_unknown_output_is_bad_input(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:all_zero", "--input", "x:batch=2x8:float32", "--to", "onnx", "-o", out,
              "--output-kind", "logits:logits", *FAST)
    assert res.exit_code == 2 and "no output 'logits'" in res.output and "its outputs are output" in res.output
    assert not out.exists()
    res = cli("convert", f"{MODELS}:all_zero", "--to", "onnx", "-o", out, "--output-kind", "output:argmax")
    assert res.exit_code == 2 and "KIND one of logits" in res.output


def test_bad_data_is_refused_before_anything_is_converted(cli, tmp_path: Path) -> None:
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong=np.zeros((4, 8), np.float32))
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:all_zero", "--input", "x:batch=2x8:float32", "--to", "onnx", "-o", out,
              "--data", bad)
    assert res.exit_code == 2 and "--data" in res.output and "no array for input(s) x" in res.output
    assert "OnnxFromPytorch" not in res.output and not out.exists()
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.zeros((4, 8, 1), np.float32))
    res = cli("convert", f"{MODELS}:all_zero", "--input", "x:batch=2x8:float32", "--to", "onnx", "-o", out,
              "--calibration", flat)
    assert res.exit_code == 2 and "has shape (4, 8, 1)" in res.output and not out.exists()
