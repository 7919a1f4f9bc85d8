"""Pruning the PyTorch source before export: real channel removal, permanent sparsity, every target from it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FAST


def test_structured_30_percent_prunes_channels_and_every_target_follows(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    case = catalogue["digits_cnn"]
    res = cli("convert", *case.args(), "--to", "onnx,openvino,ncnn,tflite", "--prune", "structured:0.3",
              "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    p = report["source"]["pruning"]
    # conv->conv and conv->linear weights shrink on both sides: about (1 - 0.3)^2 of the parameters remain
    assert 0.40 < p["params_after"] / p["params_before"] < 0.60
    assert 0.40 < p["macs_after"] / p["macs_before"] < 0.60
    assert p["state_dict_bytes_after"] < 0.65 * p["state_dict_bytes_before"]
    assert p["before"]["accuracy"] > 0.95 and p["after"]["accuracy"] is not None
    assert report["source"]["params"] == p["params_after"]
    for row in report["artifacts"]:
        assert row["status"] == "passed", row  # parity against the pruned source
    assert "pruned (structured 30%)" in res.output


def test_unstructured_pruning_is_permanent_sparsity(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx", "--prune", "unstructured:0.5",
              "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    p = res.report(out)["source"]["pruning"]
    assert 0.45 < p["sparsity"] < 0.55
    assert p["params_after"] == p["params_before"]


def test_recovery_finetuning_uses_the_training_set(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx", "--prune", "structured:0.5",
              "--train", root / "calibration_data/digits/train", "--finetune-epochs", "2", "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    p = res.report(out)["source"]["pruning"]
    assert len(p["finetune"]["loss_per_epoch"]) == 2
    assert p["after"]["accuracy"] > 0.9


def test_pruning_errors(cli, catalogue, tmp_path: Path) -> None:
    res = cli("convert", *catalogue["digits_cnn"].args(), "--prune", "random:0.3", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "structured or unstructured" in res.output
    res = cli("convert", *catalogue["digits_cnn"].args(), "--prune", "structured:0.3", "--finetune-epochs", "1",
              "-o", tmp_path / "o")
    assert res.exit_code == 2
    assert "training set" in " ".join(res.output.split())


def test_a_cached_pruned_source_timed_again_times_its_unpruned_model_in_the_same_rounds(cli, catalogue,
                                                                                       tmp_path: Path) -> None:
    """A second run that adds a target re-times the cached source (a speedup divides numbers from the same
    rounds); the pruning summary's after-latency is that same measurement, and its before-latency was timed
    beside it, never a pair left from the first run."""
    out = tmp_path / "out"
    args = [*catalogue["digits_cnn"].args(), "--prune", "structured:0.3", "-o", out, *FAST]
    first = cli("convert", *args, "--to", "onnx")
    assert first.exit_code == 0, first.output
    first_run = first.report(out)["source"]["measured"]["run_id"]
    second = cli("convert", *args, "--to", "onnx,openvino")
    assert second.exit_code == 0, second.output
    src = second.report(out)["source"]
    p = src["pruning"]
    assert src["measured"]["run_id"] != first_run  # the source was timed again, beside openvino
    assert p["after"]["latency_ms"] == src["latency_ms"], (p["after"], src["latency_ms"])
    assert p["before"]["latency_ms"] is not None
