"""The cost prediction: per-module states and the ordering of the demo presets."""

from __future__ import annotations

import torch
import torchvision

from freezetune.apply import apply_plan
from freezetune.config import OptimizerConfig
from freezetune.estimate import estimate, profile_full, profile_modules
from freezetune.freezing import describe, plan_from_config


def resnet18_with(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    apply_plan(model, plan_from_config(describe(model), preset, [], "eval"))
    return model


def test_profile_states_follow_where_the_graph_starts() -> None:
    model = resnet18_with("until:layer3")
    costs = {c.name: c for _, c in profile_modules(model, torch.randn(4, 3, 32, 32), reps=1)}
    assert list(costs) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert costs["conv1"].state == costs["layer2"].state == "no graph"
    assert costs["relu"].state == "no params"
    assert costs["layer3"].state == costs["fc"].state == "trainable"
    # The frozen prefix records no graph: no backward, nothing saved.
    assert costs["layer1"].backward_s == 0.0 and costs["layer1"].saved_bytes == 0
    assert costs["layer4"].backward_s > 0 and costs["layer4"].saved_bytes > 0


def test_frozen_module_after_a_trainable_one_pays_its_input_gradient() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    rules = [{"freeze": "layer3"}]  # frozen in the middle of a trainable network
    apply_plan(model, plan_from_config(describe(model), None, rules, "eval"))
    costs = {c.name: c for _, c in profile_modules(model, torch.randn(4, 3, 32, 32), reps=1)}
    assert costs["layer3"].state == "input grad only" and costs["layer3"].backward_s > 0


def test_bitfit_modules_are_partial() -> None:
    costs = {c.name: c for _, c in profile_modules(resnet18_with("bitfit"), torch.randn(4, 3, 32, 32), reps=1)}
    assert costs["layer1"].state == "partial" and costs["fc"].state == "trainable"


def test_predicted_step_time_orders_probe_until_layer3_full() -> None:
    x = torch.randn(16, 3, 32, 32)
    opt = OptimizerConfig("sgd", 0.01, 0.9, 5e-4)
    full = profile_full(resnet18_with("full"), x, opt, reps=2)
    est = {p: estimate(resnet18_with(p), x, opt, reps=2, full=full) for p in ("linear_probe", "until:layer3", "full")}
    assert est["linear_probe"].step_ratio < est["until:layer3"].step_ratio < est["full"].step_ratio
    assert est["full"].step_ratio == 1.0  # every module in the full profile's state: reused, not re-timed
    assert est["linear_probe"].saved_ratio < 0.01


def test_modules_in_the_same_state_reuse_the_full_profile() -> None:
    x = torch.randn(4, 3, 32, 32)
    full = profile_full(resnet18_with("full"), x, OptimizerConfig(), reps=1)
    est = estimate(resnet18_with("until:layer3"), x, OptimizerConfig(), reps=1, full=full)
    by_name = {m.name: m for m in est.modules}
    reference = {m.name: m for m in full.modules}
    assert by_name["layer4"] is reference["layer4"]  # trainable, input grad, BN in train: same as full
    assert by_name["layer3"] is not reference["layer3"]  # its input no longer requires grad
    assert by_name["layer1"].backward_s == 0.0


def test_estimate_leaves_the_model_untouched() -> None:
    model = resnet18_with("until:layer3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate(model, torch.randn(4, 3, 32, 32), OptimizerConfig(), reps=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
