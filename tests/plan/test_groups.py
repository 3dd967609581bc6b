"""Tests of discriminative learning rates (``freezetune.groups``).

Pinned here: :func:`stage_depths` on resnet18 (fc 0, layer4 1, ... conv1 6) and
on a model whose root owns a parameter (deepest); :func:`assign_settings`
(``layer_decay ** depth``, the last matching ``param_groups`` entry wins,
``weight_decay`` None unless set, the factors multiply, the ``source`` text, a
match hitting nothing reported with the nearest names); and every problem
:func:`parse_param_groups` reports (the loader's reading of ``train.param_groups``), with its exact wording.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from freezetune.config import GROUPS, ConfigError, GroupRule, from_dict, parse_param_groups, read_records
from freezetune.plan import ModelTree, Setting, assign_settings, describe, stage_depths, stage_of
from freezetune.plan.auto import model_stages


@pytest.fixture(scope="module")
def resnet18(meta_tree: Callable[..., ModelTree]) -> ModelTree:
    return meta_tree("resnet18", num_classes=3)


RESNET_DEPTH = {"fc": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4, "bn1": 5, "conv1": 6}


def read(raw: list) -> list[GroupRule]:
    return read_records(GROUPS, raw, "train.param_groups")


def under(tree: ModelTree, prefix: str) -> list[str]:
    return [n for n in tree.param_names if n.startswith(prefix + ".")]


class RootOwned(nn.Module):
    """The root owns ``scale`` directly (like ViT's class token)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.stem_bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()  # no parameters: not a stage
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(1))


# --------------------------------------------------------------------------- stage_depths


def test_stage_depths_on_resnet18(resnet18: ModelTree) -> None:
    depths = stage_depths(resnet18)
    assert list(depths) == resnet18.param_names
    assert depths == {n: RESNET_DEPTH[n.split(".")[0]] for n in resnet18.param_names}
    assert depths["conv1.weight"] == 6
    assert depths["bn1.weight"] == depths["bn1.bias"] == 5
    assert depths["layer1.0.conv1.weight"] == 4
    assert depths["layer2.1.bn2.bias"] == 3
    assert depths["layer3.0.downsample.0.weight"] == 2
    assert depths["layer4.1.conv2.weight"] == 1
    assert depths["fc.weight"] == depths["fc.bias"] == 0


def test_stage_depths_counts_root_owned_parameters_as_deepest() -> None:
    depths = stage_depths(describe(RootOwned()))
    assert depths == {
        "scale": 4,
        "stem.weight": 3,
        "stem.bias": 3,
        "stem_bn.weight": 2,
        "stem_bn.bias": 2,
        "body.0.weight": 1,
        "body.0.bias": 1,
        "body.1.weight": 1,
        "body.1.bias": 1,
        "head.weight": 0,
        "head.bias": 0,
    }


def test_stages_are_the_top_level_modules_that_own_parameters_for_decay_and_auto_alike() -> None:
    tree = describe(RootOwned())
    assert tree.stages == ["stem", "stem_bn", "body", "head"]  # the root's own "scale" is in none
    assert [stage_of(n) for n in ("scale", "stem.weight", "body.1.bias")] == ["", "stem", "body"]
    # auto freezes a prefix of the same list: the stages before the head's.
    assert model_stages(tree, "head") == tree.stages[:-1]
    # A top-level module without parameters (ReLU) or whose only weight is tied to an earlier one is no stage.
    tied = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    tied.add_module("3", nn.Linear(2, 2))
    tied[3].weight = tied[0].weight
    tied[3].bias = tied[0].bias
    assert describe(tied).stages == ["0", "2"]


def test_stage_depths_head_nested_in_a_top_level_module() -> None:
    # torchvision's mobilenet style: the head is classifier.3; the whole classifier is depth 0.
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))
    assert stage_depths(describe(model)) == {
        "0.weight": 1,
        "0.bias": 1,
        "1.0.weight": 0,
        "1.0.bias": 0,
        "1.2.weight": 0,
        "1.2.bias": 0,
    }


# --------------------------------------------------------------------------- assign_settings


def test_no_groups_no_decay_gives_the_defaults(resnet18: ModelTree) -> None:
    settings, problems = assign_settings(resnet18, [], None)
    assert problems == []
    assert list(settings) == resnet18.param_names
    assert set(settings.values()) == {Setting(1.0, None, "")}


