"""Tests of the optimizer kept equal to the trainable set (``freezetune.optim``).

Pinned here: :func:`make_optimizer` holds exactly the parameters that require
grad (by ``id``), split into groups by :class:`Setting` with the exact label,
``lr``, ``base_lr`` and ``weight_decay``; :func:`add_trainable` adds only newly
unfrozen parameters, as new groups already on the schedule, leaves existing
groups and their momentum untouched and is idempotent; :func:`remove_frozen`
drops frozen parameters with their state and deletes emptied groups; and
:func:`check_optimizer` refuses a duplicate, a missing trainable parameter and
a frozen (or foreign) one held.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from freezetune.config import OptimizerConfig
from freezetune.plan import Setting
from freezetune.train import add_trainable, check_optimizer, group_label, group_table, make_optimizer, remove_frozen

CFG = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)


def mlp() -> nn.Sequential:
    """Parameters 0.weight, 0.bias, 1.weight, 1.bias, 2.weight, 2.bias."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))


def freeze(model: nn.Module, *names: str) -> None:
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)


def unfreeze(model: nn.Module, *names: str) -> None:
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)


def held_ids(opt: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.ones(3, 4)).square().sum().backward()
    opt.step()


# --------------------------------------------------------------------------- group_label


def test_group_label_texts() -> None:
    assert group_label(1, Setting(1.0, None, ""), 1.0) == "epoch 1: default (x1)"
    assert group_label(1, Setting(0.25, None, "layer_decay^2"), 1.0) == "epoch 1: layer_decay^2 (x0.25)"
    assert group_label(3, Setting(1.0, None, ""), 0.1) == "epoch 3: event x0.1 (x0.1)"
    assert (
        group_label(3, Setting(0.5, 0.0, "layer_decay^1, train.param_groups[0]"), 0.1)
        == "epoch 3: layer_decay^1, train.param_groups[0], event x0.1 (x0.05)"
    )


# --------------------------------------------------------------------------- make_optimizer


def test_make_optimizer_holds_exactly_the_params_that_require_grad() -> None:
    model = mlp()
    freeze(model, "0.weight", "0.bias")
    opt = make_optimizer(model, CFG)
    assert isinstance(opt, torch.optim.SGD)
    assert held_ids(opt) == [id(p) for n, p in model.named_parameters() if not n.startswith("0.")]
    assert len(opt.param_groups) == 1
    (g,) = opt.param_groups
    assert g["names"] == ["1.weight", "1.bias", "2.weight", "2.bias"]
    assert g["name"] == "epoch 1: default (x1)"
    assert (g["lr"], g["base_lr"], g["lr_scale"], g["weight_decay"], g["momentum"]) == (0.1, 0.1, 1.0, 1e-4, 0.9)
    check_optimizer(opt, model)


