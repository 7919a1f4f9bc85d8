"""Small models on which a careless verdict lies: a source that outputs NaN, one whose output is identically
zero, and an embedding whose argmax is a coin toss."""

from __future__ import annotations

import torch
from torch import nn


class LogShifted(nn.Module):
    """log(x - 0.5): NaN for every input value below 0.5 (half of the default random inputs in [0, 1))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 0.5)


class AllZero(nn.Module):
    """A real layer followed by a ReLU that nothing gets through: the output is exactly zero for any input, so
    any artifact that outputs zeros agrees with it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.fc.weight.fill_(-1.0)
            self.fc.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class TiedEmbedding(nn.Module):
    """A 64-d embedding whose two largest dimensions differ by ~1e-7: in fp32 the larger one depends on the input,
    while fp16 weights (spacing ~1e-6 at 1e-3) round their weights to the same values, so its argmax is a coin
    toss against the source's while the vector agrees to cosine 0.99999+."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(16, 64)
        with torch.no_grad():
            self.proj.weight.copy_(1e-3 + torch.rand(64, 16, generator=gen) * 0.9e-3)
            self.proj.weight[1] = self.proj.weight[0] + torch.randn(16, generator=gen) * 1e-7
            self.proj.bias.copy_(-1 - torch.rand(64, generator=gen))
            self.proj.bias[0] = self.proj.bias[1] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def log_shifted() -> nn.Module:
    return LogShifted().eval()


def all_zero() -> nn.Module:
    return AllZero().eval()


def tied_embedding() -> nn.Module:
    return TiedEmbedding().eval()
