"""Tiny detection- and segmentation-like models: the output layouts of torchvision's dense models, in seconds.

``tiny_detector`` ends in ``torchvision.ops.batched_nms`` like a real detector, so how many detections come out
depends on the image: one (K, 6) tensor [x1, y1, x2, y2, score, class] per image (batch 1).
``tiny_segmenter`` returns (N, classes, H, W) per-pixel logits, upsampled to the input's size."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 3
GRID = 8  # anchors on an 8x8 grid over a 32x32 image


class TinyDetector(nn.Module):
    """A conv head predicts per anchor a box offset and class scores; the boxes are decoded, thresholded and
    non-maximum-suppressed per class, as torchvision's detectors do."""

    def __init__(self, score_thresh: float = 0.7, iou_thresh: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 4 + CLASSES, 1)
        self.score_thresh, self.iou_thresh = score_thresh, iou_thresh
        step = 32 / GRID
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() * step + step / 2
        self.register_buffer("anchors", torch.cat([centres - 2 * step, centres + 2 * step], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torchvision

        out = self.head(self.body(x))[0].flatten(1).T  # (anchors, 4 + classes) for the one image
        boxes = self.anchors + out[:, :4] * 4.0
        scores = (out[:, 4:] * 10).sigmoid()  # spread the scores of a random head
        score, label = scores.max(1)
        keep = score > self.score_thresh
        boxes, score, label = boxes[keep], score[keep], label[keep]
        keep = torchvision.ops.batched_nms(boxes, score, label, self.iou_thresh)
        return torch.cat([boxes[keep], score[keep, None], label[keep, None].float()], 1)


def tiny_detector() -> nn.Module:
    return TinyDetector().eval()


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, CLASSES, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def tiny_segmenter() -> nn.Module:
    return TinySegmenter().eval()
