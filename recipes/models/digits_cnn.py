"""The bundled model: a small CNN for scikit-learn's 8x8 digits (10 classes).

Input: 1x8x8 grayscale in [0, 1] (PNG pixel / 255). Trained weights: digits_cnn.pt (train_digits.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CONVCLI_INPUTS = ["x:batch=2x1x8x8:float32"]
WEIGHTS = Path(__file__).with_name("digits_cnn.pt")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """The architecture with random weights; pass --weights recipes/models/digits_cnn.pt for the trained one."""
    torch.manual_seed(0)
    return DigitsCNN()


def build_trained() -> nn.Module:
    """The architecture with the committed trained weights."""
    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