def test_make_optimizer_splits_groups_by_setting() -> None:
    model = mlp()
    freeze(model, "0.weight", "0.bias")
    settings = {
        "0.weight": Setting(0.25, None, "layer_decay^2"),  # frozen: never in the optimizer
        "1.weight": Setting(0.5, None, "layer_decay^1"),
        "1.bias": Setting(0.5, None, "layer_decay^1"),
        "2.bias": Setting(1.0, 0.0, "train.param_groups[0]"),
    }
    opt = make_optimizer(model, CFG, settings, epoch=1, factor=0.5)
    table = [(g["name"], g["names"], g["base_lr"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert table == [
        ("epoch 1: layer_decay^1 (x0.5)", ["1.weight", "1.bias"], 0.1 * 0.5, 0.1 * 0.5 * 0.5, 1e-4),
        ("epoch 1: default (x1)", ["2.weight"], 0.1, 0.1 * 0.5, 1e-4),
        ("epoch 1: train.param_groups[0] (x1)", ["2.bias"], 0.1, 0.1 * 0.5, 0.0),
    ]
    assert [g["lr_scale"] for g in opt.param_groups] == [0.5, 1.0, 1.0]
    check_optimizer(opt, model)


def test_same_label_different_weight_decay_are_separate_groups() -> None:
    model = mlp()
    settings = {"0.bias": Setting(1.0, 0.0, ""), "2.bias": Setting(1.0, 0.0, "")}
    opt = make_optimizer(model, CFG, settings)
    assert [g["names"] for g in opt.param_groups] == [
        ["0.weight", "1.weight", "1.bias", "2.weight"],
        ["0.bias", "2.bias"],
    ]
    assert [g["name"] for g in opt.param_groups] == ["epoch 1: default (x1)"] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_make_optimizer_applies_event_scales() -> None:
    model = mlp()
    opt = make_optimizer(
        model, CFG, {"1.weight": Setting(0.5, None, "layer_decay^1")}, {"1.weight": 0.1, "2.bias": 0.1}, epoch=4
    )
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert by_name["1.weight"]["name"] == "epoch 4: layer_decay^1, event x0.1 (x0.05)"
    assert by_name["1.weight"]["base_lr"] == 0.1 * 0.5 * 0.1
    assert by_name["2.bias"]["name"] == "epoch 4: event x0.1 (x0.1)"
    assert by_name["0.weight"]["base_lr"] == 0.1


def test_make_optimizer_adamw() -> None:
    model = mlp()
    freeze(model, "2.weight")
    opt = make_optimizer(model, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert set(held_ids(opt)) == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(held_ids(opt)) == 5


def test_make_optimizer_refuses_a_fully_frozen_model() -> None:
    model = mlp()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad: nothing to optimize"):
        make_optimizer(model, CFG)


def test_frozen_parameter_does_not_move_even_with_weight_decay() -> None:
    model = mlp()
    freeze(model, "0.weight")
    before = model[0].weight.detach().clone()
    opt = make_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.5))
    train_step(model, opt)
    train_step(model, opt)
    assert torch.equal(model[0].weight, before)
    assert model[0].weight.grad is None


# --------------------------------------------------------------------------- add_trainable


def test_add_trainable_adds_only_new_params_as_new_groups_on_the_schedule() -> None:
    model = mlp()
    freeze(model, "0.weight", "0.bias", "1.weight", "1.bias")
    opt = make_optimizer(model, CFG)
    train_step(model, opt)
    train_step(model, opt)
    old_group = opt.param_groups[0]
    old_params = list(old_group["params"])
    momenta = {id(p): opt.state[p]["momentum_buffer"].clone() for p in old_params}
    state_objects = {id(p): opt.state[p] for p in old_params}

    unfreeze(model, "1.weight", "1.bias")
    new = add_trainable(
        opt,
        model,
        CFG,
        {"1.bias": Setting(2.0, 0.0, "train.param_groups[0]")},
        {"1.weight": 0.1, "1.bias": 0.1},
        epoch=3,
        factor=0.5,
    )

    assert [g["names"] for g in new] == [["1.weight"], ["1.bias"]]
    assert [g["name"] for g in new] == [
        "epoch 3: event x0.1 (x0.1)",
        "epoch 3: train.param_groups[0], event x0.1 (x0.2)",
    ]
    assert [g["base_lr"] for g in new] == [0.1 * 1.0 * 0.1, 0.1 * 2.0 * 0.1]
    assert [g["lr"] for g in new] == [0.1 * 1.0 * 0.1 * 0.5, 0.1 * 2.0 * 0.1 * 0.5]
    assert [g["weight_decay"] for g in new] == [1e-4, 0.0]
    assert len(opt.param_groups) == 3
    assert opt.param_groups[1]["params"][0] is model[1].weight
    assert opt.param_groups[1]["momentum"] == 0.9  # filled from the optimizer's defaults
    # The existing group is the same object with the same params, lr and momentum state.
    assert opt.param_groups[0] is old_group
    assert opt.param_groups[0]["params"] == old_params
    assert opt.param_groups[0]["lr"] == 0.1
    for p in old_params:
        assert opt.state[p] is state_objects[id(p)]
        assert torch.equal(opt.state[p]["momentum_buffer"], momenta[id(p)])
    assert model[1].weight not in opt.state  # new params start with no momentum
    check_optimizer(opt, model)

    # Idempotent: nothing new, nothing added.
    assert add_trainable(opt, model, CFG, None, None, epoch=4, factor=0.5) == []
    assert len(opt.param_groups) == 3
    check_optimizer(opt, model)


def test_add_trainable_then_step_trains_the_new_params() -> None:
    model = mlp()
    freeze(model, "0.weight", "0.bias")
    opt = make_optimizer(model, CFG)
    train_step(model, opt)
    unfreeze(model, "0.weight", "0.bias")
    before = model[0].weight.detach().clone()
    add_trainable(opt, model, CFG, None, None, epoch=2, factor=1.0)
    train_step(model, opt)
    assert not torch.equal(model[0].weight, before)
    assert "momentum_buffer" in opt.state[model[0].weight]


# --------------------------------------------------------------------------- remove_frozen


def test_remove_frozen_drops_params_with_their_state_and_empty_groups() -> None:
    model = mlp()
    settings = {"2.weight": Setting(0.5, None, "x"), "2.bias": Setting(0.5, None, "x")}
    opt = make_optimizer(model, CFG, settings)
    assert [g["names"] for g in opt.param_groups] == [
        ["0.weight", "0.bias", "1.weight", "1.bias"],
        ["2.weight", "2.bias"],
    ]
    train_step(model, opt)
    train_step(model, opt)
    kept = [model[0].weight, model[0].bias, model[1].weight]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in kept]

    freeze(model, "1.bias", "2.weight", "2.bias")
    assert remove_frozen(opt) == 3

    assert len(opt.param_groups) == 1  # the 2.* group emptied and went away
    assert opt.param_groups[0]["names"] == ["0.weight", "0.bias", "1.weight"]
    assert held_ids(opt) == [id(p) for p in kept]
    for p in (model[1].bias, model[2].weight, model[2].bias):
        assert p not in opt.state
    assert len(opt.state) == 3
    for p, m in zip(kept, momenta):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    check_optimizer(opt, model)

    # Later steps leave the removed params exactly where they are.
    frozen_before = model[2].weight.detach().clone()
    train_step(model, opt)
    assert torch.equal(model[2].weight, frozen_before)
    assert remove_frozen(opt) == 0


def test_remove_frozen_with_nothing_frozen_changes_nothing() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG)
    groups_before = [list(g["params"]) for g in opt.param_groups]
    assert remove_frozen(opt) == 0
    assert [list(g["params"]) for g in opt.param_groups] == groups_before


