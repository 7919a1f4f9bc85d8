"""The baseline for convcli's overhead: the same backends called directly, no checks beyond one ORT run."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "models"))
from digits_cnn import build_trained  # noqa: E402

model = build_trained()
x = torch.rand(2, 1, 8, 8)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "m.onnx"
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["output"],
                      dynamic_shapes=({0: batch},), external_data=False)
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": x.numpy()})[0]
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4
