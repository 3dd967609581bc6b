"""Fingerprints: bitwise, and they notice a change anywhere they promise to watch."""

from __future__ import annotations

import torch
import torch.nn as nn

from freezetune.config import Rule
from freezetune.plan import apply_plan, build_plan, describe
from freezetune.record import Ledger, fingerprint, ledger_tensors_of, tensor_digest, verify_frozen


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
    assert sorted(ledger_tensors_of(model, plan)) == sorted(
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


def test_the_ledger_hashes_frozen_tensors_as_frozen_dtype_stores_them() -> None:
    # Epoch 1: 0 frozen (bf16). Epoch 2: 0 unfrozen (up-cast), 2 frozen (cast down). The ledger
    # moves before the plan is applied, as Trainer.enter_phase does.
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    first = build_plan(describe(model), [Rule("freeze", "0", "t"), Rule("freeze", "1", "t")])
    second = build_plan(describe(model), [Rule("freeze", "2", "t"), Rule("freeze", "1", "t")])
    apply_plan(model, first, "bf16")
    ledger = Ledger(model, first, "bf16")
    assert ledger.digests["0.weight"] == tensor_digest(model[0].weight) and model[0].weight.dtype == torch.bfloat16
    released = ledger.move_to(second)
    assert released == {"0.weight": True, "0.bias": True}  # compared as stored, before the up-cast
    apply_plan(model, second, "bf16")
    assert model[0].weight.dtype == torch.float32 and model[2].weight.dtype == torch.bfloat16
    assert ledger.digests["2.weight"] == tensor_digest(model[2].weight)  # hashed as it is stored now
    assert ledger.verify().unchanged
    with torch.no_grad():
        model[2].bias.add_(1.0)
    assert ledger.verify().changed == ["2.bias"]


def test_a_ledger_without_frozen_dtype_would_miss_the_cast() -> None:
    # Why the ledger must know: hashing a newly frozen tensor before apply_plan casts it reports
    # an unchanged tensor as changed.
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    first = build_plan(describe(model), [Rule("freeze", "0", "t")])
    second = build_plan(describe(model), [Rule("freeze", "0", "t"), Rule("freeze", "1", "t")])
    apply_plan(model, first, "bf16")
    ledger = Ledger(model, first)
    ledger.move_to(second)
    apply_plan(model, second, "bf16")
    assert ledger.verify().changed == ["1.bias", "1.weight"]
