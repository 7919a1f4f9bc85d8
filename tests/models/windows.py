"""Tiny window-attention models built from torchvision's own classes, so their graphs carry the same 6-D window
partitions, 5-D qkv reshapes, shifted-window masks and rolls as swin_t / swin_v2_t / maxvit_t, at a size that
converts in seconds (ncnn holds at most 4-D tensors: see convcli/passes/onnx_rank.py)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import maxvit, swin_transformer


def _seeded() -> None:
    torch.manual_seed(0)


def tiny_swin() -> nn.Module:
    """Input 1x3x32x32: an 8x8 grid of 4x4 windows (shifted in the second block), then 4x4 (no shift)."""
    _seeded()
    return swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                            window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=5).eval()


def tiny_swin_v2() -> nn.Module:
    """swin_v2's blocks (cosine attention, continuous position bias MLP) at the tiny_swin size."""
    _seeded()
    return swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        stochastic_depth_prob=0.0, num_classes=5, block=swin_transformer.SwinTransformerBlockV2,
        downsample_layer=swin_transformer.PatchMergingV2).eval()


def tiny_maxvit() -> nn.Module:
    """Input 1x3x32x32: maxvit's block and grid partitions (6-D reshapes, permutes that keep no axes adjacent)."""
    _seeded()
    return maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16],
                         block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5).eval()
