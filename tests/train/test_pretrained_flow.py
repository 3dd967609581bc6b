"""A user's folder of images with torchvision's pretrained weights, offline: the weights
come from a temporary hub cache, the preprocessing from the weights enum; classes are
chosen by name; a fine-tune of the result inherits its preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from freezetune.checks import check_dict
from freezetune.config import ConfigError, from_dict
from freezetune.train import run


def png_folder(root: Path, classes: list[str], n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """ResNet18_Weights.IMAGENET1K_V1 in a temporary torch hub cache (random values, the real file name)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch_home" / "hub" / "checkpoints" / Path(url).name)
    return state


# Not conftest's tiny run: a folder of images at 64 px and torchvision's weights from the
# temporary hub cache.
def config(tmp_path: Path, name: str, **model: object) -> dict:
    return {
        "name": name,
        "model": {"arch": "resnet18", **model},
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "images"), "batch_size": 4, "image_size": 64},
        "freeze": {"preset": "linear_probe"},
        "train": {"epochs": 1, "output_dir": str(tmp_path / name), "device": "cpu"},
    }


def test_pretrained_weights_bring_their_preprocessing_and_a_fine_tune_inherits_it(
    tmp_path: Path, hub: dict[str, torch.Tensor]
) -> None:
    png_folder(tmp_path / "images", ["cat", "dog", "owl"])
    tree = config(tmp_path, "first", weights="DEFAULT")
    tree["data"]["classes"] = ["owl", "cat"]
    summary = run(from_dict(tree)).summary
    assert summary.weights_source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert len(summary.loaded_tensors) == len(hub) - 2  # all but the 1000-class head
    assert summary.classes == ["owl", "cat"] and summary.train_samples == 6
    pre = summary.preprocessing
    assert (pre["image_size"], pre["resize_size"], pre["interpolation"]) == (64, 73, "bilinear")  # 64 * 256/224
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["augment"] == "flip_crop"
    assert pre["from"]["mean"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1" and pre["from"]["image_size"] == "config"
    # Random crops of the input every epoch: the frozen backbone's output cannot be cached, and the record says why.
    assert summary.cache["used"] is False and "data.augment: flip_crop" in summary.cache["reason"]

    model_pt = tmp_path / "first" / "model.pt"
    tree = config(tmp_path, "second", weights=str(model_pt), reset_head=True)
    del tree["data"]["image_size"]
    tree["data"]["classes"] = ["dog", "owl"]
    again = run(from_dict(tree)).summary
    assert {k: again.preprocessing[k] for k in pre if k != "from"} == {k: pre[k] for k in pre if k != "from"}
    assert set(again.preprocessing["from"].values()) == {str(model_pt)}
    saved = json.loads(json.dumps(torch.load(tmp_path / "second" / "model.pt", weights_only=True)["classes"]))
    assert saved == ["dog", "owl"]


def test_a_class_name_the_folder_lacks_lists_the_folder_classes_and_writes_nothing(tmp_path: Path) -> None:
    png_folder(tmp_path / "images", ["cat", "dog"], n=1)
    tree = config(tmp_path, "typo")
    tree["data"]["classes"] = ["Cat", "dog"]
    with pytest.raises(ConfigError) as err:
        run(from_dict(tree))
    assert str(err.value) == (  # one problem: one line
        f"data.classes: ['Cat'] not among the class folders of {tmp_path / 'images'}/train "
        "(case matters: 'Cat' is 'cat'); it has 2: cat, dog"
    )
    assert not (tmp_path / "typo").exists()


def test_fashion_mnist_classes_by_name() -> None:
    from freezetune.data import class_indices, class_names

    data = from_dict({"name": "n", "data": {"dataset": "fashion_mnist", "classes": ["sneaker", "Ankle boot"]}}).data
    assert class_indices(data) == [7, 9] and class_names(data) == ["Sneaker", "Ankle boot"]
    with pytest.raises(ConfigError, match=r"data.classes: \['sandals'\] not among Fashion-MNIST's classes"):
        check_dict({"name": "n", "data": {"dataset": "fashion_mnist", "classes": ["sneaker", "sandals"]}})
    with pytest.raises(ConfigError, match="fake data has no class names"):
        check_dict({"name": "n", "data": {"classes": ["a", "b"]}})