def test_layer_decay_scales_by_depth(resnet18: ModelTree) -> None:
    settings, problems = assign_settings(resnet18, [], 0.5)
    assert problems == []
    assert settings["conv1.weight"] == Setting(0.5**6, None, "layer_decay^6")
    assert settings["conv1.weight"].lr_scale == 0.015625
    assert settings["bn1.bias"] == Setting(0.5**5, None, "layer_decay^5")
    assert settings["layer4.0.conv1.weight"] == Setting(0.5, None, "layer_decay^1")
    assert settings["fc.weight"] == Setting(1.0, None, "layer_decay^0")
    for name in resnet18.param_names:
        assert settings[name].lr_scale == 0.5 ** RESNET_DEPTH[name.split(".")[0]]


def test_param_groups_last_match_wins(resnet18: ModelTree) -> None:
    groups = [{"match": "layer4", "lr_scale": 2.0}, {"match": "layer4.1", "lr_scale": 3.0}]
    settings, problems = assign_settings(resnet18, read(groups), None)
    assert problems == []
    for name in under(resnet18, "layer4.0"):
        assert settings[name] == Setting(2.0, None, "train.param_groups[0]")
    for name in under(resnet18, "layer4.1"):
        assert settings[name] == Setting(3.0, None, "train.param_groups[1]")
    assert settings["layer3.0.conv1.weight"] == Setting(1.0, None, "")
    # Reversed, the broader rule wins everywhere.
    settings, _ = assign_settings(resnet18, read(groups[::-1]), None)
    assert {settings[n].lr_scale for n in under(resnet18, "layer4")} == {2.0}


def test_weight_decay_is_none_unless_the_group_sets_it(resnet18: ModelTree) -> None:
    groups = [{"match": "*bias", "weight_decay": 0}, {"match": "fc", "lr_scale": 10}]
    settings, problems = assign_settings(resnet18, read(groups), None)
    assert problems == []
    assert settings["layer1.0.bn1.bias"] == Setting(1.0, 0.0, "train.param_groups[0]")
    assert settings["layer1.0.bn1.weight"].weight_decay is None
    # fc.bias: the later fc group wins whole, its weight_decay is unset (None), not 0.
    assert settings["fc.bias"] == Setting(10.0, None, "train.param_groups[1]")
    assert settings["fc.weight"] == Setting(10.0, None, "train.param_groups[1]")


def test_weight_decay_zero_is_kept_distinct_from_unset(resnet18: ModelTree) -> None:
    settings, _ = assign_settings(resnet18, read([{"match": "conv1", "weight_decay": 0.0}]), None)
    assert settings["conv1.weight"].weight_decay == 0.0
    assert settings["conv1.weight"].weight_decay is not None
    assert settings["conv1.weight"].lr_scale == 1.0


def test_layer_decay_and_group_scale_multiply(resnet18: ModelTree) -> None:
    settings, problems = assign_settings(
        resnet18, read([{"match": "layer3", "lr_scale": 8, "weight_decay": 1e-3}]), 0.5
    )
    assert problems == []
    assert settings["layer3.1.conv2.weight"] == Setting(0.5**2 * 8, 1e-3, "layer_decay^2, train.param_groups[0]")
    assert settings["layer3.1.conv2.weight"].lr_scale == 2.0
    assert settings["layer2.0.conv1.weight"] == Setting(0.5**3, None, "layer_decay^3")


def test_group_matching_by_glob_and_parameter_name(resnet18: ModelTree) -> None:
    settings, problems = assign_settings(
        resnet18, read([{"match": "layer*.0.conv1.weight", "lr_scale": 0.5}, {"match": "fc.bias", "lr_scale": 4}]), None
    )
    assert problems == []
    halved = sorted(n for n, s in settings.items() if s.lr_scale == 0.5)
    assert halved == [f"layer{i}.0.conv1.weight" for i in range(1, 5)]
    assert settings["fc.bias"].lr_scale == 4.0 and settings["fc.weight"].lr_scale == 1.0


def test_group_matching_nothing_is_a_problem_with_nearest_names(resnet18: ModelTree) -> None:
    settings, problems = assign_settings(
        resnet18, read([{"match": "layer5", "lr_scale": 2}, {"match": "*.bais", "weight_decay": 0}]), None
    )
    assert problems == [
        "train.param_groups[0]: match 'layer5' matches no parameter; nearest names: layer4, layer3, layer2",
        "train.param_groups[1]: match '*.bais' matches no parameter; nearest names: fc.bias, bn1.bias",
    ]
    assert set(settings.values()) == {Setting(1.0, None, "")}  # still a setting for everything


