"""The mass detector of ``mg-masses``: a small RetinaNet on one grey image.

The shipped weights (``ai_models/weights/mg_masses.pt``) are a state dict of
:func:`build_detector` with :data:`ARCHITECTURE`'s arguments.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHITECTURE", "MammoBackbone", "build_detector"]

ARCHITECTURE: dict[str, Any] = {
    "name": "dicom-node.TinyRetinaNet",
    "kwargs": {
        "channels": [16, 24, 48, 64, 96],
        "fpn_channels": 48,
        "head_convs": 2,
        "anchor_sizes": [[6, 9, 13], [18, 26, 36], [48, 68, 96]],
        "aspect_ratios": [0.6, 1.0, 1.6],
        "num_classes": 1,
        "work_size": 256,
    },
}
"""The network: torchvision RetinaNet with a small from-scratch backbone."""


class MammoBackbone(nn.Module):
    """Five stride-2 stages and a feature pyramid on strides 8, 16 and 32."""

    def __init__(self, channels: Sequence[int], fpn_channels: int) -> None:
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        c = [int(v) for v in channels]
        if len(c) != 5:
            raise ValueError(f"channels needs 5 values, got {c}")

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(
            nn.Conv2d(1, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True)
        )
        self.layer2 = stage(c[0], c[1])
        self.layer3 = stage(c[1], c[2])
        self.layer4 = stage(c[2], c[3])
        self.layer5 = stage(c[3], c[4])
        self.fpn = FeaturePyramidNetwork([c[2], c[3], c[4]], int(fpn_channels))
        self.out_channels = int(fpn_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c3 = self.layer3(self.layer2(self.stem(x)))
        c4 = self.layer4(c3)
        c5 = self.layer5(c4)
        out: dict[str, torch.Tensor] = self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))
        return out


def build_detector(kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The RetinaNet of :data:`ARCHITECTURE` (``kwargs`` override its arguments).

    Inputs are lists of ``(1, H, W)`` float tensors in ``0..1`` whose longer
    side is ``work_size`` (no resizing inside); outputs (eval mode) are
    ``{"boxes": (n, 4) x0 y0 x1 y1, "scores": (n,), "labels": (n,)}`` per
    image, in input pixel coordinates.
    """
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead

    kw = dict(ARCHITECTURE["kwargs"])
    kw.update(kwargs or {})
    sizes = tuple(tuple(int(s) for s in level) for level in kw["anchor_sizes"])
    ratios = tuple(float(r) for r in kw["aspect_ratios"])
    anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))
    n_anchors = anchors.num_anchors_per_location()[0]
    fpn = int(kw["fpn_channels"])
    head = RetinaNetHead(
        fpn,
        n_anchors,
        int(kw["num_classes"]),
        norm_layer=partial(nn.GroupNorm, max(1, fpn // 4)),
    )
    n_convs = int(kw["head_convs"])
    head.classification_head.conv = head.classification_head.conv[:n_convs]
    head.regression_head.conv = head.regression_head.conv[:n_convs]
    size = int(kw["work_size"])
    return RetinaNet(
        MammoBackbone(kw["channels"], fpn),
        num_classes=int(kw["num_classes"]),
        min_size=size,
        max_size=size,
        image_mean=[0.5],
        image_std=[0.25],
        anchor_generator=anchors,
        head=head,
        score_thresh=0.05,
        nms_thresh=0.3,
        detections_per_img=20,
        topk_candidates=300,
    )
