"""The cost prediction: per-module profile states and the ordering of the demo presets."""

from __future__ import annotations

import pytest
import torch
import torchvision

from freezetune.config import RULES, OptimizerConfig, read_records
from freezetune.measure import ModuleProfile, Profile, StepFormat, estimate, predict, profile_model
from freezetune.plan import apply_plan, describe, plan_from_config
from freezetune.train import make_optimizer

OPT_CFG = OptimizerConfig("sgd", 0.01, 0.9, 5e-4)


def OPT(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer, as freezetune.train.estimate_config hands it to the estimate."""
    return make_optimizer(model, OPT_CFG)


def resnet18_with(preset: str, rules: list | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    apply_plan(
        model, plan_from_config(describe(model), preset, read_records(RULES, rules or [], "freeze.rules"), "eval")
    )
    return model


def fake_profile() -> Profile:
    # name, has_params, fwd, fwd_nograd, bwd_full, bwd_input, saved_full, saved_input
    mods = (
        ModuleProfile("a", True, 1.0, 0.5, 4.0, 1.5, 100, 60),
        ModuleProfile("b", False, 0.2, 0.1, 0.3, 0.3, 10, 10),
        ModuleProfile("c", True, 2.0, 1.5, 6.0, 2.5, 200, 120),
    )
    return Profile(mods, full_optimizer_s=0.5, batch=8)


def three_modules(flags: dict[str, bool]) -> torch.nn.Module:
    model = torch.nn.Sequential()
    model.add_module("a", torch.nn.Linear(2, 2))
    model.add_module("b", torch.nn.ReLU())
    model.add_module("c", torch.nn.Linear(2, 2))
    for name, trainable in flags.items():
        getattr(model, name).requires_grad_(trainable)
    return model


def test_prediction_rules_by_module_state() -> None:
    profile = fake_profile()
    assert profile.full_step_s == 1.0 + 4.0 + 0.2 + 0.3 + 2.0 + 6.0 + 0.5

    full = predict(profile, three_modules({"a": True, "c": True}), optimizer_s=0.5)
    assert [m.state for m in full.modules] == ["weights only", "no params", "trainable"]
    assert full.modules[0].backward_s == 4.0 - 1.5  # the graph starts at a: no input gradient

    probe = predict(profile, three_modules({"a": False, "c": True}), optimizer_s=0.1)
    assert [m.state for m in probe.modules] == ["no graph", "no params", "weights only"]
    assert (probe.modules[0].forward_s, probe.modules[0].backward_s, probe.modules[0].saved_bytes) == (0.5, 0.0, 0)
    assert probe.step_s == 0.5 + 0.1 + 2.0 + (6.0 - 2.5) + 0.1

    middle = predict(profile, three_modules({"a": True, "c": False}), optimizer_s=0.3)
    assert middle.modules[2].state == "input grad only"
    assert (middle.modules[2].backward_s, middle.modules[2].saved_bytes) == (2.5, 120)


def test_profile_of_resnet18_covers_every_top_level_module() -> None:
    profile = profile_model(resnet18_with("full"), torch.randn(4, 3, 32, 32), 5, OPT, reps=1)
    m = {p.name: p for p in profile.modules}
    assert list(m) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert all(p.forward_s > 0 and p.backward_full_s > 0 for p in profile.modules)
    assert m["layer1"].saved_full > 0 and m["relu"].has_params is False
    assert profile.full_optimizer_s > 0


def test_predicted_step_time_orders_probe_until_layer3_full() -> None:
    x = torch.randn(16, 3, 32, 32)
    profile = profile_model(resnet18_with("full"), x, 5, OPT, reps=2)
    est = {
        p: estimate(resnet18_with(p), x, 5, OPT, reps=2, profile=profile)
        for p in ("linear_probe", "until:layer3", "full")
    }
    assert est["linear_probe"].step_s < est["until:layer3"].step_s < est["full"].step_s
    assert est["linear_probe"].saved_ratio < 0.01
    states = {m.name: m.state for m in est["until:layer3"].modules}
    assert states["layer2"] == "no graph" and states["layer3"] == "weights only" and states["layer4"] == "trainable"


def test_frozen_module_after_a_trainable_one_pays_its_input_gradient() -> None:
    x = torch.randn(4, 3, 32, 32)
    model = resnet18_with(None, [{"freeze": "layer3"}])  # frozen in the middle
    est = estimate(model, x, 5, OPT, reps=1)
    layer3 = next(m for m in est.modules if m.name == "layer3")
    assert layer3.state == "input grad only" and layer3.backward_s > 0


def test_estimate_leaves_the_model_untouched() -> None:
    model = resnet18_with("until:layer3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate(model, torch.randn(4, 3, 32, 32), 5, OPT, reps=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_profile_runs_in_the_precision_and_memory_format_it_records() -> None:
    x = torch.randn(16, 3, 32, 32)
    fp32 = profile_model(resnet18_with("full"), x, 5, OPT, reps=1)
    bf16 = profile_model(resnet18_with("full"), x, 5, OPT, reps=1, precision="bf16", channels_last=True)
    assert (fp32.precision, fp32.channels_last, bf16.precision, bf16.channels_last) == ("fp32", False, "bf16", True)
    # Under autocast the convolutions save their inputs in bf16, half the bytes, and autocast's bf16 copies
    # of their weights besides: where the activations outweigh the weights (layer1), less in all.
    saved = {m.name: (a.saved_full, m.saved_full) for a, m in zip(fp32.modules, bf16.modules, strict=True)}
    assert saved["layer1"][1] < 0.75 * saved["layer1"][0]
    probe = resnet18_with("linear_probe")
    est = estimate(probe, x, 5, OPT, reps=1, profile=bf16, step=StepFormat("bf16", channels_last=True))
    assert est.to_json()["precision"] == "bf16" and est.to_json()["channels_last"] is True
    with pytest.raises(ValueError, match="taken in bf16, channels_last=True; the estimate is for fp32"):
        estimate(probe, x, 5, OPT, reps=1, profile=bf16)
