"""Preprocessing resolution (freezetune.checks.resolve): the config, else the weights
(torchvision's enum metadata or a freezetune model.pt), else the dataset; never a download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from freezetune.checks import as_resolved, resolve
from freezetune.config import Preprocessing, Source, from_dict, to_dict

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def cfg(**sections: dict) -> object:
    return from_dict({"name": "p", **sections})


def test_torchvision_weights_give_their_own_transforms_without_a_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("resolving preprocessing must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    resolved, sources = resolve(cfg(model={"weights": "DEFAULT"}, data={"dataset": "imagefolder"}))
    assert Preprocessing.of(resolved.data) == Preprocessing(
        224, 256, "bilinear", tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "flip_crop"
    )
    assert set(sources.values()) == {Source("weights", "torchvision:ResNet18_Weights.IMAGENET1K_V1")}


@pytest.mark.parametrize(
    "arch, weights, size, resize, interpolation",
    [
        ("efficientnet_b0", "IMAGENET1K_V1", 224, 256, "bicubic"),
        ("convnext_tiny", "DEFAULT", 224, 236, "bilinear"),
        ("swin_t", "Swin_T_Weights.IMAGENET1K_V1", 224, 232, "bicubic"),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 384, 384, "bicubic"),
    ],
)
def test_each_weights_enum_brings_its_sizes_and_interpolation(
    arch: str, weights: str, size: int, resize: int, interpolation: str
) -> None:
    data = resolve(cfg(model={"arch": arch, "weights": weights}))[0].data
    assert (data.image_size, data.resize_size, data.interpolation) == (size, resize, interpolation)


def test_a_chosen_image_size_keeps_the_weights_margin_and_the_rest() -> None:
    resolved, sources = resolve(cfg(model={"weights": "DEFAULT"}, data={"image_size": 160, "mean": [0.5] * 3}))
    data = resolved.data
    assert (data.image_size, data.resize_size) == (160, 183)  # round(160 * 256 / 224)
    assert data.mean == [0.5] * 3 and data.std == IMAGENET_STD
    assert sources["image_size"] == sources["mean"] == Source("config")
    assert sources["resize_size"] == Source("weights", "torchvision:ResNet18_Weights.IMAGENET1K_V1", (256, 224))
    assert str(sources["resize_size"]) == "torchvision:ResNet18_Weights.IMAGENET1K_V1 (scaled 256/224)"
    assert sources["resize_size"].origin == "torchvision:ResNet18_Weights.IMAGENET1K_V1"


@pytest.mark.parametrize(
    "dataset, size, resize, mean",
    [("fake", 32, 32, [0.0] * 3), ("fashion_mnist", 32, 32, [0.286] * 3), ("imagefolder", 224, 256, IMAGENET_MEAN)],
)
def test_without_weights_the_dataset_decides(dataset: str, size: int, resize: int, mean: list[float]) -> None:
    resolved, sources = resolve(cfg(data={"dataset": dataset}))
    assert (resolved.data.image_size, resolved.data.resize_size, resolved.data.augment) == (size, resize, "none")
    assert resolved.data.mean == mean and set(sources.values()) == {Source("dataset", dataset)}
    assert str(sources["mean"]) == f"{dataset} default"


def test_a_resolved_config_resolves_to_itself_and_loads_back_the_same() -> None:
    once, _ = resolve(cfg(model={"weights": "DEFAULT"}))
    twice, sources = resolve(once)
    assert twice == once and {str(s) for s in sources.values()} == {"config"}
    assert resolve(from_dict(to_dict(once)))[0].data == once.data  # config.yaml reproduces it


def test_a_freezetune_model_file_passes_its_preprocessing_on(tmp_path: Path) -> None:
    trained = Preprocessing(48, 56, "bicubic", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "trivialaugment")
    torch.save({"model": {}, "preprocessing": trained.to_json()}, tmp_path / "model.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"no torch file")
    resolved, sources = resolve(cfg(model={"weights": str(tmp_path / "model.pt")}, data={"augment": "none"}))
    assert Preprocessing.of(resolved.data) == Preprocessing(48, 56, "bicubic", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "none")
    assert str(sources["image_size"]) == str(tmp_path / "model.pt") and str(sources["augment"]) == "config"
    for other in ("plain.pt", "junk.pt"):  # says nothing (junk is reported when the model loads it)
        data = resolve(cfg(model={"weights": str(tmp_path / other)}))[0].data
        assert (data.image_size, data.mean) == (32, [0.0] * 3)


def test_a_resolved_config_is_passed_down_as_it_is() -> None:
    checked = resolve(cfg(model={"weights": "DEFAULT"}))
    assert as_resolved(checked) is checked  # resolved once: the commands pass it down
    again = as_resolved(checked.cfg)  # a plain config is resolved: here it is its own resolution
    assert again.cfg == checked.cfg and {str(s) for s in again.sources.values()} == {"config"}
