"""The transforms of a resolved preprocessing: evaluation is torchvision's own
weights.transforms(), bitwise; training augments reproducibly from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from freezetune.checks import resolve
from freezetune.config import AUGMENTS, Preprocessing, from_dict
from freezetune.data import eval_transform, train_transform


def photo(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize(
    "arch, weights",
    [
        ("resnet18", "IMAGENET1K_V1"),
        ("efficientnet_b0", "IMAGENET1K_V1"),
        ("convnext_tiny", "IMAGENET1K_V1"),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"),
    ],
)
def test_evaluation_is_the_weights_own_transform_bitwise(arch: str, weights: str) -> None:
    resolved = resolve(from_dict({"name": "t", "model": {"arch": arch, "weights": weights}}))[0]
    ours = eval_transform(Preprocessing.of(resolved.data))
    theirs = tvm.get_model_weights(arch)[weights].transforms()
    for h, w in [(300, 451), (97, 64)]:
        img = photo(h, w, seed=h)
        assert torch.equal(ours(img), theirs(img))


def test_grey_and_rgba_images_become_three_channels() -> None:
    p = Preprocessing(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3, "none")
    grey = eval_transform(p)(photo(40, 50, "L"))
    assert grey.shape == (3, 32, 32) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert eval_transform(p)(photo(40, 50, "RGBA")).shape == (3, 32, 32)


@pytest.mark.parametrize("augment", AUGMENTS)
def test_training_transforms_are_seeded_and_random_unless_none(augment: str) -> None:
    p = Preprocessing(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3, augment)
    tf, img = train_transform(p), photo(48, 64)

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return tf(img)

    first = draw(0)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, draw(0))  # the seed decides every draw: runs repeat and resume exactly
    if augment == "none":
        assert torch.equal(first, eval_transform(p)(img))
    else:
        assert any(not torch.equal(first, draw(s)) for s in range(1, 4))
