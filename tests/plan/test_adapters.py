"""Tests of ``freeze.adapters`` resolved against a model's names (freezetune.plan.adapters) and
in the plan: which layers a selector adapts, every refusal with its wording, and the plan
that follows (adapted layers' own weights frozen, their adapters trainable, with the preset
and rules around them). The config's own checks of the key are here too.

Models are resnet18 and a small torchvision ViT on the meta device, adapters injected by peft
(freezetune.models.adapters): names and shapes only, no tensor computed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from freezetune.config import AdapterConfig, FreezeConfig
from freezetune.config.records import Rule
from freezetune.models import inject_adapters
from freezetune.plan import FreezeError, build_schedule, describe
from freezetune.plan.adapters import resolve_adapters

# Skipped without peft, found rather than imported: importing peft (with transformers, 3 to 5 s)
# at collection would cost every test worker, not only the one that runs these tests.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")

LAYER4 = ("layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2")


def resnet() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.resnet18(num_classes=3)


def lora(modules: object, rank: int = 2, alpha: float = 4.0) -> AdapterConfig:
    return AdapterConfig(modules=modules, rank=rank, alpha=alpha)


@pytest.mark.parametrize(
    ("modules", "layers"),
    [
        ("layer4", LAYER4),
        (["layer4.1", "layer4.0.conv1"], ("layer4.0.conv1", "layer4.1.conv1", "layer4.1.conv2")),
        ("layer4.*.conv1", ("layer4.0.conv1", "layer4.1.conv1")),  # a glob over module names
        ("layer4.1.conv2.weight", ("layer4.1.conv2",)),  # a parameter selects its layer
        ("", ()),  # the root: every Conv2d but the head (checked by count below)
    ],
)
def test_selectors_pick_the_adaptable_layers_in_model_order(modules: object, layers: tuple[str, ...]) -> None:
    if modules == "":
        (plan,) = resolve_adapters(describe(resnet()), [lora("Conv2d")])  # a class name
        assert len(plan.layers) == 20 and "fc" not in plan.layers
        return
    (plan,) = resolve_adapters(describe(resnet()), [lora(modules)])
    assert plan.layers == layers
    assert plan.numel == 0  # nothing injected yet


def test_injected_adapters_resolve_to_the_same_layers_and_count_their_parameters() -> None:
    model = resnet()
    (plan,) = inject_adapters(model, [lora("layer4.1", rank=2)])
    assert plan.layers == ("layer4.1.conv1", "layer4.1.conv2")
    # lora_A: a 3x3 conv 512 -> 2; lora_B: a 1x1 conv 2 -> 512; twice.
    assert plan.numel == 2 * (2 * 512 * 9 + 512 * 2)
    assert resolve_adapters(describe(model), [lora("layer4.1", rank=2)]) == (plan,)


def test_the_plan_freezes_adapted_weights_and_trains_adapters_and_head_under_any_preset() -> None:
    model = resnet()
    entries = [lora("layer4.1")]
    inject_adapters(model, entries)
    tree = describe(model)
    probe = build_schedule(tree, FreezeConfig(preset="linear_probe", adapters=entries)).initial
    assert probe.trainable == [
        "layer4.1.conv1.lora_A.default.weight",
        "layer4.1.conv1.lora_B.default.weight",
        "layer4.1.conv2.lora_A.default.weight",
        "layer4.1.conv2.lora_B.default.weight",
        "fc.weight",
        "fc.bias",
    ]
    assert probe.adapters[0].layers == ("layer4.1.conv1", "layer4.1.conv2")
    # Full fine-tuning with adapters: everything trains but the adapted layers' own weights.
    full = build_schedule(tree, FreezeConfig(preset="full", adapters=entries)).initial
    assert full.frozen == ["layer4.1.conv1.base_layer.weight", "layer4.1.conv2.base_layer.weight"]
    decided = {p.name: p.decided_by for p in full.params}
    assert decided["layer4.1.conv1.base_layer.weight"] == "freeze.adapters[0] {freeze: layer4.1.conv1.base_layer}"
    assert full.to_json()["adapters"][0]["layers"] == ["layer4.1.conv1", "layer4.1.conv2"]


@pytest.mark.parametrize(
    ("target", "layer"),
    [("layer4.1.conv1.weight", "layer4.1.conv1"), ("layer4.*.conv1.weight", "layer4.0.conv1")],  # a glob: the first
)
def test_a_rule_naming_an_adapted_weight_by_its_old_name_says_where_it_moved(target: str, layer: str) -> None:
    # peft moves the layer's own weight under base_layer: "matches no parameter" would send the user looking.
    model = resnet()
    entries = [lora("layer4")]
    inject_adapters(model, entries)
    freeze = FreezeConfig(preset="linear_probe", rules=[Rule("unfreeze", target, "freeze.rules[0]")], adapters=entries)
    with pytest.raises(FreezeError) as err:
        build_schedule(describe(model), freeze)
    assert err.value.problems == [
        f"freeze.rules[0] {{unfreeze: {target}}}: {layer} has an adapter (freeze.adapters), so its own weight is "
        f"{layer}.base_layer.weight, frozen beside the adapter. HINT: to train {layer} whole, leave it out of "
        "freeze.adapters' modules"
    ]


@pytest.mark.parametrize(
    ("entries", "wording"),
    [
        ([lora("layer5")], "freeze.adapters[0].modules 'layer5': matches no module; nearest names: layer4, layer3"),
        ([lora("relu")], "freeze.adapters[0].modules 'relu': holds no Linear or Conv2d layer to adapt"),
        ([lora("fc")], "freeze.adapters[0].modules 'fc': selects only the head (fc), which trains whole already"),
        (
            [lora("layer4"), lora("layer4.1.conv1")],
            "freeze.adapters[1]: layer4.1.conv1 is adapted by freeze.adapters[0]",
        ),
    ],
)
def test_a_selector_without_layers_to_adapt_is_refused_with_its_reason(entries: list, wording: str) -> None:
    with pytest.raises(FreezeError) as err:
        resolve_adapters(describe(resnet()), entries)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(wording)
    assert "\n" not in str(err.value)


def test_torchvision_attention_is_refused_and_left_out_of_a_whole_block() -> None:
    with torch.device("meta"):
        vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    tree = describe(vit)
    block = "encoder.layers.encoder_layer_0"
    (plan,) = resolve_adapters(tree, [lora(block)])
    assert plan.layers == (f"{block}.mlp.0", f"{block}.mlp.3")  # not self_attention.out_proj: it would never run
    with pytest.raises(FreezeError, match=r"out_proj': .*self_attention is torch's nn.MultiheadAttention"):
        resolve_adapters(tree, [lora(f"{block}.self_attention.out_proj")])
