"""TorchScript and torch.export sources go through their own loaders and converters."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.models.small import two_outputs


def test_torchscript_source(cli, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.jit.trace(two_outputs(), torch.rand(2, 3, 8, 8)).save(str(path))
    missing = cli("convert", path, "--to", "onnx", "-o", tmp_path / "o1")
    assert missing.exit_code == 2 and "--input" in missing.output
    res = cli("convert", path, "--input", "x:batch=2x3x8x8:float32", "--to", "onnx", "-o", tmp_path / "o2",
              "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(tmp_path / "o2")
    assert report["source"]["format"] == "torchscript"
    assert report["steps"][0]["name"] == "OnnxFromTorchscript"


def test_exported_program_source_reads_its_input_shapes(cli, tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(two_outputs(), (torch.rand(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    res = cli("convert", path, "--to", "onnx", "-o", tmp_path / "o", "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(tmp_path / "o")
    assert report["source"]["format"] == "exported-program"
    assert report["source"]["inputs"][0].startswith("x:batch=")
    assert report["steps"][0]["name"] == "OnnxFromExportedProgram"
    assert report["artifacts"][0]["status"] == "passed"


def test_safetensors_weights(cli, catalogue, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    case = catalogue["digits_cnn"]
    state = torch.load(case.weights, weights_only=True)
    st = tmp_path / "w.safetensors"
    save_file(state, str(st))
    res = cli("convert", case.spec, "--weights", st, "--validation", case.validation, "--to", "onnx",
              "-o", tmp_path / "o", "--no-latency")
    assert res.exit_code == 0, res.output
    assert res.report(tmp_path / "o")["source"]["accuracy"] > 0.95
