"""A model that per-tensor INT8 cannot quantize everywhere: the accuracy-aware OpenVINO INT8 test case.

``outlier_conv_digits`` is the trained digits CNN (recipes/models/digits_cnn.py) with one channel of its first
BatchNorm scaled up by OUTLIER_SCALE and the second conv's weights reading that channel scaled down by the same
factor. ReLU commutes with a positive scale, so the float model computes the same function (top-1 identical on
the digits validation set). But the activation feeding the second conv now has one channel whose range is
OUTLIER_SCALE times the others: a per-tensor int8 quantizer on that activation (what NNCF puts there) spends
its 256 levels on the outlier and rounds the other 15 channels to zero, and accuracy collapses. Keeping that
conv (``node_Conv_*`` feeding on the outlier) in float restores it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
CONVCLI_INPUTS = ["x:batch=2x1x8x8:float32"]
OUTLIER_CHANNEL = 3
OUTLIER_SCALE = 2000.0


def _digits_module():  # type: ignore[no-untyped-def]
    path = ROOT / "recipes/models/digits_cnn.py"
    spec = importlib.util.spec_from_file_location("convcli_test_digits_cnn", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outlier_conv_digits() -> nn.Module:
    """The trained digits CNN with an outlier channel at the second conv's input (same float function)."""
    model = _digits_module().build_trained()
    bn1: nn.BatchNorm2d = model.features[1]
    conv2: nn.Conv2d = model.features[3]
    with torch.no_grad():
        bn1.weight[OUTLIER_CHANNEL] *= OUTLIER_SCALE
        bn1.bias[OUTLIER_CHANNEL] *= OUTLIER_SCALE
        conv2.weight[:, OUTLIER_CHANNEL] /= OUTLIER_SCALE
    return model.eval()
