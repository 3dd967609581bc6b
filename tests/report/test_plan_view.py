"""The printed plan: module table rows and where the autograd graph starts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from freezetune.config import Config, Rule
from freezetune.plan import ModelTree, apply_plan, build_plan, build_schedule, describe
from freezetune.report import module_rows, probe_autograd, render_plan, render_schedule


def model_and_plan():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),  # frozen prefix
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),  # weights frozen, BN trains
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    rules = [Rule("freeze", "0", "t"), Rule("freeze", "2.0", "t")]
    plan = build_plan(describe(model), rules)
    apply_plan(model, plan)
    return model, plan


def test_module_rows_per_parameter_owner() -> None:
    model, plan = model_and_plan()
    rows = {r.name: r for r in module_rows(describe(model), plan)}
    assert list(rows) == ["0.0", "0.1", "2.0", "2.1", "5"]
    assert rows["0.0"].status == "frozen" and rows["0.0"].params == 4 * 3 * 9 + 4
    assert rows["0.1"].mode == "eval (pinned)" and rows["2.1"].mode == "train"
    assert rows["5"].status == "trainable" and rows["5"].mode == "train"


def test_module_rows_aggregate_at_a_depth() -> None:
    model, plan = model_and_plan()
    rows = {r.name: r for r in module_rows(describe(model), plan, depth=1)}
    assert list(rows) == ["0", "2", "5"]
    assert rows["2"].params == 148 + 8 and rows["2"].trainable == 8
    assert rows["2"].status == "partial (8 trainable)"


def test_probe_shows_no_graph_in_the_frozen_prefix() -> None:
    model, plan = model_and_plan()
    model.eval()
    rows = {r.name: r for r in probe_autograd(model, torch.randn(2, 3, 8, 8)).rows}
    assert not rows["0"].requires_grad and rows["0"].grad_fn is None
    assert not rows["1"].requires_grad and rows["1"].grad_fn is None
    # 2.0's weights are frozen, but 2.1's trainable affine parameters start the graph.
    assert rows["2"].requires_grad and rows["2"].grad_fn == "NativeBatchNormBackward0"
    assert rows["5"].grad_fn == "AddmmBackward0"
    assert model.training is False  # the probe restores the mode it found


def test_render_plan_totals_and_start_of_graph() -> None:
    model, plan = model_and_plan()
    text = render_plan(describe(model), plan, probe_autograd(model, torch.randn(2, 3, 8, 8)))
    assert "parameters: 286 total, 18 trainable (6.29%), 268 frozen" in text
    assert "1 module(s) pinned in eval" in text
    # Inside '2', the frozen convolution records nothing: the graph starts at its trainable BatchNorm.
    assert "the autograd graph starts at '2.1'" in text
    assert "None (no graph recorded)" in text


def test_each_schedule_event_shows_the_trainable_count_after_it(
    meta_tree: Callable[..., ModelTree], tiny_config: Callable[..., Config]
) -> None:
    cfg = tiny_config(
        {
            "train.epochs": 3,
            "freeze.schedule": [
                {"epoch": 2, "unfreeze": "layer4"},
                {"epoch": 2, "unfreeze": "layer3", "lr_scale": 0.1},
                {"epoch": 3, "freeze": "layer4"},
            ],
        }
    )
    tree = meta_tree("resnet18", num_classes=3)
    under = {
        m: sum(n for name, n in tree.numel.items() if name.startswith(m + ".")) for m in ("fc", "layer3", "layer4")
    }
    lines = render_schedule(build_schedule(tree, cfg.freeze), cfg, 2).splitlines()
    counts = [int(line.rsplit("then ", 1)[1].removesuffix(" trainable").replace(",", "")) for line in lines[:3]]
    fc, layer3, layer4 = under["fc"], under["layer3"], under["layer4"]
    assert counts == [fc + layer4, fc + layer4 + layer3, fc + layer3]  # not the epoch's total on both epoch-2 lines
    assert lines[1].startswith(
        f"epoch 2: unfreeze layer3 (15 tensors, {layer3:,} params, lr x0.1) [freeze.schedule[1]]"
    )


@pytest.mark.parametrize(
    ("arch", "until", "size", "start"),
    [
        ("mobilenet_v2", "features.6", 32, "features.6"),
        ("efficientnet_b0", "features.5", 32, "features.5"),
        ("convnext_tiny", "features.5", 32, "features.5"),
        ("vit_b_16", "encoder.layers.encoder_layer_11", 224, "encoder.layers.encoder_layer_11"),
        ("resnet18", "layer3", 32, "layer3"),  # a top-level block still reads as itself
    ],
)
def test_the_graph_start_names_the_first_trainable_block_inside_a_top_level_module(
    meta_model: Callable[..., nn.Module], arch: str, until: str, size: int, start: str
) -> None:
    model = meta_model(arch, num_classes=3)  # meta tensors: the forward pass computes shapes only
    plan = build_plan(describe(model), [Rule("until", until, "t")])
    apply_plan(model, plan)
    probe = probe_autograd(model, torch.randn(2, 3, size, size, device="meta"))
    top = start.split(".")[0]
    assert [r.name for r in probe.rows if r.requires_grad][0] == top  # the table stays top-level
    assert probe.start == start and probe.frozen_in_graph == ()  # a frozen prefix: nothing frozen after it
    assert f"the autograd graph starts at '{start}'; backward() does no work before it." in render_plan(
        describe(model), plan, probe
    )


def test_frozen_layers_after_the_start_are_named(meta_model: Callable[..., nn.Module]) -> None:
    model = meta_model("resnet18", num_classes=3)
    tree = describe(model)
    plan = build_plan(
        tree, [Rule("freeze", "*", "t"), Rule("unfreeze", "layer2.0.bn1", "t"), Rule("unfreeze", "fc", "t")]
    )
    apply_plan(model, plan)
    probe = probe_autograd(model, torch.randn(2, 3, 32, 32, device="meta"))
    assert probe.start == "layer2.0.bn1"  # layer2.0.conv1 before it records nothing
    # Everything frozen after it still runs backward, to reach layer2.0.bn1: conv2, bn2, the downsample's...
    assert probe.frozen_in_graph[:3] == ("layer2.0.conv2", "layer2.0.bn2", "layer2.1.conv1")
    assert "layer2.0.downsample.0" not in probe.frozen_in_graph  # it reads the block's input: no grad there
    assert probe.frozen_in_graph[-1] == "layer4.1.bn2" and "fc" not in probe.frozen_in_graph
