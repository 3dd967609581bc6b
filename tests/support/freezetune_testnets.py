"""The network most tests train: torchvision's resnet18 at an eighth of its width.

``model.arch: "freezetune_testnets:resnet18_narrow"`` (tests/conftest.py puts this folder on
sys.path and on PYTHONPATH, so subprocesses find it too). It is resnet18 module for module (the
same names, types, depth, strides and BatchNorm layers, so every rule, preset and cache cut that
names resnet18's layers means the same here), with 8, 16, 32 and 64 channels where resnet18 has
64, 128, 256 and 512: 1/64 of the parameters (175 thousand against 11.2 million) and of the
convolutions' work. Model files, weight hashes, optimizer steps and random initialisation scale
with the parameters; at full width they were a third of the suite's time (14.8 GB written per
run of it). Tests about torchvision itself (weights enums, preprocessing, the architecture's
name) use ``resnet18``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision


def resnet18_narrow(num_classes: int, width_divisor: int = 8) -> nn.Module:
    """torchvision's ``resnet18(num_classes=...)`` with every channel count divided by
    ``width_divisor`` (the 3 input channels and the class count stay), initialised as torchvision
    initialises resnet18: Kaiming-normal convolutions, BatchNorm at 1 and 0, the default Linear."""
    with torch.device("meta"):  # the full-width layers are replaced before any storage exists
        model = torchvision.models.resnet18(num_classes=num_classes)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                cin = child.in_channels if child.in_channels == 3 else child.in_channels // width_divisor
                new: nn.Module = nn.Conv2d(
                    cin,
                    child.out_channels // width_divisor,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    bias=child.bias is not None,
                )
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(child, nn.BatchNorm2d):
                new = nn.BatchNorm2d(child.num_features // width_divisor)
            elif isinstance(child, nn.Linear):
                new = nn.Linear(child.in_features // width_divisor, child.out_features)
            else:
                continue
            setattr(parent, name, new)
    return model
