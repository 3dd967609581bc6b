"""Fingerprints: bitwise, and they notice a change anywhere they promise to watch."""

from __future__ import annotations

import torch
import torch.nn as nn

from freezetune.config import Rule
from freezetune.plan import apply_plan, build_plan, describe
from freezetune.record import fingerprint, protected_tensors, tensor_digest, verify_frozen


def model_and_plan():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    plan = build_plan(describe(model), [Rule("freeze", "0", "t"), Rule("freeze", "1", "t")])
    apply_plan(model, plan)
    return model, plan


def test_digest_is_bitwise() -> None:
    t = torch.tensor([1.0, 2.0])
    assert tensor_digest(t) == tensor_digest(t.clone())
    assert tensor_digest(t) != tensor_digest(torch.nextafter(t, torch.tensor(3.0)))  # one ulp
    assert tensor_digest(torch.zeros(2)) != tensor_digest(torch.zeros(2, dtype=torch.float64))
    assert tensor_digest(torch.zeros(2, 3)) != tensor_digest(torch.zeros(3, 2))
    assert tensor_digest(torch.zeros(3, 2).t()) == tensor_digest(torch.zeros(2, 3))  # layout does not matter


def test_protected_set_is_frozen_params_and_pinned_batchnorm_buffers() -> None:
    model, plan = model_and_plan()
    assert sorted(protected_tensors(model, plan)) == sorted(
        ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    )


def test_verify_reports_exactly_what_changed() -> None:
    model, plan = model_and_plan()
    before = fingerprint(model, plan)
    assert verify_frozen(model, plan, before).unchanged
    with torch.no_grad():
        model[1].running_var[0] += 1e-6
        model[2].weight.add_(1.0)  # trainable: not watched
    check = verify_frozen(model, plan, before)
    assert not check.unchanged and check.changed == ["1.running_var"] and check.checked == 7


def test_verify_notices_a_gradient_on_a_frozen_parameter() -> None:
    model, plan = model_and_plan()
    before = fingerprint(model, plan)
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    assert not verify_frozen(model, plan, before).grads_none
