"""Tiny models that exercise specific paths (fallback exporter, several outputs, failing factories)."""

from __future__ import annotations

import torch
from torch import nn


class Branchy(nn.Module):
    """Data-dependent Python control flow: torch.export (dynamo) cannot capture it, TorchScript tracing can
    (it records the branch taken), so this model exercises the fallback exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > -1e9:  # always true for our inputs; data-dependent for the exporter
            return self.a(x)
        return self.b(x)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = torch.relu(self.conv(x))
        return feat, self.fc(feat.mean(dim=(2, 3)))


class TokenBag(nn.Module):
    """Token ids (vocabulary 100) -> mean embedding -> 3 scores: a 2-D int64 input with dynamic length."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids).mean(dim=1))


class Addcmul(nn.Module):
    """A conv followed by ``torch.addcmul``: pnnx's TorchScript frontend leaves ``aten::addcmul`` unmapped (no ncnn
    layer), while the ONNX exporter decomposes it into Mul and Add, which pnnx's ONNX frontend maps. The model for
    NcnnFromPytorch's ONNX route."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.addcmul(y, y, torch.sigmoid(y), value=0.5)
        return self.fc(y.mean(dim=(2, 3)))


def addcmul() -> nn.Module:
    torch.manual_seed(0)
    return Addcmul().eval()


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return Branchy().eval()


def two_outputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoOutputs().eval()


def token_bag() -> nn.Module:
    torch.manual_seed(0)
    return TokenBag().eval()


def raises() -> nn.Module:
    raise RuntimeError("checkpoint server unreachable")


def not_a_module() -> object:
    return {"weights": 1}


def outlier_digits() -> nn.Module:
    """The trained digits CNN with one channel of its second conv scaled up 2000x and the classifier's weights
    for that channel scaled down by the same factor. ReLU and max-pooling commute with a positive scale, so the
    float model computes the same function; but one activation channel now spans a range 2000x the others, so
    per-tensor int8 of that activation rounds the other 31 channels to nothing. The model for accuracy-aware
    INT8: it needs at least one layer kept in float."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("convcli_test_digits_cnn", root / "recipes/models/digits_cnn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_trained()
    channel, factor = 5, 2000.0
    bn, fc = model.features[4], model.classifier[1]
    with torch.no_grad():
        bn.weight[channel] *= factor
        bn.bias[channel] *= factor
        per_channel = fc.in_features // bn.num_features
        fc.weight[:, channel * per_channel:(channel + 1) * per_channel] /= factor
    return model.eval()
