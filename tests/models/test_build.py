"""Weights loading: strict everywhere but the head, which is replaced when it must be."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models._api import WeightsEnum

from freezetune.config import ConfigError, ModelConfig
from freezetune.models import build_model, load_state_dict_file


def resnet18_state(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes).state_dict()


def body_keys(sd: dict) -> list[str]:
    return [k for k in sd if not k.startswith("fc.")]


def test_no_weights_means_everything_is_new() -> None:
    model, report = build_model(ModelConfig(arch="resnet18"), 4)
    assert report.source is None and report.loaded == [] and report.new == list(model.state_dict())
    assert model.fc.out_features == 4 and report.head == "fc"


@pytest.mark.parametrize("wrap", [False, True], ids=["raw_state_dict", "freezetune_checkpoint"])
def test_file_with_another_class_count_replaces_only_the_head(tmp_path: Path, wrap: bool) -> None:
    source = resnet18_state(10)
    path = tmp_path / "w.pt"
    torch.save({"model": source, "config": {}, "epoch": 3} if wrap else source, path)
    model, report = build_model(ModelConfig(arch="resnet18", weights=str(path)), 5)
    assert report.new == ["fc.weight", "fc.bias"]
    assert report.loaded == body_keys(source)
    state = model.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in report.loaded)
    assert state["fc.weight"].shape == (5, 512)


def test_reset_head_reinitialises_a_head_of_the_same_shape(tmp_path: Path) -> None:
    source = resnet18_state(5)
    torch.save(source, tmp_path / "w.pt")
    kept, r1 = build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "w.pt")), 5)
    fresh, r2 = build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "w.pt"), reset_head=True), 5)
    assert "fc.weight" in r1.loaded and torch.equal(kept.fc.weight, source["fc.weight"])
    assert r2.new == ["fc.weight", "fc.bias"] and not torch.equal(fresh.fc.weight, source["fc.weight"])


def test_shape_mismatch_outside_the_head_is_an_error(tmp_path: Path) -> None:
    source = resnet18_state(10)
    source["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grey-input stem
    torch.save(source, tmp_path / "w.pt")
    with pytest.raises(
        ConfigError, match=r"conv1.weight: checkpoint shape \(64, 1, 7, 7\) != model shape \(64, 3, 7, 7\)"
    ):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "w.pt")), 10)


def test_another_architecture_is_an_error(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="in the checkpoint but not in resnet18"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "w.pt")), 10)


def test_missing_tensor_outside_the_head_is_an_error(tmp_path: Path) -> None:
    source = resnet18_state(10)
    del source["layer1.0.bn1.running_var"]
    torch.save(source, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="layer1.0.bn1.running_var: missing from the checkpoint"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "w.pt")), 10)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights: file not found"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "nope.pt")), 10)


class Payload:  # not plain data: weights_only=True must refuse to build it
    pass


def test_files_are_loaded_with_weights_only(tmp_path: Path) -> None:
    torch.save({"model": resnet18_state(2), "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match=r"holds more than tensors and plain data.*Payload") as refused:
        load_state_dict_file(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(refused.value)  # never torch's advice to turn the check off
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable torch file") as refused:
        load_state_dict_file(tmp_path / "junk.pt")
    assert "weights_only=False" not in str(refused.value)


@pytest.mark.parametrize("name", ["DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"])
def test_torchvision_weights_go_through_the_weights_api(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # No network here: stand in for the hub download, but keep torchvision's enum lookup real.
    asked = []
    imagenet = resnet18_state(1000, seed=1)

    def fake_get_state_dict(self: WeightsEnum, *args: object, **kwargs: object) -> dict:
        asked.append(str(self))
        return collections.OrderedDict(imagenet)

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model, report = build_model(ModelConfig(arch="resnet18", weights=name), 3)
    assert asked == ["ResNet18_Weights.IMAGENET1K_V1"]
    assert report.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert report.new == ["fc.weight", "fc.bias"] and len(report.loaded) == len(imagenet) - 2
    assert torch.equal(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])


def test_head_of_other_architectures_is_found_and_replaced(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict()
    torch.save(source, tmp_path / "m.pt")
    model, report = build_model(ModelConfig(arch="mobilenet_v3_small", weights=str(tmp_path / "m.pt")), 7)
    assert report.head == "classifier.3" and report.new == ["classifier.3.weight", "classifier.3.bias"]
    assert torch.equal(model.classifier[0].weight, source["classifier.0.weight"])
