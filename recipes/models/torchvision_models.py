"""torchvision classifiers with random weights (no download), made to behave like trained ones for parity.

Two things make a randomly initialised torchvision model useless for checking a conversion:
- some zero-initialise their classifier head: every output is 0 and every parity check passes trivially, so
  zero heads get small random weights;
- BatchNorm's initial running statistics (mean 0, variance 1) do not match the activations random weights
  produce: in eval mode they shrink layer by layer (MobileNetV3-small's logits come out near 1e-15, below
  fp16's smallest number, so fp16 and int8 "fail" and fp32 "passes" on numbers that are all ~0). The running
  statistics are therefore re-estimated from a few random batches (train-mode forward passes, no gradient),
  as one would after pruning: activations keep a trained model's scale.
"""

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


def recalibrate_batchnorm(model: nn.Module, size: int = 224, batches: int = 2, batch: int = 8) -> nn.Module:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand((batch, 3, size, size), generator=gen))
    return model


def input_size(name: str) -> int:
    """The image side a torchvision classifier is run at: the smallest crop size any of its published weights
    was evaluated at (read from the weights' metadata; nothing is downloaded). For ViTs that is the only size the
    ``weights=None`` architecture accepts (its position embeddings are built for 224); for the others it is the
    size the model was trained for (299 for Inception v3, 240-600 for EfficientNet B1-B7, 256 for Swin v2)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name)
    return min(int(w.transforms.keywords.get("crop_size", 224)) for w in weights)


def by_name(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = reinit_zero_heads(torchvision.models.get_model(name, weights=None))
    return recalibrate_batchnorm(model, input_size(name)).eval()


def resnet18() -> nn.Module:
    return by_name("resnet18")


def mobilenet_v3_small() -> nn.Module:
    return by_name("mobilenet_v3_small")
