"""Memory accounting, exact on models small enough to count by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from freezetune.measure import (
    count_saved_tensors,
    grad_bytes,
    optimizer_state_bytes,
    param_bytes,
    param_bytes_by_dtype,
    peak_memory,
    storage_bytes,
)
from freezetune.plan import apply_plan, describe, norm_parameters, plan_from_config

F32 = 4


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].requires_grad_(False)  # 12 + 3 frozen, 6 + 2 trainable
    return model


def step(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    F.cross_entropy(model(x), y).backward()
    if optimizer:
        optimizer.step()


def test_parameter_bytes_split_by_requires_grad() -> None:
    assert param_bytes(mlp()) == (8 * F32, 15 * F32)


def test_shared_storage_is_counted_once() -> None:
    t = torch.zeros(10)
    assert storage_bytes([t, t[:5], t.view(2, 5)]) == 10 * F32
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    assert param_bytes(tied) == (9 * F32, 0)


def test_gradient_bytes_cover_only_trainable_parameters() -> None:
    model = mlp()
    assert grad_bytes(model) == 0
    step(model)
    assert grad_bytes(model) == 8 * F32
    assert model[0].weight.grad is None


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1), 0),  # plain SGD keeps no state
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 8 * F32),  # one momentum buffer per parameter
        # exp_avg + exp_avg_sq per parameter, plus a float32 `step` scalar per parameter tensor
        (lambda ps: torch.optim.AdamW(ps, lr=0.1), 2 * 8 * F32 + 2 * F32),
    ],
    ids=["sgd", "sgd_momentum", "adamw"],
)
def test_optimizer_state_bytes(make, expected: int) -> None:
    model = mlp()
    optimizer = make([p for p in model.parameters() if p.requires_grad])
    assert optimizer_state_bytes(optimizer) == 0  # state is created lazily, at the first step
    step(model, optimizer)
    assert optimizer_state_bytes(optimizer) == expected


def test_saved_tensors_of_one_linear_layer() -> None:
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with count_saved_tensors(layer) as saved:
        out = layer(x)
    # addmm saves its input for the weight gradient; the weight itself would only
    # be needed for an input gradient, which x (no requires_grad) does not want.
    assert saved.activations == 5 * 4 * F32
    assert saved.total == saved.activations
    out.sum().backward()  # the hooks returned the tensors unchanged: backward still works
    assert layer.weight.grad is not None


def test_a_frozen_prefix_saves_nothing() -> None:
    model = mlp()
    with count_saved_tensors(model) as saved:
        model[1](model[0](torch.randn(5, 4)))
    assert (saved.total, saved.tensors) == (0, 0)


def test_linear_probe_saves_far_less_than_full_fine_tuning() -> None:
    def saved_bytes(preset: str) -> int:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=5)
        apply_plan(model, plan_from_config(describe(model), preset, [], "eval"))
        model.train()
        with count_saved_tensors(model) as saved:
            model(torch.randn(8, 3, 32, 32)).sum().backward()
        return saved.activations

    probe, full = saved_bytes("linear_probe"), saved_bytes("full")
    assert probe == 8 * 512 * F32  # only the pooled features that fc.weight's gradient needs
    assert full > 100 * probe


def test_peak_memory_on_cpu_is_the_process_rss() -> None:
    before, kind = peak_memory(torch.device("cpu"))
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    after, _ = peak_memory(torch.device("cpu"))
    assert kind == "cpu_peak_rss" and after >= before and after > 64 * 1024 * 1024
    del block


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux and write access to /proc/self/clear_refs")
def test_peak_memory_can_be_reset_between_runs_in_one_process() -> None:
    # In a fresh interpreter: in this one, memory earlier tests freed but the C allocator kept can
    # serve the block without the resident set growing, so there would be no peak to forget.
    code = """
import torch
from freezetune.measure import peak_memory, reset_peak_memory
cpu = torch.device("cpu")
block = torch.ones(128 * 1024 * 1024 // 4)  # 128 MiB, touched
high, _ = peak_memory(cpu)
del block
reset_peak_memory(cpu)
low, _ = peak_memory(cpu)
print(high, low)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    high, low = map(int, done.stdout.split())
    assert low < high - 100 * 1024 * 1024  # the 128 MiB peak is forgotten


def test_parameter_bytes_by_dtype() -> None:
    model = mlp()
    assert param_bytes_by_dtype(model) == {"float32": 23 * F32}
    model[0].weight.data = model[0].weight.data.to(torch.bfloat16)
    assert param_bytes_by_dtype(model) == {"bfloat16": 12 * 2, "float32": 11 * F32}


def test_frozen_dtype_bf16_halves_the_frozen_bytes_it_casts_exactly() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    plan = plan_from_config(describe(model), "linear_probe", [], "eval")
    apply_plan(model, plan, "fp32")
    trainable, frozen = param_bytes(model)
    assert (trainable, frozen) == (1539 * F32, 11_176_512 * F32)
    norms = sum(model.get_parameter(n).numel() for n in norm_parameters(model)) * F32  # kept fp32
    assert norms == 9600 * F32
    apply_plan(model, plan, "bf16")
    assert param_bytes(model) == (trainable, (frozen - norms) // 2 + norms)
    assert param_bytes_by_dtype(model) == {"bfloat16": (frozen - norms) // 2, "float32": trainable + norms}
    assert param_bytes_by_dtype(model)["bfloat16"] == 22_333_824