def test_parse_problems_are_reported_by_the_loader_and_the_bad_group_never_reaches_assign_settings(
    resnet18: ModelTree,
) -> None:
    groups, problems = parse_param_groups([{"match": "fc"}])
    assert problems == ["train.param_groups[0]: sets neither lr_scale nor weight_decay"]
    with pytest.raises(ConfigError) as info:
        from_dict({"name": "t", "train": {"param_groups": [{"match": "fc"}]}})
    assert info.value.problems == problems
    settings, problems = assign_settings(resnet18, groups, 0.5)
    assert problems == []
    assert settings["fc.weight"] == Setting(1.0, None, "layer_decay^0")  # the bad group is ignored


# --------------------------------------------------------------------------- parse_param_groups


def test_parse_param_groups_accepts_well_formed_groups() -> None:
    rules, problems = parse_param_groups(
        [
            {"match": "layer4", "lr_scale": 0.5},
            {"match": "*bias", "weight_decay": 0},
            {"match": "fc", "lr_scale": "1e1", "weight_decay": "1e-4"},
        ]
    )
    assert problems == []
    assert rules == [
        GroupRule("layer4", 0.5, None, "train.param_groups[0]"),
        GroupRule("*bias", 1.0, 0.0, "train.param_groups[1]"),
        GroupRule("fc", 10.0, 1e-4, "train.param_groups[2]"),
    ]


def test_parse_param_groups_uses_the_given_origin() -> None:
    rules, _ = parse_param_groups([{"match": "fc", "lr_scale": 2}], origin="g")
    assert rules[0].origin == "g[0]"


@pytest.mark.parametrize("item", [{"lr_scale": 2}, {"match": "", "lr_scale": 2}, {"match": 3, "lr_scale": 2}])
def test_parse_param_groups_rejects_a_missing_or_bad_match(item: dict) -> None:
    rules, problems = parse_param_groups([item])
    assert rules == []
    assert problems == [f"train.param_groups[0].match: expected a non-empty name or pattern, got {item.get('match')!r}"]


def test_parse_param_groups_rejects_a_group_that_sets_nothing() -> None:
    assert parse_param_groups([{"match": "fc"}]) == (
        [],
        ["train.param_groups[0]: sets neither lr_scale nor weight_decay"],
    )


@pytest.mark.parametrize("wd", [-0.1, "x", float("nan"), float("inf"), True])
def test_parse_param_groups_rejects_a_bad_weight_decay(wd: object) -> None:
    rules, problems = parse_param_groups([{"match": "fc", "weight_decay": wd}])
    assert rules == []
    assert problems == [f"train.param_groups[0].weight_decay: expected a finite number >= 0, got {wd!r}"]


@pytest.mark.parametrize("scale", [0, -1, "x", float("inf"), None, False])
def test_parse_param_groups_rejects_a_bad_lr_scale(scale: object) -> None:
    rules, problems = parse_param_groups([{"match": "fc", "lr_scale": scale}])
    assert rules == []
    assert problems == [f"train.param_groups[0].lr_scale: expected a finite number > 0, got {scale!r}"]


def test_parse_param_groups_rejects_an_unknown_key() -> None:
    rules, problems = parse_param_groups([{"match": "fc", "lr_scale": 2, "lr": 0.1}])
    assert rules == []
    assert problems == ["train.param_groups[0]: unknown key(s) lr; valid: match, lr_scale, weight_decay"]


def test_parse_param_groups_rejects_a_non_mapping_and_keeps_going() -> None:
    rules, problems = parse_param_groups(["fc", {"match": "fc", "lr_scale": 2}])
    assert problems == ["train.param_groups[0]: a group is a mapping like {match: layer4, lr_scale: 0.5}; got 'fc'"]
    assert [r.origin for r in rules] == ["train.param_groups[1]"]


def test_parse_param_groups_reports_every_problem_of_one_group() -> None:
    _, problems = parse_param_groups([{"lr": 1, "weight_decay": -1}])
    assert problems == [
        "train.param_groups[0]: unknown key(s) lr; valid: match, lr_scale, weight_decay",
        "train.param_groups[0].match: expected a non-empty name or pattern, got None",
        "train.param_groups[0].weight_decay: expected a finite number >= 0, got -1",
    ]
