"""The image transforms of a resolved preprocessing (freezetune.config.Preprocessing), in
torchvision's ``transforms.v2``.

Evaluation is torchvision's ``ImageClassification`` (what ``weights.transforms()``
returns): resize the shorter side, center crop, scale to 0..1, normalise; bitwise the
same tensors. Training replaces resize + crop with ``RandomResizedCrop`` and a
horizontal flip (``flip_crop``), optionally followed by one of torchvision's
augmentation policies, as torchvision's reference training recipes do.

Random draws come from torch's global generator, which freezetune seeds and saves in
every checkpoint: augmented runs repeat and resume exactly."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from freezetune.config import Preprocessing

__all__ = ["eval_transform", "train_transform"]


class _ScaleToUnit(v2.Transform):
    """uint8 0..255 to float32 0..1 as ``x.float().div(255)``, the arithmetic of torchvision's
    ``ImageClassification`` and ``ToTensor`` (v2.ToDtype multiplies by 1/255, which differs
    in the last bit and would make the same weights give other logits)."""

    _transformed_types = (torch.Tensor,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: D102
        return inpt.to(torch.float32).div(255) if inpt.dtype == torch.uint8 else inpt


def _tail(p: Preprocessing) -> list[v2.Transform]:
    return [v2.PILToTensor(), _ScaleToUnit(), v2.Normalize(list(p.mean), list(p.std))]


def eval_transform(p: Preprocessing) -> v2.Compose:
    """PIL image (any mode) -> normalised float tensor (3, image_size, image_size)."""
    mode = InterpolationMode(p.interpolation)
    return v2.Compose(
        [
            v2.RGB(),  # greyscale (Fashion-MNIST, scans) to three equal channels: every stem expects RGB
            v2.Resize(p.resize_size, interpolation=mode, antialias=True),
            v2.CenterCrop(p.image_size),
            *_tail(p),
        ]
    )


def train_transform(p: Preprocessing) -> v2.Compose:
    """The training transform: :func:`eval_transform` for ``augment: none``, else a random
    resized crop at ``image_size`` with a flip, and the chosen policy on top."""
    if p.augment == "none":
        return eval_transform(p)
    mode = InterpolationMode(p.interpolation)
    policy = {
        "flip_crop": [],
        "trivialaugment": [v2.TrivialAugmentWide(interpolation=mode)],
        "randaugment": [v2.RandAugment(interpolation=mode)],
        "autoaugment": [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode)],
    }[p.augment]
    return v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(p.image_size, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
            *policy,
            *_tail(p),
        ]
    )
