"""A small CNN for divergence localization tests: four Conv layers in a row, so an altered middle Conv has
agreeing inputs and a drifting output, and everything downstream drifts too."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Block(3, 8)
        self.mid = Block(8, 8)
        self.deep = Block(8, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.deep(self.mid(self.stem(x))))
        return y.mean(dim=(2, 3))


def build() -> nn.Module:
    torch.manual_seed(0)
    return SmallCnn().eval()
