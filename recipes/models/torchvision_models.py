"""torchvision classifiers with random weights (no download). Heads are re-initialised with random
values: some torchvision models zero-initialise them, which makes every parity check trivially pass."""

from __future__ import annotations

import torch
from torch import nn

CONVCLI_INPUTS = ["x:batch=2x3x224x224:float32"]


def reinit_zero_heads(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Linear) and float(module.weight.detach().abs().sum()) == 0.0:
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
    return model


def by_name(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return reinit_zero_heads(torchvision.models.get_model(name, weights=None)).eval()


def resnet18() -> nn.Module:
    return by_name("resnet18")


def mobilenet_v3_small() -> nn.Module:
    return by_name("mobilenet_v3_small")
