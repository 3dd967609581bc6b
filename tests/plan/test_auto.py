"""freezetune.plan.auto: the stages of a model and the decision rule on synthetic signals."""

from __future__ import annotations

import pytest
import torch.nn as nn

from freezetune.plan import FreezeError, describe
from freezetune.plan.auto import AutoSettings, change_rates, decide, model_stages

STAGES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def flat(rate_by_stage: dict[str, float], base: float = 1.0) -> list[dict[str, float]]:
    """Two epochs whose norms change by the given rates (stage: rate)."""
    return [{s: base for s in rate_by_stage}, {s: base * (1 + r) for s, r in rate_by_stage.items()}]


def test_stages_are_the_top_level_modules_with_parameters_before_the_head() -> None:
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("act", nn.ReLU())  # no parameters: not a stage
    model.add_module("body", nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("fc", nn.Linear(4, 2))
    tree = describe(model)
    assert model_stages(tree, "fc") == ["stem", "body"]
    assert model_stages(tree, "fc", ceiling="body") == ["stem"]
    with pytest.raises(FreezeError, match="freeze.auto.ceiling: 'act' is no top-level module with parameters"):
        model_stages(tree, "fc", ceiling="act")
    with pytest.raises(FreezeError, match="comes after the head"):
        model_stages(describe(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))), "0", ceiling="1")


def test_a_ceiling_or_rules_that_leave_auto_nothing_to_freeze_are_refused(meta_tree) -> None:
    from freezetune.config import Rule
    from freezetune.plan import build_plan
    from freezetune.plan.auto import stages_left

    resnet = meta_tree("resnet18", num_classes=3)
    with pytest.raises(FreezeError) as info:
        model_stages(resnet, "fc", ceiling="conv1")
    assert info.value.problems == [
        "freeze.auto.ceiling: 'conv1' is the first stage, so auto has nothing to freeze (stages from the ceiling on "
        "always train). HINT: a later stage (bn1, layer1, layer2, layer3, layer4), or null to let auto freeze up to "
        "the head 'fc'"
    ]
    with pytest.raises(FreezeError, match="the head '0' is the first stage: auto has nothing before it to freeze"):
        model_stages(describe(nn.Sequential(nn.Linear(2, 2))), "0")
    stages = model_stages(resnet, "fc", ceiling="layer1")
    assert stages == ["conv1", "bn1"] and stages_left(stages, build_plan(resnet, []), "layer1") == []
    frozen = build_plan(resnet, [Rule("freeze", "conv1", "freeze.rules[0]"), Rule("freeze", "bn1", "freeze.rules[1]")])
    assert stages_left(stages, frozen, "layer1") == [
        "freeze.auto: every stage before the ceiling 'layer1' (conv1, bn1) is frozen by freeze.rules already, so "
        "auto has nothing left to freeze. HINT: a later freeze.auto.ceiling, or a fixed preset instead of auto"
    ]


def test_change_rates_are_relative_and_none_without_a_signal() -> None:
    rates = change_rates({"a": 2.0, "b": 0.0, "c": 1.0}, {"a": 1.5, "b": 1.0, "c": float("nan"), "d": 3.0})
    assert rates == {"a": 0.25, "b": None, "c": None, "d": None}


def test_freezes_the_longest_converged_prefix_and_stops_at_the_first_learning_stage() -> None:
    rates = {"conv1": 0.01, "bn1": 0.02, "layer1": 0.05, "layer2": 0.5, "layer3": 0.01, "layer4": 0.9}
    d = decide(3, flat(rates), STAGES, 0, AutoSettings(threshold=0.1), epochs_total=10)
    # layer3 has converged too, but layer2 has not: only a prefix freezes.
    assert d.freeze == ("conv1", "bn1", "layer1") and (d.frozen_before, d.frozen_after) == (0, 3)
    assert d.rates["layer2"] == pytest.approx(0.5) and "converged" in d.reason
    row = d.to_json(STAGES, 0.1)
    assert row["epoch"] == 4 and row["decided_after_epoch"] == 3 and row["frozen_prefix"] == ["conv1", "bn1", "layer1"]


def test_an_already_frozen_prefix_stays_and_grows_from_its_end() -> None:
    history = flat({"layer2": 0.01, "layer3": 0.02, "layer4": 0.3})  # frozen stages have no signal
    d = decide(4, history, STAGES, 3, AutoSettings(), epochs_total=10)
    assert d.freeze == ("layer2", "layer3") and d.frozen_after == 5


def test_never_the_head_and_never_past_the_ceiling() -> None:
    everything = {s: 0.0 for s in STAGES}
    d = decide(3, flat(everything), STAGES, 0, AutoSettings(), epochs_total=10)
    assert d.freeze == tuple(STAGES)  # all stages, and the head is not a stage
    capped = STAGES[: STAGES.index("layer3")]  # model_stages(..., ceiling="layer3")
    d = decide(3, flat(everything), capped, 0, AutoSettings(), epochs_total=10)
    assert d.freeze == ("conv1", "bn1", "layer1", "layer2")
    d = decide(5, flat(everything), capped, len(capped), AutoSettings(), epochs_total=10)
    assert d.freeze == () and d.reason == "every stage auto may freeze is frozen"


def test_warm_up_and_the_last_epoch_decide_nothing() -> None:
    converged = flat({s: 0.0 for s in STAGES})
    assert decide(1, converged[:1], STAGES, 0, AutoSettings(warmup_epochs=1), 10).freeze == ()  # one epoch: no rate
    assert decide(2, converged, STAGES, 0, AutoSettings(warmup_epochs=3), 10).reason.startswith("warm-up")
    assert decide(3, converged, STAGES, 0, AutoSettings(warmup_epochs=3), 10).freeze == tuple(STAGES)
    assert decide(10, converged, STAGES, 0, AutoSettings(), 10).freeze == ()  # nothing left to save


def test_a_run_where_nothing_converges_freezes_nothing() -> None:
    frozen, history = 0, []
    for epoch in range(1, 10):
        history.append({s: 1.0 + 0.5 * epoch for s in STAGES})  # every norm still moving by > 10%
        d = decide(epoch, history, STAGES, frozen, AutoSettings(threshold=0.05), epochs_total=10)
        assert d.freeze == ()
        frozen = d.frozen_after
    assert frozen == 0 and "conv1 still learning (change rate" in d.reason
