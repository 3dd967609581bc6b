"""Tests of the pure planning functions in ``freezetune.freezing``.

Nothing here trains or even runs a model: tiny hand-made modules pin down the
rule semantics exactly, and real torchvision trees are built on the meta
device (no memory, no weights) to check names, heads and parameter counts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from freezetune.config import RULES, ConfigError, Rule, from_dict, parse_rules, read_records
from freezetune.plan import (
    FreezeError,
    FreezePlan,
    ModelTree,
    build_plan,
    describe,
    find_head,
    match_rule,
    plan_from_config,
    preset_rules,
)

# --------------------------------------------------------------------------- tiny models


def eleven_linears() -> nn.Sequential:
    """Modules "0".."10": "0" and "1" are string prefixes of "10"."""
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])


def conv_net() -> nn.Sequential:
    """0 Conv2d, 1 BatchNorm2d, 2 ReLU, 3 Flatten, 4 Linear (for 8x8 inputs)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


CONV_NET_PARAMS = ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
CONV_NET_NUMEL = {"0.weight": 108, "0.bias": 4, "1.weight": 4, "1.bias": 4, "4.weight": 288, "4.bias": 2}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()


class Net(nn.Module):
    """Nested; the root owns a parameter directly (like ViT's class_token)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(4)
        self.body = nn.Sequential(Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.head = nn.Linear(4, 3)
        # Registered last, but named_parameters() reports a module's own
        # parameters before its children's, so it comes first.
        self.scale = nn.Parameter(torch.ones(1))


NET_PARAMS = [
    "scale",
    "stem.weight",
    "stem.bias",
    "stem_bn.weight",
    "stem_bn.bias",
    "body.0.conv.weight",
    "body.0.bn.weight",
    "body.0.bn.bias",
    "body.1.conv.weight",
    "body.1.bn.weight",
    "body.1.bn.bias",
    "head.weight",
    "head.bias",
]


def plan(model: nn.Module, raw_rules: list, preset: str | None = None, batchnorm: str = "eval") -> FreezePlan:
    return plan_from_config(describe(model), preset, read_records(RULES, raw_rules, "freeze.rules"), batchnorm)


def rule(kind: str, target: str) -> Rule:
    return Rule(kind, target, "test")  # type: ignore[arg-type]


def rejected(model: nn.Module, raw_rules: list, preset: str | None = None, batchnorm: str = "eval") -> FreezeError:
    with pytest.raises(FreezeError) as info:
        plan(model, raw_rules, preset, batchnorm)
    return info.value


@pytest.fixture(scope="module")
def resnet18(meta_tree: Callable[..., ModelTree]) -> ModelTree:
    return meta_tree("resnet18")


@pytest.fixture(scope="module")
def mobilenet(meta_tree: Callable[..., ModelTree]) -> ModelTree:
    return meta_tree("mobilenet_v3_small")


@pytest.fixture(scope="module")
def vit(meta_tree: Callable[..., ModelTree]) -> ModelTree:
    return meta_tree("vit_b_16")


# --------------------------------------------------------------------------- describe / find_head


def test_describe_lists_parameters_in_named_parameters_order() -> None:
    net = Net()
    tree = describe(net)
    assert tree.param_names == NET_PARAMS
    assert tree.param_names == [n for n, _ in net.named_parameters()]
    assert tree.numel == {n: p.numel() for n, p in net.named_parameters()}
    assert [m.name for m in tree.modules] == [n for n, _ in net.named_modules()]
    assert tree.module("")
    assert tree.module("").params == ("scale",)
    assert tree.module("body.0.act").params == ()
    assert tree.module("nope") is None


def test_describe_records_class_and_base_class_names() -> None:
    tree = describe(conv_net())
    bn = tree.module("1")
    assert bn.type_names == ("BatchNorm2d", "_BatchNorm", "_NormBase")
    assert bn.type_name == "BatchNorm2d"
    assert bn.is_batchnorm
    assert tree.module("0").type_names == ("Conv2d", "_ConvNd")
    assert not tree.module("0").is_batchnorm
    assert tree.module("").type_names == ("Sequential",)
    assert tree.module("2").type_names == ("ReLU",)
    assert describe(nn.Module()).modules[0].type_names == ("Module",)


def test_describe_counts_a_tied_weight_once_under_its_first_owner() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    tree = describe(model)
    assert tree.param_names == ["0.weight", "0.bias", "1.bias"]
    assert tree.param_names == [n for n, _ in model.named_parameters()]
    assert sum(tree.numel.values()) == 9 + 3 + 3


def test_find_head_is_the_last_linear_with_parameters() -> None:
    assert find_head(describe(conv_net())) == "4"
    assert find_head(describe(Net())) == "head"
    # A trailing Linear without parameters cannot be the head.
    no_param_tail = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2, bias=False))
    del no_param_tail[2].weight
    assert find_head(describe(no_param_tail)) == "0"


def test_find_head_falls_back_to_the_last_conv() -> None:
    assert find_head(describe(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.Flatten()))) == "2"


def test_find_head_without_linear_or_conv_is_an_error() -> None:
    with pytest.raises(FreezeError, match="cannot tell which module is the head"):
        find_head(describe(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())))


# --------------------------------------------------------------------------- parse_rules


def test_parse_rules_keeps_order_kind_target_and_origin() -> None:
    rules, problems = parse_rules(
        [
            {"freeze": "*"},
            {"unfreeze": "fc"},
            {"freeze_type": "_BatchNorm"},
            {"unfreeze_type": "Linear"},
            {"until": "layer3"},
        ]
    )
    assert problems == []
    assert rules == [
        Rule("freeze", "*", "freeze.rules[0]"),
        Rule("unfreeze", "fc", "freeze.rules[1]"),
        Rule("freeze_type", "_BatchNorm", "freeze.rules[2]"),
        Rule("unfreeze_type", "Linear", "freeze.rules[3]"),
        Rule("until", "layer3", "freeze.rules[4]"),
    ]
    assert [r.freezes for r in rules] == [True, False, True, False, True]
    assert str(rules[4]) == "{until: layer3}"


def test_parse_rules_rejects_two_keys_in_one_rule() -> None:
    rules, problems = parse_rules([{"freeze": "a", "unfreeze": "b"}])
    assert rules == []
    assert len(problems) == 1
    assert problems[0].startswith("freeze.rules[0]: a rule is a mapping with exactly one key of freeze, unfreeze,")
    assert "{'freeze': 'a', 'unfreeze': 'b'}" in problems[0]


def test_parse_rules_rejects_non_mappings_and_empty_mappings() -> None:
    rules, problems = parse_rules(["freeze: fc", {}, None])
    assert rules == []
    assert [p.split(":")[0] for p in problems] == ["freeze.rules[0]", "freeze.rules[1]", "freeze.rules[2]"]
    assert all("exactly one key" in p for p in problems)


def test_parse_rules_unknown_kind_suggests_the_closest() -> None:
    _, problems = parse_rules([{"freze": "fc"}, {"unfreeze_types": "Linear"}, {"zzz": "fc"}])
    assert problems == [
        "freeze.rules[0]: unknown rule kind 'freze'; valid: freeze, unfreeze, freeze_type, unfreeze_type, until;"
        " did you mean 'freeze'?",
        "freeze.rules[1]: unknown rule kind 'unfreeze_types'; valid: freeze, unfreeze, freeze_type, unfreeze_type,"
        " until; did you mean 'unfreeze_type'?",
        "freeze.rules[2]: unknown rule kind 'zzz'; valid: freeze, unfreeze, freeze_type, unfreeze_type, until",
    ]


def test_parse_rules_rejects_non_string_and_empty_targets() -> None:
    rules, problems = parse_rules([{"freeze": 3}, {"until": ""}, {"unfreeze": ["fc"]}, {"freeze": None}], origin="x")
    assert rules == []
    assert problems == [
        "x[0].freeze: expected a non-empty name or pattern, got 3",
        "x[1].until: expected a non-empty name or pattern, got ''",
        "x[2].unfreeze: expected a non-empty name or pattern, got ['fc']",
        "x[3].freeze: expected a non-empty name or pattern, got None",
    ]


def test_the_loader_reports_every_rule_problem_at_once() -> None:
    raw = [{"freeze": "0"}, {"frezze": "1"}, {"freeze": 1}, {"a": 1, "b": 2}]
    with pytest.raises(ConfigError) as info:
        from_dict({"name": "t", "freeze": {"rules": raw}})
    assert len(info.value.problems) == 3
    assert [p.split(":")[0] for p in info.value.problems] == [
        "freeze.rules[1]",
        "freeze.rules[2].freeze",
        "freeze.rules[3]",
    ]
    with pytest.raises(ConfigError) as info:
        read_records(RULES, raw, "freeze.rules")  # rules written in code: the same problems
    assert [p.split(":")[0] for p in info.value.problems] == [
        "freeze.rules[1]",
        "freeze.rules[2].freeze",
        "freeze.rules[3]",
    ]


def test_plan_from_config_reports_every_rule_problem_at_once() -> None:
    err = rejected(conv_net(), [{"freeze": "9"}, {"freeze": "0"}, {"unfreeze_type": "LSTM"}])
    assert len(err.problems) == 2
    assert [p.split(":")[0] for p in err.problems] == ["freeze.rules[0] {freeze", "freeze.rules[2] {unfreeze_type"]
    assert isinstance(err, ValueError)
    assert str(err).startswith("freezing plan rejected:\n  - freeze.rules[0]")


# --------------------------------------------------------------------------- match_rule


def test_module_name_matches_the_module_and_below_but_not_a_name_prefix() -> None:
    tree = describe(eleven_linears())
    assert match_rule(rule("freeze", "0"), tree) == ["0.weight", "0.bias"]
    assert match_rule(rule("freeze", "1"), tree) == ["1.weight", "1.bias"]
    assert match_rule(rule("unfreeze", "10"), tree) == ["10.weight", "10.bias"]


def test_nested_module_name_matches_its_whole_subtree() -> None:
    tree = describe(Net())
    assert match_rule(rule("freeze", "body"), tree) == NET_PARAMS[5:11]
    assert match_rule(rule("freeze", "body.1"), tree) == ["body.1.conv.weight", "body.1.bn.weight", "body.1.bn.bias"]
    assert match_rule(rule("freeze", "body.1.bn"), tree) == ["body.1.bn.weight", "body.1.bn.bias"]
    # "stem" is a module; it must not swallow "stem_bn".
    assert match_rule(rule("freeze", "stem"), tree) == ["stem.weight", "stem.bias"]


def test_exact_parameter_name_matches_only_that_parameter() -> None:
    assert match_rule(rule("freeze", "4.weight"), describe(conv_net())) == ["4.weight"]
    assert match_rule(rule("freeze", "scale"), describe(Net())) == ["scale"]
    assert match_rule(rule("freeze", "4.weigh"), describe(conv_net())) == []


def test_glob_matches_parameter_names_across_dots() -> None:
    tree = describe(eleven_linears())
    assert match_rule(rule("freeze", "*.bias"), tree) == [f"{i}.bias" for i in range(11)]
    assert match_rule(rule("freeze", "1*"), tree) == ["1.weight", "1.bias", "10.weight", "10.bias"]
    assert match_rule(rule("freeze", "[05].weight"), tree) == ["0.weight", "5.weight"]
    assert match_rule(rule("freeze", "?.weight"), tree) == [f"{i}.weight" for i in range(10)]
    assert match_rule(rule("freeze", "*"), tree) == tree.param_names
    net = describe(Net())
    assert match_rule(rule("freeze", "body.*.bn.*"), net) == [
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.bn.weight",
        "body.1.bn.bias",
    ]
    # A glob is matched case-sensitively and against parameter names, not module names.
    assert match_rule(rule("freeze", "BODY*"), net) == []
    assert match_rule(rule("freeze", "body.?"), net) == []


def test_type_rules_match_by_class_name_and_by_base_class_name() -> None:
    tree = describe(Net())
    bn_params = [
        "stem_bn.weight",
        "stem_bn.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.bn.weight",
        "body.1.bn.bias",
    ]
    assert match_rule(rule("freeze_type", "BatchNorm2d"), tree) == bn_params
    assert match_rule(rule("freeze_type", "_BatchNorm"), tree) == bn_params
    assert match_rule(rule("unfreeze_type", "_NormBase"), tree) == bn_params
    assert match_rule(rule("freeze_type", "Conv2d"), tree) == [
        "stem.weight",
        "stem.bias",
        "body.0.conv.weight",
        "body.1.conv.weight",
    ]
    assert match_rule(rule("freeze_type", "Block"), tree) == NET_PARAMS[5:11]
    assert match_rule(rule("freeze_type", "Linear"), tree) == ["head.weight", "head.bias"]
    # The root's class covers every parameter, its own included.
    assert match_rule(rule("freeze_type", "Net"), tree) == NET_PARAMS
    assert match_rule(rule("freeze_type", "BatchNorm1d"), tree) == []
    assert match_rule(rule("freeze_type", "batchnorm2d"), tree) == []


def test_until_freezes_everything_registered_before_the_module() -> None:
    tree = describe(conv_net())
    assert match_rule(rule("until", "1"), tree) == ["0.weight", "0.bias"]
    # ReLU and Flatten own nothing: "until" them means "until the next parameter".
    assert match_rule(rule("until", "2"), tree) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert match_rule(rule("until", "3"), tree) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert match_rule(rule("until", "4"), tree) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert match_rule(rule("until", "0"), tree) == []
    assert match_rule(rule("until", "4.weight"), tree) == []  # a parameter, not a module
    assert match_rule(rule("until", "nope"), tree) == []


def test_until_a_nested_module_includes_the_root_owned_parameter() -> None:
    tree = describe(Net())
    assert match_rule(rule("until", "body.1.bn"), tree) == NET_PARAMS[:9]
    assert match_rule(rule("until", "body.1"), tree) == NET_PARAMS[:8]
    assert match_rule(rule("until", "body"), tree) == NET_PARAMS[:5]
    assert match_rule(rule("until", "body.0.act"), tree) == NET_PARAMS[:8]
    assert match_rule(rule("until", "stem"), tree) == ["scale"]


# --------------------------------------------------------------------------- build_plan


def test_no_rules_leaves_everything_trainable_and_undecided() -> None:
    p = plan(conv_net(), [])
    assert p.trainable == CONV_NET_PARAMS
    assert p.frozen == []
    assert [d.decided_by for d in p.params] == [None] * 6
    assert [d.numel for d in p.params] == [CONV_NET_NUMEL[n] for n in CONV_NET_PARAMS]
    assert p.numel_total == p.numel_trainable == 410
    assert p.pinned_bn == ()
    assert p.rules == ()


def test_last_matching_rule_wins() -> None:
    freeze_then_unfreeze = plan(conv_net(), [{"freeze": "0"}, {"unfreeze": "0.bias"}])
    assert freeze_then_unfreeze.frozen == ["0.weight"]
    assert freeze_then_unfreeze.is_trainable("0.bias")

    unfreeze_then_freeze = plan(
        conv_net(), [{"freeze": "*"}, {"unfreeze": "0.bias"}, {"unfreeze": "4"}, {"freeze": "0"}]
    )
    assert unfreeze_then_freeze.frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert not unfreeze_then_freeze.is_trainable("0.bias")

    probe = plan(conv_net(), [{"freeze": "*"}, {"unfreeze": "4"}])
    assert probe.trainable == ["4.weight", "4.bias"]
    # The reverse order leaves nothing to train, which is refused.
    with pytest.raises(FreezeError, match="leaves no parameter trainable"):
        plan(conv_net(), [{"freeze": "0"}, {"unfreeze": "0"}, {"freeze": "*"}])


def test_a_rule_that_changes_nothing_is_refused_like_an_event() -> None:
    # Everything starts trainable: unfreezing it says something the plan ignores.
    with pytest.raises(FreezeError) as info:
        plan(conv_net(), [{"unfreeze": "4"}, {"freeze": "0"}])
    assert info.value.problems == [
        "freeze.rules[0] {unfreeze: 4}: changes nothing: all 2 parameter tensors it matches are already trainable "
        "at this point (rules apply in order, after the preset's)"
    ]
    with pytest.raises(FreezeError, match=r"freeze.rules\[0\] \{unfreeze: 4\}: changes nothing"):
        plan(conv_net(), [{"unfreeze": "4"}], preset="linear_probe")  # the preset already trains the head


def test_decided_by_records_the_deciding_rule_and_its_origin() -> None:
    p = plan(conv_net(), [{"freeze": "*"}, {"unfreeze": "*.bias"}, {"freeze": "1"}, {"unfreeze_type": "Linear"}])
    assert {d.name: d.decided_by for d in p.params} == {
        "0.weight": "freeze.rules[0] {freeze: *}",
        "0.bias": "freeze.rules[1] {unfreeze: *.bias}",
        "1.weight": "freeze.rules[2] {freeze: 1}",
        "1.bias": "freeze.rules[2] {freeze: 1}",
        "4.weight": "freeze.rules[3] {unfreeze_type: Linear}",
        "4.bias": "freeze.rules[3] {unfreeze_type: Linear}",
    }
    assert p.trainable == ["0.bias", "4.weight", "4.bias"]
    assert p.numel_trainable == 4 + 288 + 2


def test_freeze_type_by_base_class_freezes_every_batchnorm() -> None:
    p = plan(Net(), [{"freeze_type": "_BatchNorm"}])
    assert p.frozen == [
        "stem_bn.weight",
        "stem_bn.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.bn.weight",
        "body.1.bn.bias",
    ]
    assert p.pinned_bn == ("stem_bn", "body.0.bn", "body.1.bn")
    assert p.numel_trainable == p.numel_total - 6 * 4


def test_unfreeze_type_after_freeze_all() -> None:
    p = plan(Net(), [{"freeze": "*"}, {"unfreeze_type": "BatchNorm2d"}])
    assert p.trainable == [
        "stem_bn.weight",
        "stem_bn.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.bn.weight",
        "body.1.bn.bias",
    ]
    assert p.pinned_bn == ()  # their parameters train, so their statistics may too


def test_until_in_a_plan() -> None:
    p = plan(conv_net(), [{"until": "2"}])
    assert p.frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert p.trainable == ["4.weight", "4.bias"]
    assert [d.decided_by for d in p.params] == ["freeze.rules[0] {until: 2}"] * 4 + [None, None]
    assert p.pinned_bn == ("1",)

    nested = plan(Net(), [{"until": "body.1"}])
    assert nested.frozen == NET_PARAMS[:8]
    assert nested.trainable == NET_PARAMS[8:]
    assert nested.pinned_bn == ("stem_bn", "body.0.bn")


def test_until_the_first_module_is_an_error() -> None:
    err = rejected(conv_net(), [{"until": "0"}])
    assert err.problems == ["freeze.rules[0] {until: 0}: nothing is registered before '0'"]


def test_batchnorm_eval_lists_exactly_the_fully_frozen_batchnorms() -> None:
    # body.0.bn fully frozen; body.1.bn half frozen; stem_bn trainable.
    p = plan(Net(), [{"freeze": "body.0"}, {"freeze": "body.1.bn.weight"}])
    assert p.frozen == ["body.0.conv.weight", "body.0.bn.weight", "body.0.bn.bias", "body.1.bn.weight"]
    assert p.pinned_bn == ("body.0.bn",)
    assert p.batchnorm == "eval"


def test_batchnorm_train_pins_nothing() -> None:
    p = plan(Net(), [{"freeze": "*"}, {"unfreeze": "head"}], batchnorm="train")
    assert p.trainable == ["head.weight", "head.bias"]
    assert p.pinned_bn == ()
    assert p.batchnorm == "train"


def test_rule_matching_nothing_names_the_rule_and_suggests_names() -> None:
    err = rejected(conv_net(), [{"freeze": "5"}, {"unfreeze": "4.wieght"}])
    assert err.problems[0].startswith("freeze.rules[0] {freeze: 5}: matches no parameter")
    assert err.problems[1].startswith(
        "freeze.rules[1] {unfreeze: 4.wieght}: matches no parameter; nearest names: 4.weight, "
    )
    assert len(err.problems) == 2


def test_type_typo_suggests_type_names() -> None:
    err = rejected(conv_net(), [{"freeze_type": "BatchNorm"}])
    assert err.problems == [
        "freeze.rules[0] {freeze_type: BatchNorm}: matches no parameter; nearest names: _BatchNorm, BatchNorm2d"
    ]


def test_type_matching_only_parameterless_modules_is_an_error() -> None:
    err = rejected(conv_net(), [{"freeze_type": "ReLU"}])
    assert err.problems == ["freeze.rules[0] {freeze_type: ReLU}: modules of class ReLU exist but hold no parameters"]


def test_unknown_until_target_is_an_error_with_suggestions() -> None:
    err = rejected(Net(), [{"until": "body.2"}])
    assert err.problems[0].startswith("freeze.rules[0] {until: body.2}: matches no parameter; nearest names: ")
    assert {"body.0", "body.1"} <= set(err.problems[0].split("nearest names: ")[1].split(", "))


def test_nothing_trainable_is_an_error_with_a_hint_naming_the_head() -> None:
    err = rejected(Net(), [{"freeze": "*"}])
    assert len(err.problems) == 1
    assert "element 0 of tensors does not require grad" in err.problems[0]
    assert err.problems[0].endswith("HINT: unfreeze the head, e.g. add {unfreeze: head}")
    err = rejected(conv_net(), [{"freeze_type": "Sequential"}])
    assert err.problems[0].endswith("HINT: unfreeze the head, e.g. add {unfreeze: 4}")


def test_nothing_trainable_without_a_head_names_the_last_parameter() -> None:
    err = rejected(nn.Sequential(nn.BatchNorm1d(3)), [{"freeze": "*"}])
    assert err.problems[0].endswith("HINT: unfreeze the head, e.g. add {unfreeze: 0.bias}")


def test_a_bad_rule_is_reported_instead_of_the_nothing_trainable_error() -> None:
    err = rejected(conv_net(), [{"freeze": "*"}, {"unfreeze": "head"}])
    assert len(err.problems) == 1
    assert err.problems[0].startswith("freeze.rules[1] {unfreeze: head}: matches no parameter")


def test_to_json_is_the_whole_plan() -> None:
    p = plan(conv_net(), [{"freeze": "0"}])
    assert p.to_json() == {
        "batchnorm": "eval",
        "rules": [{"rule": "{freeze: 0}", "origin": "freeze.rules[0]"}],
        "parameters": [
            {"name": "0.weight", "numel": 108, "trainable": False, "decided_by": "freeze.rules[0] {freeze: 0}"},
            {"name": "0.bias", "numel": 4, "trainable": False, "decided_by": "freeze.rules[0] {freeze: 0}"},
            {"name": "1.weight", "numel": 4, "trainable": True, "decided_by": None},
            {"name": "1.bias", "numel": 4, "trainable": True, "decided_by": None},
            {"name": "4.weight", "numel": 288, "trainable": True, "decided_by": None},
            {"name": "4.bias", "numel": 2, "trainable": True, "decided_by": None},
        ],
        "pinned_bn": [],
        "frozen_modules": "train",
        "pinned_other": [],
    }


# --------------------------------------------------------------------------- frozen modules, BatchNorm policies


def test_frozen_modules_eval_pins_frozen_modules_and_what_feeds_them(meta_tree: Callable[..., ModelTree]) -> None:
    tree = meta_tree("mobilenet_v3_small")
    probe = plan_from_config(tree, "linear_probe", [], "eval", "eval")
    # Every frozen module, and the parameter-free ones inside them (Hardswish) ...
    assert "features" in probe.pinned_other and "features.1.block.0.2" in probe.pinned_other
    assert "avgpool" in probe.pinned_other and "classifier.0" in probe.pinned_other
    # ... but what feeds the trainable head (Hardswish, then Dropout) trains with it, and so does the head.
    assert not {"classifier.1", "classifier.2", "classifier.3"} & set(probe.pinned_other)
    assert "classifier" not in probe.pinned_other  # it holds the trainable head
    assert not set(probe.pinned_other) & set(probe.pinned_bn)  # BatchNorm follows freeze.batchnorm
    assert plan_from_config(tree, "linear_probe", [], "eval", "train").pinned_other == ()


def test_a_frozen_blocks_dropout_is_pinned_even_when_the_next_block_trains(meta_tree: Callable[..., ModelTree]) -> None:
    tree = meta_tree("vit_b_16")
    p = plan_from_config(tree, "until:encoder.layers.encoder_layer_6", [], "eval", "eval")
    assert "encoder.dropout" in p.pinned_other  # p=0.0, and it feeds frozen layers
    assert "encoder.layers.encoder_layer_5.dropout" in p.pinned_other  # the last frozen block's own dropout
    assert "encoder.layers.encoder_layer_5.mlp.4" in p.pinned_other  # Dropout inside the frozen MLP
    assert "encoder.layers.encoder_layer_6" not in p.pinned_other
    assert "encoder.layers.encoder_layer_6.dropout" not in p.pinned_other
    assert "encoder" not in p.pinned_other and "encoder.layers" not in p.pinned_other


def test_eval_all_pins_every_batchnorm_and_keeps_their_affine_parameters_trainable(
    meta_tree: Callable[..., ModelTree],
) -> None:
    tree = meta_tree("resnet18")
    full = plan_from_config(tree, "full", [], "eval_all")
    assert list(full.pinned_bn) == [m.name for m in tree.modules if m.is_batchnorm] and len(full.pinned_bn) == 20
    assert full.trainable == tree.param_names
    assert plan_from_config(tree, "full", [], "eval").pinned_bn == ()
    assert plan_from_config(tree, "full", [], "train").pinned_bn == ()


# --------------------------------------------------------------------------- presets


def test_full_preset_has_no_rules() -> None:
    tree = describe(conv_net())
    assert preset_rules("full", tree) == []
    assert preset_rules(None, tree) == []
    assert plan(conv_net(), [], preset="full").trainable == CONV_NET_PARAMS


def test_linear_probe_trains_only_the_head() -> None:
    tree = describe(conv_net())
    assert preset_rules("linear_probe", tree) == [
        Rule("freeze", "*", "preset linear_probe"),
        Rule("unfreeze", "4", "preset linear_probe"),
    ]
    p = plan(conv_net(), [], preset="linear_probe")
    assert p.trainable == ["4.weight", "4.bias"]
    assert p.pinned_bn == ("1",)
    assert p.params[0].decided_by == "preset linear_probe {freeze: *}"
    assert p.params[-1].decided_by == "preset linear_probe {unfreeze: 4}"


def test_preset_rules_run_before_the_users_rules() -> None:
    p = plan(conv_net(), [{"unfreeze": "1"}], preset="linear_probe")
    assert p.trainable == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert p.pinned_bn == ()
    assert [str(r) for r in p.rules] == ["{freeze: *}", "{unfreeze: 4}", "{unfreeze: 1}"]
    # ... so a user's rule can also take something away from the preset.
    assert plan(conv_net(), [{"freeze": "4.bias"}], preset="linear_probe").trainable == ["4.weight"]


def test_bitfit_trains_biases_batchnorm_affine_and_head() -> None:
    assert plan(conv_net(), [], preset="bitfit").frozen == ["0.weight"]
    p = plan(Net(), [], preset="bitfit")
    assert p.trainable == [
        "stem.bias",
        "stem_bn.weight",
        "stem_bn.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.bn.weight",
        "body.1.bn.bias",
        "head.weight",
        "head.bias",
    ]
    assert p.frozen == ["scale", "stem.weight", "body.0.conv.weight", "body.1.conv.weight"]
    assert p.pinned_bn == ()


def test_bitfit_optional_rules_may_match_nothing() -> None:
    # No bias outside the head, no norm layer: only the head is left, no error.
    p = plan(nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2)), [], preset="bitfit")
    assert p.trainable == ["1.weight", "1.bias"]


def test_until_preset() -> None:
    tree = describe(Net())
    assert preset_rules("until:body", tree) == [Rule("until", "body", "preset until:body")]
    assert plan(Net(), [], preset="until:body").frozen == NET_PARAMS[:5]


@pytest.mark.parametrize("preset", ["linear-probe", "until:", "until", "Full", ""])
def test_unknown_preset_is_an_error(preset: str) -> None:
    with pytest.raises(FreezeError) as info:
        preset_rules(preset, describe(conv_net()))
    assert info.value.problems == [
        f"freeze.preset: unknown preset {preset!r}; valid: full, linear_probe, bitfit, gradual, auto, until:<module>"
    ]


def test_until_preset_with_unknown_module_is_an_error() -> None:
    err = rejected(Net(), [], preset="until:bodyy")
    assert err.problems[0].startswith("preset until:bodyy {until: bodyy}: matches no parameter; nearest names: body")


# --------------------------------------------------------------------------- torchvision trees (meta device)


def test_resnet18_tree(resnet18: ModelTree) -> None:
    assert sum(resnet18.numel.values()) == 11_689_512
    assert len(resnet18.param_names) == 62
    assert find_head(resnet18) == "fc"
    assert resnet18.param_names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert resnet18.param_names[-2:] == ["fc.weight", "fc.bias"]


def test_resnet18_until_layer3(resnet18: ModelTree) -> None:
    p = plan_from_config(resnet18, "until:layer3", [], "eval")
    expected_frozen = [n for n in resnet18.param_names if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    assert p.frozen == expected_frozen
    assert len(p.frozen) == 30
    assert p.trainable == [n for n in resnet18.param_names if n.split(".")[0] in ("layer3", "layer4", "fc")]
    # conv1 9,408 + bn1 128 + layer1 147,968 + layer2 525,568
    assert p.numel_total - p.numel_trainable == 683_072
    assert p.numel_trainable == 11_006_440
    assert p.pinned_bn == (
        "bn1",
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.1.bn1",
        "layer1.1.bn2",
        "layer2.0.bn1",
        "layer2.0.bn2",
        "layer2.0.downsample.1",
        "layer2.1.bn1",
        "layer2.1.bn2",
    )


def test_resnet18_linear_probe_and_bitfit(resnet18: ModelTree) -> None:
    probe = plan_from_config(resnet18, "linear_probe", [], "eval")
    assert probe.trainable == ["fc.weight", "fc.bias"]
    assert probe.numel_trainable == 512 * 1000 + 1000
    bns = [m.name for m in resnet18.modules if m.is_batchnorm]
    assert len(bns) == 20
    assert list(probe.pinned_bn) == bns

    bitfit = plan_from_config(resnet18, "bitfit", [], "eval")
    # ResNet convolutions have no bias: BN affine parameters and the head only.
    bn_params = [p for m in resnet18.modules if m.is_batchnorm for p in m.params]
    assert bitfit.trainable == bn_params + ["fc.weight", "fc.bias"]
    assert len(bitfit.trainable) == 42
    assert bitfit.numel_trainable == 9_600 + 513_000
    assert bitfit.pinned_bn == ()


def test_resnet18_typo_suggests_nearest_layers(resnet18: ModelTree) -> None:
    with pytest.raises(FreezeError) as info:
        plan_from_config(resnet18, None, read_records(RULES, [{"freeze": "layer5"}], "freeze.rules"), "eval")
    assert info.value.problems == [
        "freeze.rules[0] {freeze: layer5}: matches no parameter; nearest names: layer4, layer3, layer2"
    ]
    with pytest.raises(FreezeError) as info:
        plan_from_config(resnet18, None, read_records(RULES, [{"freeze_type": "BatchNorm"}], "freeze.rules"), "eval")
    assert info.value.problems == [
        "freeze.rules[0] {freeze_type: BatchNorm}: matches no parameter; nearest names: _BatchNorm, BatchNorm2d"
    ]


def test_resnet18_nothing_trainable_hint_names_fc(resnet18: ModelTree) -> None:
    with pytest.raises(FreezeError, match=r"HINT: unfreeze the head, e.g. add \{unfreeze: fc\}"):
        plan_from_config(resnet18, None, read_records(RULES, [{"freeze": "*"}], "freeze.rules"), "eval")


def test_mobilenet_v3_small_head_is_classifier_3(mobilenet: ModelTree) -> None:
    assert find_head(mobilenet) == "classifier.3"
    assert sum(mobilenet.numel.values()) == 2_542_856
    p = plan_from_config(mobilenet, "linear_probe", [], "eval")
    assert p.trainable == ["classifier.3.weight", "classifier.3.bias"]
    assert p.numel_trainable == 1024 * 1000 + 1000
    assert list(p.pinned_bn) == [m.name for m in mobilenet.modules if m.is_batchnorm]
    assert len(p.pinned_bn) == 34


def test_vit_b_16_tree(vit: ModelTree) -> None:
    assert find_head(vit) == "heads.head"
    assert sum(vit.numel.values()) == 86_567_656
    assert vit.param_names[:4] == ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"]


def test_vit_b_16_until_encoder_layer_6(vit: ModelTree) -> None:
    p = plan_from_config(
        vit, None, read_records(RULES, [{"until": "encoder.layers.encoder_layer_6"}], "freeze.rules"), "eval"
    )
    layers_0_to_5 = tuple(f"encoder.layers.encoder_layer_{i}." for i in range(6))
    expected = ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"] + [
        n for n in vit.param_names if n.startswith(layers_0_to_5)
    ]
    assert p.frozen == expected
    assert len(p.frozen) == 4 + 6 * 12
    assert "encoder.layers.encoder_layer_6.ln_1.weight" in p.trainable
    assert "encoder.ln.weight" in p.trainable
    # One encoder layer of ViT-B/16 holds 7,087,872 parameters.
    assert p.numel_total - p.numel_trainable == 768 + 768 * 3 * 16 * 16 + 768 + 197 * 768 + 6 * 7_087_872
    assert p.pinned_bn == ()


def test_vit_b_16_bitfit_trains_layernorm_too(vit: ModelTree) -> None:
    p = plan_from_config(vit, "bitfit", [], "eval")
    ln_params = [pn for m in vit.modules if m.type_name == "LayerNorm" for pn in m.params]
    assert len(ln_params) == 2 * (2 * 12 + 1)  # ln_1, ln_2 per layer, then encoder.ln
    assert set(ln_params) <= set(p.trainable)
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in p.trainable
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in p.frozen
    assert p.frozen[:2] == ["class_token", "conv_proj.weight"]
    assert "encoder.pos_embedding" in p.frozen
    assert p.trainable[-2:] == ["heads.head.weight", "heads.head.bias"]
    assert len(p.trainable) == 101
    # head 769,000 + LayerNorm 25 * 2 * 768 + conv_proj.bias 768
    # + per layer (in_proj 2,304 + out_proj 768 + mlp 3,072 + 768) * 12
    assert p.numel_trainable == 769_000 + 38_400 + 768 + 6_912 * 12 == 891_112


# --------------------------------------------------------------------------- review fixes


def test_batchnorm_without_affine_follows_its_enclosing_module() -> None:
    block = lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, affine=False))  # noqa: E731
    model = nn.Sequential(block(), block(), nn.Linear(2, 2))
    plan = build_plan(describe(model), [Rule("freeze", "0", "test")])
    assert plan.pinned_bn == ("0.1",)  # block 0 is all frozen; block 1 trains
    assert build_plan(describe(model), [], "train").pinned_bn == ()


def test_head_may_be_a_subclass_of_linear() -> None:
    class Head(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Head(4, 2))
    assert find_head(describe(model)) == "2"


def test_is_trainable_names_an_unknown_parameter() -> None:
    plan = build_plan(describe(nn.Sequential(nn.Linear(2, 2))), [])
    assert plan.is_trainable("0.weight") is True
    with pytest.raises(KeyError, match="'nope' is not a parameter"):
        plan.is_trainable("nope")
