"""A small transformer encoder classifier over token ids, with dynamic batch and sequence length.

Random weights (seeded): for numeric parity and latency, not accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

CONVCLI_INPUTS = ["input_ids:batch=2xseq=16:int64:0..1000"]


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 512, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


def build() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer().eval()
