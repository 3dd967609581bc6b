"""Tests of freezing schedules (``freezetune.schedule``).

Pinned here: the phases :func:`build_schedule` derives from the gradual preset
and from explicit events (start epochs, exact trainable sets, BatchNorm policy
re-derived per phase), the :class:`Schedule` queries the trainer relies on
(``events_at``, ``lr_scales``, ``trainable_from``, ``frozen_throughout``,
``pinned_throughout``), the order of events within one epoch (gradual first,
then the schedule), every rejection with its exact wording, the config-level
checks of :func:`parse_events` / :func:`event_problems`, and that those surface
through ``freezetune.config.from_dict`` as ``ConfigError`` naming the dotted key.

Models are torchvision's resnet18 built on the meta device: names only.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from freezetune.config import (
    EVENTS,
    RULES,
    ConfigError,
    EventSpec,
    FreezeConfig,
    event_problems,
    from_dict,
    parse_events,
    read_records,
)
from freezetune.plan import FreezeError, ModelTree, Schedule, build_schedule

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def resnet18(meta_tree: Callable[..., ModelTree]) -> ModelTree:
    return meta_tree("resnet18", num_classes=3)


def under(tree: ModelTree, *prefixes: str) -> list[str]:
    """Parameter names under any of the given modules, in model order."""
    return [n for n in tree.param_names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def batchnorms(tree: ModelTree, prefix: str) -> list[str]:
    return [m.name for m in tree.modules if m.is_batchnorm and m.name.startswith(prefix + ".")]


FC = ["fc.weight", "fc.bias"]
LAYER4_BN = ["layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"]
LAYER1_BN = ["layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]


def schedule(
    tree: ModelTree,
    preset: str | None = None,
    events: list | None = None,
    gradual: list[str] | None = None,
    rules: list | None = None,
    batchnorm: str = "eval",
) -> Schedule:
    freeze = FreezeConfig(
        preset=preset,
        rules=read_records(RULES, rules or [], "freeze.rules"),
        batchnorm=batchnorm,
        frozen_modules="train",
        schedule=read_records(EVENTS, events or [], "freeze.schedule"),
        gradual=gradual or [],
    )
    return build_schedule(tree, freeze)


def events_of(raw: list) -> list[EventSpec]:
    return read_records(EVENTS, raw, "freeze.schedule")


def rejected(tree: ModelTree, **kwargs: object) -> list[str]:
    with pytest.raises(FreezeError) as info:
        schedule(tree, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


# --------------------------------------------------------------------------- the tree itself (sanity of the fixture)


def test_resnet18_tree_has_the_parameter_counts_the_tests_rely_on(resnet18: ModelTree) -> None:
    assert len(resnet18.param_names) == 62
    assert len(under(resnet18, "layer4")) == 15  # two blocks of 6 plus the downsample conv and its BN
    assert len(under(resnet18, "layer3")) == 15
    assert len(under(resnet18, "layer1")) == 12  # no downsample
    assert batchnorms(resnet18, "layer4") == LAYER4_BN
    assert batchnorms(resnet18, "layer1") == LAYER1_BN


# --------------------------------------------------------------------------- gradual preset


def test_gradual_preset_makes_one_phase_per_group(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4", "layer3"])
    assert [p.start for p in s.phases] == [1, 2, 3]
    assert s.changes
    assert s.phases[0].plan.trainable == FC
    assert s.phases[1].plan.trainable == under(resnet18, "layer4", "fc")
    assert s.phases[2].plan.trainable == under(resnet18, "layer3", "layer4", "fc")
    assert s.initial is s.phases[0].plan
    assert s.phases[0].events == ()
    assert [ev.spec.origin for ev in s.phases[1].events] == ["freeze.gradual[0]"]
    assert [ev.spec.origin for ev in s.phases[2].events] == ["freeze.gradual[1]"]
    assert s.phases[1].events[0].params == tuple(under(resnet18, "layer4"))
    assert s.phases[2].events[0].params == tuple(under(resnet18, "layer3"))
    assert s.phases[1].events[0].numel == sum(resnet18.numel[n] for n in under(resnet18, "layer4"))


def test_gradual_rederives_batchnorm_policy_per_phase(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4", "layer3"])
    bn_all = [m.name for m in resnet18.modules if m.is_batchnorm]
    assert len(bn_all) == 20
    assert list(s.phases[0].plan.pinned_bn) == bn_all  # everything but fc frozen: every BN pinned
    assert set(LAYER4_BN) <= set(s.phases[0].plan.pinned_bn)
    assert set(LAYER4_BN).isdisjoint(s.phases[1].plan.pinned_bn)  # unfrozen: its BN trains again
    assert list(s.phases[1].plan.pinned_bn) == [b for b in bn_all if not b.startswith("layer4.")]
    assert set(batchnorms(resnet18, "layer3")).isdisjoint(s.phases[2].plan.pinned_bn)
    assert len(s.phases[2].plan.pinned_bn) == 10


def test_gradual_with_batchnorm_train_pins_nothing(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4"], batchnorm="train")
    assert [p.plan.pinned_bn for p in s.phases] == [(), ()]
    assert [p.plan.batchnorm for p in s.phases] == ["train", "train"]


def test_plan_at_and_phase_at_cover_every_epoch(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4", "layer3"])
    assert s.plan_at(1).trainable == FC
    assert s.phase_at(2).start == 2
    assert s.plan_at(3) is s.phases[2].plan
    assert s.plan_at(9) is s.phases[2].plan  # the last phase lasts to the end


def test_no_events_is_a_single_phase(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "linear_probe")
    assert len(s.phases) == 1
    assert not s.changes
    assert s.events_at(2) == ()
    assert s.to_json() == []


# --------------------------------------------------------------------------- Schedule queries


def test_events_at_returns_only_the_events_of_that_epoch(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "linear_probe", events=[{"epoch": 3, "unfreeze": "layer4"}])
    assert [p.start for p in s.phases] == [1, 3]
    assert s.events_at(1) == ()
    assert s.events_at(2) == ()
    (ev,) = s.events_at(3)
    assert ev.spec == EventSpec(3, "unfreeze", "layer4", 1.0, "freeze.schedule[0]")
    assert s.events_at(4) == ()


def test_lr_scales_give_the_event_scale_to_exactly_the_params_it_unfroze(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18, "gradual", gradual=["layer4", "layer3"], events=[{"epoch": 2, "unfreeze": "layer2", "lr_scale": 0.1}]
    )
    assert s.lr_scales(1) == {}
    at2 = s.lr_scales(2)
    assert at2 == {**dict.fromkeys(under(resnet18, "layer4"), 1.0), **dict.fromkeys(under(resnet18, "layer2"), 0.1)}
    assert "fc.weight" not in at2  # trainable from the start: no event scale
    at3 = s.lr_scales(3)
    assert {n for n, v in at3.items() if v == 0.1} == set(under(resnet18, "layer2"))
    assert set(at3) == set(under(resnet18, "layer2", "layer3", "layer4"))


def test_lr_scales_take_the_scale_of_the_event_that_last_unfroze(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18,
        "linear_probe",
        events=[
            {"epoch": 2, "unfreeze": "layer4", "lr_scale": 0.1},
            {"epoch": 3, "freeze": "layer4"},
            {"epoch": 4, "unfreeze": "layer4", "lr_scale": 0.5},
        ],
    )
    assert set(s.lr_scales(3).values()) == {0.1}  # a freeze event does not reset the scale
    assert s.lr_scales(4) == dict.fromkeys(under(resnet18, "layer4"), 0.5)


def test_trainable_from_names_first_epoch_and_omits_never_trainable(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4", "layer3"])
    first = s.trainable_from()
    expected = {**dict.fromkeys(under(resnet18, "layer4"), 2), **dict.fromkeys(under(resnet18, "layer3"), 3)}
    expected.update(dict.fromkeys(FC, 1))
    assert first == expected
    assert "conv1.weight" not in first


def test_frozen_and_pinned_throughout_shrink_as_groups_unfreeze(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "gradual", gradual=["layer4", "layer3"])
    everything_but_fc = set(resnet18.param_names) - set(FC)
    assert s.frozen_throughout(1) == everything_but_fc
    assert s.frozen_throughout(2) == everything_but_fc - set(under(resnet18, "layer4"))
    assert s.frozen_throughout(3) == everything_but_fc - set(under(resnet18, "layer4", "layer3"))
    bn_all = {m.name for m in resnet18.modules if m.is_batchnorm}
    assert s.pinned_throughout(1) == bn_all
    assert s.pinned_throughout(2) == bn_all - set(LAYER4_BN)
    assert s.pinned_throughout(3) == bn_all - set(LAYER4_BN) - set(batchnorms(resnet18, "layer3"))


def test_refrozen_params_are_not_frozen_throughout(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18, "linear_probe", events=[{"epoch": 2, "unfreeze": "layer4"}, {"epoch": 3, "freeze": "layer4"}]
    )
    # Frozen again in phase 3, but they trained in epoch 2: a delta must keep them.
    assert s.plan_at(3).trainable == FC
    assert set(under(resnet18, "layer4")).isdisjoint(s.frozen_throughout(3))
    assert set(LAYER4_BN) <= set(s.plan_at(3).pinned_bn)
    assert set(LAYER4_BN).isdisjoint(s.pinned_throughout(3))
    assert s.frozen_throughout(1) >= set(under(resnet18, "layer4"))


# --------------------------------------------------------------------------- freeze events


def test_freeze_event_freezes_and_pins_from_its_epoch(resnet18: ModelTree) -> None:
    s = schedule(resnet18, None, events=[{"epoch": 2, "freeze": "layer1"}])
    assert s.phases[0].plan.trainable == resnet18.param_names
    assert s.phases[0].plan.pinned_bn == ()
    assert s.phases[1].plan.frozen == under(resnet18, "layer1")
    assert list(s.phases[1].plan.pinned_bn) == LAYER1_BN
    (ev,) = s.events_at(2)
    assert ev.params == tuple(under(resnet18, "layer1"))
    assert s.lr_scales(2) == {}  # only unfreeze events carry a scale
    assert s.frozen_throughout(2) == set()
    assert s.to_json() == [
        {
            "epoch": 2,
            "event": "freeze",
            "target": "layer1",
            "origin": "freeze.schedule[0]",
            "tensors": 12,
            "params": sum(resnet18.numel[n] for n in under(resnet18, "layer1")),
        }
    ]


def test_type_selector_events_unfreeze_and_freeze_by_module_class(resnet18: ModelTree) -> None:
    all_bn = [m.name for m in resnet18.modules if m.is_batchnorm]
    assert len(all_bn) == 20
    bn_params = [n for n in resnet18.param_names if n.startswith(tuple(m + "." for m in all_bn))]
    s = schedule(
        resnet18,
        "linear_probe",
        events=[
            {"epoch": 2, "unfreeze_type": "BatchNorm2d", "lr_scale": 0.5},
            {"epoch": 3, "freeze_type": "_BatchNorm"},
        ],
    )
    assert s.phases[1].plan.trainable == sorted([*bn_params, *FC], key=resnet18.param_names.index)
    assert s.phases[1].plan.pinned_bn == ()  # every BatchNorm trains from epoch 2
    assert s.lr_scales(2) == dict.fromkeys(bn_params, 0.5)
    assert s.phases[2].plan.trainable == FC and list(s.phases[2].plan.pinned_bn) == all_bn
    assert [e["event"] for e in s.to_json()] == ["unfreeze_type", "freeze_type"]
    assert s.to_json()[0]["lr_scale"] == 0.5 and "lr_scale" not in s.to_json()[1]


def test_type_selector_events_are_as_strict_as_rules(resnet18: ModelTree) -> None:
    assert rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "unfreeze_type": "BatchNorm"}]) == [
        "freeze.schedule[0] {unfreeze_type: BatchNorm}: matches no parameter; nearest names: _BatchNorm, BatchNorm2d"
    ]
    # The head is resnet18's only Linear: freezing it by type leaves nothing to train, refused as for a rule.
    (problem,) = rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "freeze_type": "Linear"}])
    assert problem.startswith("the plan leaves no parameter trainable") and problem.endswith("(at epoch 2)")
    assert rejected(resnet18, events=[{"epoch": 2, "unfreeze_type": "Conv2d"}]) == [
        "freeze.schedule[0] {unfreeze_type: Conv2d} at epoch 2: unfreezes nothing new, all 20 parameter tensors it "
        "matches are already trainable"
    ]
    _, problems = parse_events([{"epoch": 2, "freeze_type": "BatchNorm2d", "lr_scale": 2}])
    assert problems == ["freeze.schedule[0].lr_scale: only an 'unfreeze' event sets a learning rate"]


def test_event_to_json_reports_lr_scale_of_unfreeze_events(resnet18: ModelTree) -> None:
    s = schedule(resnet18, "linear_probe", events=[{"epoch": 2, "unfreeze": "layer4.1", "lr_scale": 0.25}])
    assert s.to_json() == [
        {
            "epoch": 2,
            "event": "unfreeze",
            "target": "layer4.1",
            "lr_scale": 0.25,
            "origin": "freeze.schedule[0]",
            "tensors": 6,
            "params": sum(resnet18.numel[n] for n in under(resnet18, "layer4.1")),
        }
    ]


def test_events_may_be_listed_out_of_epoch_order(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18, "linear_probe", events=[{"epoch": 3, "unfreeze": "layer3"}, {"epoch": 2, "unfreeze": "layer4"}]
    )
    assert [p.start for p in s.phases] == [1, 2, 3]
    assert s.plan_at(2).trainable == under(resnet18, "layer4", "fc")
    assert s.events_at(3)[0].spec.origin == "freeze.schedule[0]"


# --------------------------------------------------------------------------- order within one epoch


def test_within_an_epoch_gradual_events_come_before_schedule_events(resnet18: ModelTree) -> None:
    # Gradual unfreezes layer4 at epoch 2; the explicit event then refreezes layer4.1.
    # In the other order the freeze would change nothing and be rejected.
    s = schedule(resnet18, "gradual", gradual=["layer4"], events=[{"epoch": 2, "freeze": "layer4.1"}])
    assert [ev.spec.origin for ev in s.events_at(2)] == ["freeze.gradual[0]", "freeze.schedule[0]"]
    assert s.plan_at(2).trainable == under(resnet18, "layer4.0", "fc")
    assert len(s.plan_at(2).trainable) == 9 + 2
    freeze_ev = s.events_at(2)[1]
    assert freeze_ev.params == tuple(under(resnet18, "layer4.1"))
    # The unfreeze event's params are all of layer4, as it was resolved first.
    assert s.events_at(2)[0].params == tuple(under(resnet18, "layer4"))


def test_two_schedule_events_in_one_epoch_apply_in_listed_order(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18, "linear_probe", events=[{"epoch": 2, "unfreeze": "layer4"}, {"epoch": 2, "freeze": "layer4.0"}]
    )
    assert s.plan_at(2).trainable == under(resnet18, "layer4.1", "fc")


# --------------------------------------------------------------------------- rejections


def test_event_matching_nothing_is_rejected_with_nearest_names(resnet18: ModelTree) -> None:
    problems = rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "unfreeze": "layer5"}])
    assert problems == [
        "freeze.schedule[0] {unfreeze: layer5}: matches no parameter; nearest names: layer4, layer3, layer2"
    ]


def test_gradual_group_matching_nothing_names_its_gradual_origin(resnet18: ModelTree) -> None:
    problems = rejected(resnet18, preset="gradual", gradual=["layer44"])
    assert len(problems) == 1
    assert problems[0].startswith("freeze.gradual[0] {unfreeze: layer44}: matches no parameter; nearest names: layer4")


def test_unfreezing_nothing_new_is_rejected(resnet18: ModelTree) -> None:
    problems = rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "unfreeze": "fc"}])
    assert problems == [
        "freeze.schedule[0] {unfreeze: fc} at epoch 2: unfreezes nothing new, "
        "all 2 parameter tensors it matches are already trainable"
    ]


def test_freezing_nothing_new_is_rejected(resnet18: ModelTree) -> None:
    problems = rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "freeze": "layer4"}])
    assert problems == [
        "freeze.schedule[0] {freeze: layer4} at epoch 2: freezes nothing new, "
        "all 15 parameter tensors it matches are already frozen"
    ]


def test_event_partly_new_is_accepted_and_records_only_the_change(resnet18: ModelTree) -> None:
    s = schedule(
        resnet18, "linear_probe", events=[{"epoch": 2, "unfreeze": "layer4.1"}, {"epoch": 3, "unfreeze": "layer4"}]
    )
    assert s.events_at(3)[0].params == tuple(under(resnet18, "layer4.0"))


def test_plan_left_with_nothing_trainable_is_rejected_at_its_epoch(resnet18: ModelTree) -> None:
    problems = rejected(resnet18, preset="linear_probe", events=[{"epoch": 2, "freeze": "fc"}])
    assert len(problems) == 1
    assert problems[0].startswith("the plan leaves no parameter trainable")
    assert "HINT: unfreeze the head, e.g. add {unfreeze: fc}" in problems[0]
    assert problems[0].endswith(" (at epoch 2)")


def test_every_bad_event_is_reported_at_once(resnet18: ModelTree) -> None:
    problems = rejected(
        resnet18,
        preset="linear_probe",
        events=[{"epoch": 2, "unfreeze": "layer5"}, {"epoch": 3, "freeze": "layer3"}],
    )
    assert len(problems) == 2
    assert problems[0].startswith("freeze.schedule[0] {unfreeze: layer5}: matches no parameter")
    assert problems[1].startswith("freeze.schedule[1] {freeze: layer3} at epoch 3: freezes nothing new")


def test_malformed_events_are_rejected_before_resolving() -> None:
    # Only the parse problem, from the loader: the pattern is never resolved.
    assert config_problems({"preset": "linear_probe", "schedule": [{"epoch": 1, "unfreeze": "layer5"}]}) == [
        "freeze.schedule[0].epoch: 1: events start at epoch 2 (what holds from epoch 1 is freeze.rules)"
    ]
    with pytest.raises(ConfigError) as info:
        events_of([{"epoch": 1, "unfreeze": "layer5"}])
    assert info.value.problems == [
        "freeze.schedule[0].epoch: 1: events start at epoch 2 (what holds from epoch 1 is freeze.rules)"
    ]


def test_decided_auto_events_join_the_schedule_under_their_own_origin(resnet18: ModelTree) -> None:
    decided = [
        EventSpec(2, "freeze", "conv1", 1.0, "freeze.auto[0]"),
        EventSpec(3, "freeze", "layer1", 1.0, "freeze.auto[1]"),
    ]
    s = build_schedule(resnet18, FreezeConfig(preset="auto"), decided)
    assert [ph.start for ph in s.phases] == [1, 2, 3]
    assert [ev.spec.origin for ev in s.events_at(3)] == ["freeze.auto[1]"]
    assert s.plan_at(3).frozen == under(resnet18, "conv1", "layer1")


# --------------------------------------------------------------------------- parse_events


def parse_one(item: object) -> tuple[list[EventSpec], list[str]]:
    return parse_events([item])


def test_parse_events_accepts_a_well_formed_event() -> None:
    events, problems = parse_events([{"epoch": 3, "unfreeze": "layer3", "lr_scale": 0.1}, {"epoch": 4, "freeze": "fc"}])
    assert problems == []
    assert events == [
        EventSpec(3, "unfreeze", "layer3", 0.1, "freeze.schedule[0]"),
        EventSpec(4, "freeze", "fc", 1.0, "freeze.schedule[1]"),
    ]


def test_parse_events_uses_the_given_origin() -> None:
    events, _ = parse_events([{"epoch": 2, "unfreeze": "fc"}], origin="x.y")
    assert events[0].origin == "x.y[0]"


def test_parse_events_rejects_epoch_one() -> None:
    assert parse_one({"epoch": 1, "unfreeze": "layer4"}) == (
        [],
        ["freeze.schedule[0].epoch: 1: events start at epoch 2 (what holds from epoch 1 is freeze.rules)"],
    )


@pytest.mark.parametrize("epoch", [None, "2", 2.0, True])
def test_parse_events_rejects_a_non_integer_epoch(epoch: object) -> None:
    item = {"unfreeze": "layer4"} if epoch is None else {"epoch": epoch, "unfreeze": "layer4"}
    events, problems = parse_one(item)
    assert events == []
    assert problems == [f"freeze.schedule[0].epoch: expected an integer, got {epoch!r}"]


def test_parse_events_rejects_both_freeze_and_unfreeze() -> None:
    events, problems = parse_one({"epoch": 2, "freeze": "layer4", "unfreeze": "layer3"})
    assert events == []
    assert problems == ["freeze.schedule[0]: needs exactly one of freeze, unfreeze, freeze_type, unfreeze_type"]


def test_parse_events_rejects_neither_freeze_nor_unfreeze() -> None:
    assert parse_one({"epoch": 2}) == (
        [],
        ["freeze.schedule[0]: needs exactly one of freeze, unfreeze, freeze_type, unfreeze_type"],
    )


def test_parse_events_rejects_unknown_keys_and_lists_valid_ones() -> None:
    events, problems = parse_one({"epoch": 2, "unfreeze": "layer4", "when": "now"})
    assert events == []
    assert problems == [
        "freeze.schedule[0]: unknown key(s) when; valid: epoch, freeze, unfreeze, freeze_type, unfreeze_type, lr_scale"
    ]


def test_parse_events_rejects_lr_scale_on_a_freeze_event() -> None:
    events, problems = parse_one({"epoch": 2, "freeze": "layer4", "lr_scale": 0.5})
    assert events == []
    assert problems == ["freeze.schedule[0].lr_scale: only an 'unfreeze' event sets a learning rate"]


@pytest.mark.parametrize("scale", [0, -0.1, "abc", float("inf"), float("nan"), True, None])
def test_parse_events_rejects_lr_scale_not_a_finite_positive_number(scale: object) -> None:
    events, problems = parse_one({"epoch": 2, "unfreeze": "layer4", "lr_scale": scale})
    assert events == []
    assert problems == [f"freeze.schedule[0].lr_scale: expected a finite number > 0, got {scale!r}"]


def test_parse_events_accepts_lr_scale_as_yaml_exponent_string() -> None:
    # PyYAML (YAML 1.1) reads `lr_scale: 1e-1` as the string "1e-1".
    events, problems = parse_one({"epoch": 2, "unfreeze": "layer4", "lr_scale": "1e-1"})
    assert problems == []
    assert events[0].lr_scale == 0.1
    assert isinstance(events[0].lr_scale, float)


@pytest.mark.parametrize("target", ["", 3, None])
def test_parse_events_rejects_an_empty_or_non_string_target(target: object) -> None:
    events, problems = parse_one({"epoch": 2, "unfreeze": target})
    assert events == []
    assert problems == [f"freeze.schedule[0].unfreeze: expected a non-empty name or pattern, got {target!r}"]


def test_parse_events_rejects_a_non_mapping_and_keeps_going() -> None:
    events, problems = parse_events(["layer4", {"epoch": 2, "unfreeze": "fc"}])
    assert problems == ["freeze.schedule[0]: an event is a mapping like {epoch: 3, unfreeze: layer3}; got 'layer4'"]
    assert [e.origin for e in events] == ["freeze.schedule[1]"]


def test_parse_events_reports_every_problem_of_one_event() -> None:
    _, problems = parse_one({"epoch": 0, "freeze": "x", "lr_scale": 2, "bogus": 1})
    assert problems == [
        "freeze.schedule[0]: unknown key(s) bogus; valid: epoch, freeze, unfreeze, freeze_type, unfreeze_type, "
        "lr_scale",
        "freeze.schedule[0].epoch: 0: events start at epoch 2 (what holds from epoch 1 is freeze.rules)",
        "freeze.schedule[0].lr_scale: only an 'unfreeze' event sets a learning rate",
    ]


# --------------------------------------------------------------------------- event_problems


def test_event_problems_accepts_a_consistent_schedule() -> None:
    assert event_problems("gradual", events_of([{"epoch": 3, "unfreeze": "layer2"}]), ["layer4", "layer3"], 3) == []


def test_event_problems_flags_an_event_past_the_last_epoch() -> None:
    assert event_problems(None, events_of([{"epoch": 3, "unfreeze": "layer4"}]), [], 2) == [
        "freeze.schedule[0]: epoch 3 is past the last epoch (train.epochs is 2): it would never happen"
    ]
    assert event_problems(None, events_of([{"epoch": 2, "unfreeze": "layer4"}]), [], 2) == []  # the last epoch is fine


def test_event_problems_flags_gradual_preset_without_groups() -> None:
    assert event_problems("gradual", [], [], 5) == [
        "freeze.gradual: preset 'gradual' needs the groups to unfreeze, e.g. [layer4, layer3, layer2]"
    ]


def test_event_problems_flags_groups_without_gradual_preset() -> None:
    assert event_problems("linear_probe", [], ["layer4"], 5) == [
        "freeze.gradual: only used with freeze.preset: gradual (the preset is 'linear_probe')"
    ]
    assert event_problems(None, [], ["layer4"], 5) == [
        "freeze.gradual: only used with freeze.preset: gradual (the preset is None)"
    ]


def test_event_problems_flags_too_few_epochs_for_the_gradual_groups() -> None:
    assert event_problems("gradual", [], ["layer4", "layer3"], 2) == [
        "freeze.gradual: 2 groups need 3 epochs (the head alone, then one group per epoch); train.epochs is 2"
    ]
    assert event_problems("gradual", [], ["layer4", "layer3"], 3) == []


def test_event_problems_leaves_parse_problems_to_the_loader() -> None:
    # The loader reads freeze.schedule once; event_problems gets only the events that read well.
    events, problems = parse_events([{"epoch": 1, "freeze": "fc"}])
    assert problems == [
        "freeze.schedule[0].epoch: 1: events start at epoch 2 (what holds from epoch 1 is freeze.rules)"
    ]
    assert event_problems(None, events, [], 4) == []
    assert config_problems({"schedule": [{"epoch": 1, "freeze": "fc"}]}, epochs=4) == problems


def test_event_problems_skips_epoch_checks_when_epochs_is_not_an_integer() -> None:
    assert event_problems("gradual", events_of([{"epoch": 9, "unfreeze": "layer4"}]), ["layer4", "layer3"], None) == []


# --------------------------------------------------------------------------- through the config loader


def config(freeze: dict, epochs: int = 2) -> dict:
    return {"name": "t", "model": {"arch": "resnet18", "num_classes": 3}, "freeze": freeze, "train": {"epochs": epochs}}


def config_problems(freeze: dict, epochs: int = 2) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(config(freeze, epochs))
    return info.value.problems


def test_from_dict_accepts_a_valid_schedule() -> None:
    cfg = from_dict(
        config({"preset": "gradual", "gradual": ["layer4"], "schedule": [{"epoch": 2, "freeze": "layer4.1"}]})
    )
    assert cfg.freeze.gradual == ["layer4"]
    assert cfg.freeze.schedule == [EventSpec(2, "freeze", "layer4.1", 1.0, "freeze.schedule[0]")]


def test_from_dict_reports_event_problems_with_the_dotted_origin() -> None:
    assert config_problems({"schedule": [{"epoch": 1, "unfreeze": "layer4"}]}) == [
        "freeze.schedule[0].epoch: 1: events start at epoch 2 (what holds from epoch 1 is freeze.rules)"
    ]
    assert config_problems({"schedule": [{"epoch": 2, "freeze": "fc", "lr_scale": 0.5}]}) == [
        "freeze.schedule[0].lr_scale: only an 'unfreeze' event sets a learning rate"
    ]
    assert config_problems({"schedule": [{"epoch": 2, "unfreeze": "fc"}, {"epoch": 5, "unfreeze": "fc"}]}) == [
        "freeze.schedule[1]: epoch 5 is past the last epoch (train.epochs is 2): it would never happen"
    ]


def test_from_dict_reports_gradual_problems() -> None:
    assert config_problems({"preset": "gradual"}) == [
        "freeze.gradual: preset 'gradual' needs the groups to unfreeze, e.g. [layer4, layer3, layer2]"
    ]
    assert config_problems({"preset": "gradual", "gradual": ["layer4", "layer3"]}) == [
        "freeze.gradual: 2 groups need 3 epochs (the head alone, then one group per epoch); train.epochs is 2"
    ]
    assert config_problems({"preset": "linear_probe", "gradual": ["layer4"]}) == [
        "freeze.gradual: only used with freeze.preset: gradual (the preset is 'linear_probe')"
    ]


def test_from_dict_accepts_lr_scale_as_exponent_string() -> None:
    cfg = from_dict(
        config({"preset": "linear_probe", "schedule": [{"epoch": 2, "unfreeze": "layer4", "lr_scale": "1e-1"}]})
    )
    assert cfg.freeze.schedule[0].lr_scale == 0.1
