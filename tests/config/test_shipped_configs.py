"""Every shipped config loads, documents its own launch command, and the four
Fashion-MNIST fine-tunes freeze exactly what their names promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch.nn as nn

from freezetune.config import from_dict, load_config, to_dict
from freezetune.train import Prepared, prepare_model

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(ROOT.joinpath("configs").rglob("*.yaml"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_glob_finds_the_shipped_configs() -> None:
    # Guards the parametrized test below against silently collecting nothing.
    names = {rel(p) for p in SHIPPED}
    assert {
        "configs/examples/fake_smoke.yaml",
        "configs/fmnist/pretrain_a.yaml",
        "configs/fmnist/full.yaml",
        "configs/fmnist/linear_probe.yaml",
        "configs/fmnist/freeze_until_layer3.yaml",
        "configs/fmnist/bitfit.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=rel)
def test_shipped_config_loads_validates_and_documents_its_command(path: Path) -> None:
    cfg = load_config(path)  # raises ConfigError on any problem
    assert cfg.name, "a shipped config must name its run"
    # Its resolved form is itself a valid config that resolves to the same thing.
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{rel(path)}: the first line must be a comment with the launch command"
    assert f"python scripts/train.py --config {rel(path)}" in first


def test_shipped_run_names_are_unique() -> None:
    # Two configs with one name would write into the same runs/<name> folder.
    names = [load_config(p).name for p in SHIPPED]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------- fine-tune plans


def fine_tune(name: str) -> Prepared:
    # weights=null: the plan depends on names only, not on the task-A checkpoint.
    cfg = load_config(ROOT / "configs" / "fmnist" / f"{name}.yaml", ["model.weights=null", "train.device=cpu"])
    p = prepare_model(cfg)
    assert p.cfg.model.arch == "resnet18"
    assert p.model.fc.out_features == 5  # data.classes [5..9]
    # The plan and the live model agree parameter by parameter.
    assert {n for n, q in p.model.named_parameters() if q.requires_grad} == set(p.plan.trainable)
    return p


def all_params(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_full_trains_everything() -> None:
    p = fine_tune("full")
    assert set(p.plan.trainable) == all_params(p.model)
    assert p.plan.frozen == []
    assert p.plan.pinned_bn == ()
    assert p.plan.numel_trainable == p.plan.numel_total == sum(q.numel() for q in p.model.parameters())


def test_linear_probe_trains_only_the_head() -> None:
    p = fine_tune("linear_probe")
    assert set(p.plan.trainable) == {"fc.weight", "fc.bias"}
    assert p.plan.numel_trainable == 512 * 5 + 5
    # Every BatchNorm is frozen, so every one of resnet18's 20 is pinned in eval.
    assert list(p.plan.pinned_bn) == batchnorms(p.model)
    assert len(p.plan.pinned_bn) == 20


def test_freeze_until_layer3_trains_layer3_layer4_and_the_head() -> None:
    p = fine_tune("freeze_until_layer3")
    expected = {n for n in all_params(p.model) if n.split(".")[0] in ("layer3", "layer4", "fc")}
    assert set(p.plan.trainable) == expected
    prefix = ("conv1", "bn1", "layer1", "layer2")
    assert set(p.plan.frozen) == {n for n in all_params(p.model) if n.split(".")[0] in prefix}
    assert list(p.plan.pinned_bn) == [n for n in batchnorms(p.model) if n.split(".")[0] in ("bn1", "layer1", "layer2")]


def test_bitfit_trains_biases_batchnorm_affine_and_the_head_weight() -> None:
    p = fine_tune("bitfit")
    model = p.model
    bn_affine = {
        f"{m}.{q}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d) for q in ("weight", "bias")
    }
    biases = {n for n in all_params(model) if n.endswith(".bias")}
    assert set(p.plan.trainable) == biases | bn_affine | {"fc.weight"}
    # resnet18's convolutions have no bias: the only biases are BatchNorm's and fc's.
    assert biases == {n for n in bn_affine if n.endswith(".bias")} | {"fc.bias"}
    assert all(n.endswith(".weight") and ("conv" in n or "downsample.0" in n) for n in p.plan.frozen)
    assert p.plan.pinned_bn == ()  # every BatchNorm has trainable parameters: none is pinned


# --------------------------------------------------------------------------- the small ViT (#27: LoRA on a ViT)


@pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or importlib.util.find_spec("peft") is None,
    reason="the ViT configs need timm and peft",
)
def test_vit_lora_r4_adapts_every_linear_of_the_last_two_blocks_and_trains_them_and_the_head() -> None:
    cfg = load_config(ROOT / "configs/fmnist/vit/lora_r4.yaml", ["model.weights=null", "train.device=cpu"])
    p = prepare_model(cfg)
    layers = tuple(f"blocks.{b}.{m}" for b in (4, 5) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert p.plan.adapters[0].layers == layers
    adapters = {f"{layer}.lora_{ab}.default.weight" for layer in layers for ab in "AB"}
    assert set(p.plan.trainable) == adapters | {"head.weight", "head.bias"}
    # width 128, rank 4: qkv 128 -> 384, proj 128 -> 128, fc1 128 -> 512, fc2 512 -> 128, twice.
    assert p.plan.numel_trainable == 2 * 4 * (512 + 256 + 640 + 640) + 128 * 5 + 5
    assert {f"{layer}.base_layer.weight" for layer in layers} <= set(p.plan.frozen)
