"""The chest radiograph classifier of ``cxr-findings``: a small 2D ResNet.

The shipped weights (``ai_models/weights/cxr_findings.pt``) are a state dict
of :func:`build_network` with :data:`ARCHITECTURE`'s arguments; state dicts
of :data:`MONAI_RESNET` (the earlier architecture) still load.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ARCHITECTURE", "ARCHITECTURES", "MONAI_RESNET", "build_network"]

ARCHITECTURE: dict[str, Any] = {
    "name": "torchvision.models.resnet.ResNet",
    "kwargs": {
        "block": "basic",
        "layers": [1, 1, 1, 1],
        "num_classes": 4,
        "in_channels": 1,
    },
}
"""The network: torchvision ``ResNet`` with BasicBlock and one block per stage
(a ResNet-10, 64-128-256-512 channels), its first convolution taking
``in_channels`` grey channels."""

MONAI_RESNET: dict[str, Any] = {
    "name": "monai.networks.nets.ResNet",
    "kwargs": {
        "block": "basic",
        "layers": [2, 2, 2, 2],
        "block_inplanes": [16, 32, 64, 128],
        "spatial_dims": 2,
        "n_input_channels": 1,
        "conv1_t_size": 7,
        "conv1_t_stride": 2,
        "num_classes": 4,
    },
}
"""The earlier sidecar architecture (MONAI ``ResNet``, quarter-width ResNet-18,
2D), still loaded for site state dicts written for it; its ``kwargs`` are the
defaults of such a sidecar."""

ARCHITECTURES: dict[str, dict[str, Any]] = {
    ARCHITECTURE["name"]: ARCHITECTURE,
    MONAI_RESNET["name"]: MONAI_RESNET,
}
"""Architecture names a weights sidecar may give, with their default arguments."""


def build_network(kwargs: dict[str, Any] | None = None, name: str | None = None) -> torch.nn.Module:
    """The (untrained) classifier of :data:`ARCHITECTURE` (or with ``kwargs``).

    Parameters
    ----------
    kwargs:
        Arguments of the architecture; default ``ARCHITECTURE["kwargs"]``.
        For torchvision's ``ResNet``: ``block`` (``"basic"`` or
        ``"bottleneck"``), ``layers`` (blocks per stage), ``num_classes``,
        ``in_channels`` (channels of the first convolution, default 1) and
        any other keyword argument of ``torchvision.models.resnet.ResNet``
        (e.g. ``width_per_group``).  For MONAI's ``ResNet``: its own
        arguments.
    name:
        A key of :data:`ARCHITECTURES`; default ``ARCHITECTURE["name"]``.

    Raises
    ------
    ValueError
        For an unknown architecture or block.
    TypeError
        For arguments the architecture does not take.
    """
    name = name or ARCHITECTURE["name"]
    kw = dict(kwargs if kwargs is not None else ARCHITECTURES.get(name, {}).get("kwargs", {}))
    if name == MONAI_RESNET["name"]:
        from monai.networks.nets import ResNet as MonaiResNet

        return MonaiResNet(**kw)
    if name != ARCHITECTURE["name"]:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    blocks: dict[str, type[BasicBlock] | type[Bottleneck]] = {
        "basic": BasicBlock,
        "bottleneck": Bottleneck,
    }
    block = str(kw.pop("block", "basic"))
    if block not in blocks:
        raise ValueError(f"block must be one of {sorted(blocks)}, got {block!r}")
    in_channels = int(kw.pop("in_channels", 1))
    layers = [int(n) for n in kw.pop("layers")]
    net = ResNet(blocks[block], layers, **kw)
    if in_channels != net.conv1.in_channels:
        net.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        torch.nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net
