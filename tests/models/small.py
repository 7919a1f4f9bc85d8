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


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return Branchy().eval()


def two_outputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoOutputs().eval()


def raises() -> nn.Module:
    raise RuntimeError("checkpoint server unreachable")


def not_a_module() -> object:
    return {"weights": 1}
