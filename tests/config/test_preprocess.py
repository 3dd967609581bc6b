"""Preprocessing keys in the config: their bounds, and filling them in from a given source
(freezetune.config.resolve_data; reading the weights is freezetune.models')."""

from __future__ import annotations

import pytest

from freezetune.config import ConfigError, DataConfig, Source, from_dict, resolve_data


def cfg(**sections: dict) -> object:
    return from_dict({"name": "p", **sections})


def test_resolve_data_says_where_each_value_came_from_as_a_typed_source() -> None:
    base = {
        "image_size": 224,
        "resize_size": 256,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "augment": "flip_crop",
    }
    data, sources = resolve_data(DataConfig(image_size=112, augment="none"), base, "torchvision:W")
    assert (data.image_size, data.resize_size, data.interpolation, data.augment) == (112, 128, "bicubic", "none")
    assert sources["image_size"] == sources["augment"] == Source("config")
    assert sources["mean"] == Source("weights", "torchvision:W")
    assert sources["resize_size"] == Source("weights", "torchvision:W", scaled=(256, 224))
    assert [str(sources[k]) for k in ("augment", "mean", "resize_size")] == [
        "config",
        "torchvision:W",
        "torchvision:W (scaled 256/224)",
    ]
    assert sources["resize_size"].origin == "torchvision:W"
    _, defaults = resolve_data(DataConfig(dataset="fashion_mnist"))
    assert {str(s) for s in defaults.values()} == {"fashion_mnist default"}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"mean": [0.5, 0.5]}, "data.mean: [0.5, 0.5] needs 3 values"),
        ({"std": [0.5, 0.0, 0.5]}, "data.std: [0.5, 0.0, 0.5] must be > 0"),
        ({"image_size": 64, "resize_size": 48}, "data.resize_size: 48 is smaller than data.image_size 64"),
        ({"augment": "mixup"}, "data.augment: 'mixup' is not one of none, flip_crop, trivialaugment"),
        ({"augment": True}, "data.augment: a choice now, not a switch: 'flip_crop' for what true meant; one of none, "),
        ({"augment": False}, "data.augment: a choice now, not a switch: 'none' for what false meant"),
        ({"interpolation": "lanczos"}, "data.interpolation: 'lanczos' is not one of bilinear, bicubic, nearest"),
    ],
)
def test_bad_preprocessing_keys_are_config_errors(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(data=data)
    assert fragment in str(err.value)
