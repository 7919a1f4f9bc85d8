"""torchvision segmentation and detection models with random weights (no download), for conversion coverage.

Like ``torchvision_models.py`` (read its docstring): zero-initialised layers get small random weights and
BatchNorm running statistics are re-estimated on random images, so activations keep a trained model's scale
instead of vanishing layer by layer. Detectors cannot run in train mode without targets, so only their
BatchNorm layers are switched to train mode while the model runs its inference path.

Every factory takes one image tensor and returns tensors (convcli compares tensors):
- segmentation (``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``):
  the ``out`` logits (N, classes, H, W) of the model's dict, at the input's size; inputs ``x:batch=1x3x224x224``
  (``--output-kind out:segmentation`` judges the per-pixel argmax like top-1);
- detection with the full post-processing (``ssdlite320_mobilenet_v3_large``, ``retinanet_resnet50_fpn``):
  the model's resize/normalise transform, anchor decoding, score threshold, NMS and top-K for one image,
  returned as one (K, 6) tensor [x1, y1, x2, y2, score, class]; inputs ``x:1x3x320x320`` (batch 1: K varies
  per image), judged with ``--output-kind detections:detections``. Random heads score every class alike, so the
  score thresholds are lowered (``SCORE_THRESH``) until a few hundred detections per image come out: a
  comparison on zero detections proves nothing;
- ``..._head``: backbone + head only, on an already normalised 320x320 image: the raw per-anchor box
  regressions (N, anchors, 4) and class logits (N, anchors, classes), without the transform, anchor decoding
  or NMS (the part TFLite and ncnn can take: their converters have no data-dependent NMS)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

SEGMENTATION_SIZE = 224
DETECTION_SIZE = 320
# Scores of a random head sit in a narrow band (SSDlite 0.04-0.11, RetinaNet 0.0107-0.0111 at seed 0); these
# thresholds cut inside it, so the threshold is active and about a hundred or more detections per image remain
# (measured on the seeded models below; torchvision's defaults are 0.001 for SSDlite and 0.05 for RetinaNet).
SCORE_THRESH = {"ssdlite320_mobilenet_v3_large": 0.05, "retinanet_resnet50_fpn": 0.0108}


def reinit_zero_weights(model: nn.Module) -> nn.Module:
    """Small random weights for Linear/Conv layers initialised to zero (their outputs would be constant)."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and float(module.weight.detach().abs().sum()) == 0.0:
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
    return model


def recalibrate_batchnorm(model: nn.Module, run: object, size: int, batches: int = 2, batch: int = 4) -> nn.Module:
    """Re-estimate BatchNorm running statistics: ``run(images)`` runs the model in eval mode with only its
    BatchNorm layers in train mode (a cumulative average over ``batches`` random batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(batches):
            run(torch.rand((batch, 3, size, size), generator=gen))  # type: ignore[operator]
    return model.eval()


class SegmentationLogits(nn.Module):
    """The ``out`` tensor of a torchvision segmentation model's output dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def segmentation(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = reinit_zero_weights(torchvision.models.get_model(name, weights=None, weights_backbone=None))
    wrapped = SegmentationLogits(model)
    return recalibrate_batchnorm(wrapped, wrapped, SEGMENTATION_SIZE)


def fcn_resnet50() -> nn.Module:
    return segmentation("fcn_resnet50")


def deeplabv3_mobilenet_v3_large() -> nn.Module:
    return segmentation("deeplabv3_mobilenet_v3_large")


def lraspp_mobilenet_v3_large() -> nn.Module:
    return segmentation("lraspp_mobilenet_v3_large")


class DetectionsOfOneImage(nn.Module):
    """A torchvision detector on one image (1, 3, H, W): its detections as one (K, 6) tensor
    [x1, y1, x2, y2, score, class], the layout convcli's ``detections`` kind reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found = self.model([x[0]])[0]
        return torch.cat([found["boxes"], found["scores"][:, None], found["labels"][:, None].to(x.dtype)], 1)


def detector(name: str) -> nn.Module:
    """The torchvision detector ``name``, random weights, recalibrated BatchNorm, lowered score threshold."""
    import torchvision

    torch.manual_seed(0)
    kwargs: dict[str, object] = {"score_thresh": SCORE_THRESH[name]}
    if name.startswith("retinanet"):  # its transform resizes to 800 by default; keep the 320 input as is
        kwargs.update(min_size=DETECTION_SIZE, max_size=DETECTION_SIZE)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    model = reinit_zero_weights(model)
    return recalibrate_batchnorm(model, lambda images: model(list(images)), DETECTION_SIZE)


def ssdlite320_mobilenet_v3_large() -> nn.Module:
    return DetectionsOfOneImage(detector("ssdlite320_mobilenet_v3_large")).eval()


def retinanet_resnet50_fpn() -> nn.Module:
    return DetectionsOfOneImage(detector("retinanet_resnet50_fpn")).eval()


class DetectionHead(nn.Module):
    """Backbone + head of a torchvision SSD/RetinaNet: (box regressions (N, A, 4), class logits (N, A, C)) per
    anchor, before anchor decoding and NMS. The input is the already resized and normalised image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        if isinstance(features, (dict, OrderedDict)):
            features = list(features.values())
        out = self.head(features)
        return out["bbox_regression"], out["cls_logits"]


def ssdlite320_mobilenet_v3_large_head() -> nn.Module:
    return DetectionHead(detector("ssdlite320_mobilenet_v3_large")).eval()


def retinanet_resnet50_fpn_head() -> nn.Module:
    return DetectionHead(detector("retinanet_resnet50_fpn")).eval()