# --------------------------------------------------------------------------- check_optimizer


def test_check_optimizer_refuses_a_duplicate() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG)
    opt.param_groups[0]["params"].append(opt.param_groups[0]["params"][0])
    with pytest.raises(RuntimeError, match="^a parameter is in the optimizer twice$"):
        check_optimizer(opt, model)


def test_check_optimizer_refuses_a_missing_trainable_param() -> None:
    model = mlp()
    freeze(model, "2.bias")
    opt = make_optimizer(model, CFG)
    unfreeze(model, "2.bias")  # unfrozen without add_trainable
    with pytest.raises(RuntimeError) as info:
        check_optimizer(opt, model)
    assert str(info.value) == (
        "the optimizer does not hold exactly the trainable parameters: frozen or foreign [], missing ['2.bias']"
    )


def test_check_optimizer_refuses_a_frozen_param_held() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG)
    freeze(model, "0.weight")  # frozen without remove_frozen
    with pytest.raises(RuntimeError) as info:
        check_optimizer(opt, model)
    assert str(info.value) == (
        "the optimizer does not hold exactly the trainable parameters: frozen or foreign ['0.weight'], missing []"
    )


def test_check_optimizer_refuses_a_foreign_param() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    with pytest.raises(RuntimeError, match=r"frozen or foreign \['\?'\], missing \[\]"):
        check_optimizer(opt, model)


def test_check_optimizer_compares_by_identity_not_value() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG)
    twin = nn.Parameter(model[2].bias.detach().clone())
    opt.param_groups[0]["params"][-1] = twin  # equal values, different tensor
    with pytest.raises(RuntimeError, match=r"missing \['2.bias'\]"):
        check_optimizer(opt, model)


# --------------------------------------------------------------------------- group_table


def test_group_table_reports_each_group() -> None:
    model = mlp()
    opt = make_optimizer(model, CFG, {"2.weight": Setting(0.5, 0.0, "g")}, factor=0.5)
    assert group_table(opt) == [
        {
            "name": "epoch 1: default (x1)",
            "tensors": 5,
            "params": 16 + 4 + 16 + 4 + 2,
            "base_lr": 0.1,
            "lr": 0.05,
            "weight_decay": 1e-4,
        },
        {"name": "epoch 1: g (x0.5)", "tensors": 1, "params": 8, "base_lr": 0.05, "lr": 0.025, "weight_decay": 0.0},
    ]
