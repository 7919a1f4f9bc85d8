"""Bad input: one line naming the thing and what to do, the documented exit code, no traceback, and
nothing written to OUTDIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.catalogue import DIGITS, HERE, ROOT


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.py:build"], "does not exist"),
        ([f"{HERE}/small.py:nope"], "has no attribute 'nope'"),
        ([f"{HERE}/small.py:raises", "-i", "x:1x4:float32"], "checkpoint server unreachable"),
        ([f"{HERE}/small.py:not_a_module"], "not a torch.nn.Module"),
        ([DIGITS.spec, "--to", "onnx,coreml"], "unknown format 'coreml'"),
        ([DIGITS.spec, "--input", "x:batch=2x3x9x9:float32"], "does not run on inputs"),
        ([DIGITS.spec, "--to", "onnx:int4"], "precision 'int4' is not one of fp32, fp16, bf16, int8, auto"),
        ([DIGITS.spec, "--precision", "fp32,int2"], "precision 'int2'"),
        ([DIGITS.spec, "--weights", "nope.pt"], "weights file nope.pt does not exist"),
        ([DIGITS.spec, "--weights", f"{ROOT}/recipes/models/digits_cnn.py"], "cannot be read"),
        ([DIGITS.spec, "-O", "onnx.fancy=1"], "'fancy': not supported"),
        ([DIGITS.spec, "-O", "OnnxFromPytorch.opset=99"], "opset"),
        ([DIGITS.spec, "--validation", "nowhere"], "does not exist"),
        ([DIGITS.spec, "--input", "x"], "expected NAME:SHAPE"),
        (["model.xyz"], "cannot tell what kind of model"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "out"
    res = cli("convert", *args, "-o", out)
    assert res.exit_code == 2, res.output
    assert fragment in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_onnx_file(cli, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not a protobuf at all" * 10)
    res = cli("convert", bad, "--to", "onnx", "-o", tmp_path / "out")
    assert res.exit_code == 2
    assert "broken.onnx" in res.output and "Traceback" not in res.output


def test_debug_shows_the_traceback(cli, tmp_path: Path) -> None:
    res = cli("--debug", "convert", f"{HERE}/small.py:raises", "-i", "x:1x4:float32", "-o", tmp_path / "o")
    assert res.exit_code == 2
    assert "Traceback" in res.output


def test_conversion_failure_exits_3_and_keeps_other_targets(cli, tmp_path: Path) -> None:
    # The torchscript exporter cannot export the branchy model with torch.export's dynamo capture disabled,
    # so asking for dynamo only fails the ONNX step: exit 3, a one-line error in the report.
    out = tmp_path / "out"
    res = cli("convert", f"{HERE}/small.py:branchy", "-i", "x:batch=2x4:float32", "--exporter", "dynamo",
              "--to", "onnx", "-o", out, "--no-latency")
    assert res.exit_code == 3, res.output
    row = res.report(out)["artifacts"][0]
    assert row["status"] == "error" and "OnnxFromPytorch failed" in row["error"]
    assert "\n" not in row["error"]
    assert not (out / "onnx-fp32").exists()


def test_labelled_set_too_small_to_split_exits_2_before_converting(cli, tmp_path: Path) -> None:
    """An accuracy-aware int8 step tunes on part of each class and accuracy is measured on the rest: a class
    with one sample cannot serve both, so the job stops at once naming the field (exit 2, nothing written)."""
    tiny = tmp_path / "data" / "val"
    for label, names in {"0": ["0078", "0202"], "1": ["0001"]}.items():
        (tiny / label).mkdir(parents=True)
        for name in names:
            source = next((ROOT / "calibration_data/digits/val" / label).glob("*.png"))
            (tiny / label / f"{name}.png").write_bytes(source.read_bytes())
    out = tmp_path / "run" / "out"
    out.parent.mkdir()
    res = cli("convert", *DIGITS.args()[:3], "--validation", tiny, "--to", "onnx:int8", "--calibration",
              ROOT / "calibration_data/digits/calib", "-o", out, "--no-latency")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "data.tuning_fraction=0.5" in text and "class 1 has 1 sample(s)" in text and "--tuning-fraction" in text
    assert "Traceback" not in res.output and list(out.parent.iterdir()) == []

    res = cli("convert", *DIGITS.args()[:3], "--validation", tiny, "--to", "onnx", "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output  # no step tunes on the set: all of it measures accuracy, as before
    report = res.report(out)
    assert report["source"]["accuracy_samples"] == 3 and report["settings"]["accuracy_split"] is None

    res = cli("convert", *DIGITS.args()[:3], "--tuning-fraction", "1.5", "-o", tmp_path / "bad")
    assert res.exit_code == 2 and "tuning_fraction" in res.output, res.output
